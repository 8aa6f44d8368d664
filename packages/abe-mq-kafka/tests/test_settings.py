"""KafkaSettings.from_env(): every variable checked at once, secrets never shown, no I/O."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from abe.errors import ConfigurationError
from abe.settings import COMMON_VARIABLES, Secret
from abe_mq_kafka import KafkaBackend, KafkaSettings

SECRET = "pa55-w0rd-never-shown"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in KafkaBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)


def test_minimal_environment_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", " kafka-1:9092, kafka-2:9093 ")
    settings = KafkaSettings.from_env()
    assert settings.bootstrap_servers == ("kafka-1:9092", "kafka-2:9093")
    assert settings.security_protocol == "PLAINTEXT"
    assert settings.idempotent is True
    assert (settings.partitions, settings.replication_factor) == (6, 1)
    assert (settings.session_timeout, settings.request_timeout) == (10.0, 30.0)
    assert settings.max_payload_bytes == KafkaBackend.capabilities.max_payload_bytes
    assert settings.redelivery_timeout == 30.0
    producer = settings.producer_options()
    assert producer["acks"] == "all"
    assert producer["enable_idempotence"] is True
    assert producer["max_request_size"] > settings.max_payload_bytes
    consumer = settings.consumer_options()
    assert consumer["enable_auto_commit"] is False
    assert consumer["auto_offset_reset"] == "earliest"
    assert consumer["heartbeat_interval_ms"] < consumer["session_timeout_ms"]


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not used until connecting")
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": "[::1]:9092",
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": SECRET,
        "KAFKA_SSL_CAFILE": str(ca),
        "KAFKA_SSL_CHECK_HOSTNAME": "no",
        "KAFKA_CLIENT_ID": "orders",
        "ABE_KAFKA_PARTITIONS": "12",
        "ABE_KAFKA_REPLICATION_FACTOR": "3",
        "ABE_KAFKA_IDEMPOTENT": "off",
        "ABE_KAFKA_SESSION_TIMEOUT": "2.5",
        "ABE_KAFKA_REQUEST_TIMEOUT": "15",
        "ABE_KAFKA_MAX_PAYLOAD_BYTES": "2000000",
        "ABE_MQ_PREFETCH": "7",
        "ABE_MQ_REDELIVERY_TIMEOUT": "5",
        "ABE_MQ_OPERATION_TIMEOUT": "3",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = KafkaSettings.from_env()
    assert settings.security_protocol == "SASL_SSL"
    assert settings.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.sasl_password == Secret(SECRET)
    assert settings.ssl_cafile == ca
    assert settings.ssl_check_hostname is False
    assert (settings.client_id, settings.partitions, settings.replication_factor) == (
        "orders",
        12,
        3,
    )
    assert settings.idempotent is False
    assert (settings.session_timeout, settings.request_timeout) == (2.5, 15.0)
    assert (settings.prefetch, settings.redelivery_timeout, settings.operation_timeout) == (
        7,
        5.0,
        3.0,
    )
    assert settings.max_payload_bytes == 2_000_000
    assert SECRET not in repr(settings)
    assert SECRET not in repr(KafkaBackend(settings))


def test_all_problems_in_one_error_without_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": "http://broker:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_PASSWORD": SECRET,
        "KAFKA_SSL_CAFILE": "/no/such/ca.pem",
        "KAFKA_SSL_CERTFILE": "/no/such/cert.pem",
        "ABE_KAFKA_PARTITIONS": "many",
        "ABE_KAFKA_REPLICATION_FACTOR": "0",
        "ABE_KAFKA_MIN_INSYNC_REPLICAS": "0",
        "ABE_KAFKA_SESSION_TIMEOUT": "-1",
        "ABE_MQ_REDELIVERY_TIMEOUT": "never",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as refused:
        KafkaSettings.from_env()
    assert set(refused.value.variables) >= {
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SSL_CAFILE",
        "KAFKA_SSL_CERTFILE",
        "KAFKA_SSL_KEYFILE",
        "ABE_KAFKA_PARTITIONS",
        "ABE_KAFKA_REPLICATION_FACTOR",
        "ABE_KAFKA_MIN_INSYNC_REPLICAS",
        "ABE_KAFKA_SESSION_TIMEOUT",
        "ABE_MQ_REDELIVERY_TIMEOUT",
    }
    assert SECRET not in str(refused.value)


def test_bootstrap_servers_default_to_the_local_broker() -> None:
    assert KafkaSettings.from_env().bootstrap_servers == ("localhost:9092",)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("KAFKA_SASL_USERNAME", "u"), ("KAFKA_SASL_PASSWORD", SECRET), ("KAFKA_SSL_KEYFILE", "/k")],
)
def test_credentials_without_a_protocol_that_uses_them(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b:9092")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as refused:
        KafkaSettings.from_env()
    assert variable in refused.value.variables
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    "text", [",", "broker", "broker:", "broker:0", "broker:70000", "a b:9092", "kafka://b:1"]
)
def test_bad_bootstrap_servers(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", text)
    with pytest.raises(ConfigurationError) as refused:
        KafkaSettings.from_env()
    assert refused.value.variables == ("KAFKA_BOOTSTRAP_SERVERS",)


def test_sasl_and_tls_reach_the_client_options(tmp_path: Path) -> None:
    settings = KafkaSettings(
        bootstrap_servers=("b:9093",),
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password=Secret(SECRET),
        ssl_check_hostname=False,
    )
    options = settings.connection_options()
    assert options["sasl_plain_password"] == SECRET  # handed to aiokafka, and only there
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname is False
    assert SECRET not in repr(settings)


def test_variables_are_declared_once_with_the_common_ones() -> None:
    names = [variable.name for variable in KafkaBackend.variables]
    assert len(names) == len(set(names))
    declared = {variable.name: variable for variable in KafkaBackend.variables}
    for common in COMMON_VARIABLES:
        if common.name == "ABE_MQ_PREFETCH":  # Kafka's own default: max.poll.records
            assert (declared[common.name].default, common.default) == ("500", "100")
        else:
            assert declared[common.name] == common
    secret = {variable.name for variable in KafkaBackend.variables if variable.secret}
    assert secret == {"KAFKA_SASL_PASSWORD", "KAFKA_SSL_KEY_PASSWORD"}


def test_hand_built_settings_accept_a_string_of_servers() -> None:
    assert KafkaSettings(bootstrap_servers="a:1,b:2").bootstrap_servers == ("a:1", "b:2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="security_protocol"):
        KafkaSettings(security_protocol="TLS")


LEAKED = "pa55-in-the-address"


@pytest.mark.parametrize(
    "text",
    [
        f"svc:{LEAKED}@broker:9092",
        f"kafka://svc:{LEAKED}@broker:9092",
        f"good:9092,svc:{LEAKED}@broker:9092",
        f"svc:pa,{LEAKED}@broker:9092",  # a comma in the password splits it across "parts"
        f"svc@broker:9092?password={LEAKED}",
    ],
)
def test_credentials_in_bootstrap_servers_are_never_echoed(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", text)
    with pytest.raises(ConfigurationError) as refused:
        KafkaSettings.from_env()
    message = str(refused.value)
    assert refused.value.variables == ("KAFKA_BOOTSTRAP_SERVERS",)
    assert LEAKED not in message
    assert "svc" not in message  # no part of the value, not even the user name
    assert "KAFKA_SASL_USERNAME" in message
    assert "KAFKA_SASL_PASSWORD" in message


def test_options_in_bootstrap_servers_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"broker:9092?sasl_password={LEAKED}")
    with pytest.raises(ConfigurationError) as refused:
        KafkaSettings.from_env()
    assert LEAKED not in str(refused.value)
    assert "host:port" in str(refused.value)


def test_a_plain_typo_in_bootstrap_servers_is_shown_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2")
    with pytest.raises(ConfigurationError) as refused:
        KafkaSettings.from_env()
    assert str(refused.value).count("kafka-2") == 1  # the wrong part, not the whole value again


@pytest.mark.parametrize(
    "servers", [f"svc:{LEAKED}@broker:9092", (f"svc:{LEAKED}@broker:9092",), ("b:1", "b:0")]
)
def test_hand_built_settings_check_their_servers_without_echoing_credentials(
    servers: object,
) -> None:
    with pytest.raises(ValueError, match="bootstrap_servers") as refused:
        KafkaSettings(bootstrap_servers=servers)  # type: ignore[arg-type]
    assert LEAKED not in str(refused.value)


def test_consumer_timings_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = KafkaSettings().consumer_options()
    assert defaults["fetch_max_wait_ms"] == 500
    assert (defaults["heartbeat_interval_ms"], defaults["rebalance_timeout_ms"]) == (3000, 100_000)
    for name, value in {
        "ABE_KAFKA_FETCH_MAX_WAIT": "1.5",
        "ABE_KAFKA_HEARTBEAT_INTERVAL": "0.5",
        "ABE_KAFKA_REBALANCE_TIMEOUT": "20",
        "ABE_KAFKA_GROUP_INSTANCE_ID": "worker-3",
    }.items():
        monkeypatch.setenv(name, value)
    settings = KafkaSettings.from_env()
    options = settings.consumer_options()
    assert (options["fetch_max_wait_ms"], options["heartbeat_interval_ms"]) == (1500, 500)
    assert options["rebalance_timeout_ms"] == 20_000
    assert settings.group_instance_id == "worker-3"


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"ABE_KAFKA_HEARTBEAT_INTERVAL": "10"}, "ABE_KAFKA_HEARTBEAT_INTERVAL"),
        ({"ABE_KAFKA_GROUP_INSTANCE_ID": "worker 3"}, "ABE_KAFKA_GROUP_INSTANCE_ID"),
        ({"ABE_KAFKA_FETCH_MAX_WAIT": "0"}, "ABE_KAFKA_FETCH_MAX_WAIT"),
    ],
)
def test_bad_consumer_timings_are_refused(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], variable: str
) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as refused:
        KafkaSettings.from_env()
    assert refused.value.variables == (variable,)


def test_hand_built_settings_keep_the_limits_of_the_environment() -> None:
    with pytest.raises(ValueError, match="partitions"):
        KafkaSettings(partitions=10_001)
    with pytest.raises(ValueError, match="sasl_username"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_password=Secret(SECRET))


def test_min_insync_replicas_at_most_the_replication_factor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ABE_KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("ABE_KAFKA_MIN_INSYNC_REPLICAS", "4")
    with pytest.raises(ConfigurationError) as refused:
        KafkaSettings.from_env()
    assert refused.value.variables == ("ABE_KAFKA_MIN_INSYNC_REPLICAS",)
    assert "at most ABE_KAFKA_REPLICATION_FACTOR" in str(refused.value)
    monkeypatch.setenv("ABE_KAFKA_MIN_INSYNC_REPLICAS", "2")
    assert KafkaSettings.from_env().min_insync_replicas == 2
