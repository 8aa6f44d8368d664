"""The SQS backend's settings: the standard AWS variables, abe's SQS ones and the common ones.

`SqsSettings.from_env()` reads only the environment and the AWS config files (for the
profile's region and to see that a credential source exists), checks every variable and
raises one ConfigurationError naming each problem. It opens no connection: credentials
that need the network (instance metadata, containers, web identity, SSO) are resolved by
botocore on the first call.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.configloader import load_config, raw_config_parse  # type: ignore[import-untyped]
from botocore.exceptions import ConfigParseError  # type: ignore[import-untyped]
from botocore.utils import (  # type: ignore[import-untyped]
    is_valid_endpoint_url,
    is_valid_ipv6_endpoint_url,
)

from abe.backends.message_queue.base.settings import BackendSettings
from abe.redaction import redact_url
from abe.settings import COMMON_VARIABLES, Environment, Secret, Variable
from abe_mq_sqs._wire import ATTRIBUTE_RESERVE, SQS_MESSAGE_LIMIT

__all__ = [
    "ACCESS_KEY_ID",
    "AUTO_CREATE",
    "CONFIG_FILE",
    "CONNECT_TIMEOUT",
    "CONTAINER_CREDENTIALS_FULL_URI",
    "CONTAINER_CREDENTIALS_RELATIVE_URI",
    "CREDENTIALS_FILE",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_REGION",
    "ENDPOINT_URL",
    "ENDPOINT_URL_SQS",
    "MAX_ATTEMPTS",
    "MAX_PAYLOAD",
    "METADATA_DISABLED",
    "PROFILE",
    "QUEUE_PREFIX",
    "REGION",
    "SECRET_ACCESS_KEY",
    "SESSION_TOKEN",
    "VARIABLES",
    "WAIT_TIME",
    "WEB_IDENTITY_TOKEN_FILE",
    "SqsSettings",
    "endpoint_problem",
]

BACKEND_NAME = "sqs"
DEFAULT_MAX_PAYLOAD = SQS_MESSAGE_LIMIT - ATTRIBUTE_RESERVE
"""1 MiB (SQS's message limit since 2025) less the room kept for abe's attributes."""
MAX_VISIBILITY = 43_200
"""SQS's longest visibility timeout: 12 hours."""
PREFIX_LIMIT = 40

REGION = Variable(
    "AWS_REGION",
    None,
    "AWS region of the queues; when unset, AWS_DEFAULT_REGION, then the profile's region.",
)
DEFAULT_REGION = Variable("AWS_DEFAULT_REGION", None, "AWS region, when AWS_REGION is unset.")
ACCESS_KEY_ID = Variable(
    "AWS_ACCESS_KEY_ID", None, "Access key id (with AWS_SECRET_ACCESS_KEY).", secret=True
)
SECRET_ACCESS_KEY = Variable(
    "AWS_SECRET_ACCESS_KEY", None, "Secret access key (with AWS_ACCESS_KEY_ID).", secret=True
)
SESSION_TOKEN = Variable(
    "AWS_SESSION_TOKEN", None, "Session token of temporary credentials.", secret=True
)
PROFILE = Variable(
    "AWS_PROFILE",
    None,
    "Profile of the AWS config files giving credentials (and region) when no keys are set.",
)
CONFIG_FILE = Variable("AWS_CONFIG_FILE", "~/.aws/config", "The AWS config file.")
CREDENTIALS_FILE = Variable(
    "AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials", "The AWS shared credentials file."
)
WEB_IDENTITY_TOKEN_FILE = Variable(
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    None,
    "Web identity token (with AWS_ROLE_ARN, e.g. EKS): credentials from STS on first use.",
)
CONTAINER_CREDENTIALS_RELATIVE_URI = Variable(
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    None,
    "Set by ECS: credentials from the container endpoint on first use.",
)
CONTAINER_CREDENTIALS_FULL_URI = Variable(
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    None,
    "Credentials from this container endpoint on first use.",
)
METADATA_DISABLED = Variable(
    "AWS_EC2_METADATA_DISABLED",
    "false",
    "true: never ask EC2 instance metadata for credentials (then from_env() requires a source).",
)
ENDPOINT_URL_SQS = Variable(
    "AWS_ENDPOINT_URL_SQS",
    None,
    "SQS endpoint (LocalStack, moto, a VPC endpoint) instead of AWS's.",
)
ENDPOINT_URL = Variable("AWS_ENDPOINT_URL", None, "Endpoint for every AWS service, SQS included.")
QUEUE_PREFIX = Variable(
    "ABE_SQS_QUEUE_PREFIX",
    "",
    "Prepended to every key to make its queue name (letters, digits, '_', '-'; at most 40).",
)
AUTO_CREATE = Variable(
    "ABE_SQS_AUTO_CREATE",
    "true",
    "Create a key's queue on first use; false: a missing queue is an InvalidKeyError.",
)
WAIT_TIME = Variable(
    "ABE_SQS_WAIT_TIME_SECONDS",
    "20",
    "Long-poll wait of each ReceiveMessage, 0 to 20 seconds (0: short polling once a second).",
)
MAX_PAYLOAD = Variable(
    "ABE_SQS_MAX_PAYLOAD_BYTES",
    str(DEFAULT_MAX_PAYLOAD),
    "Largest JSON body accepted; 1 KiB more is kept for attributes within SQS's 1 MiB. "
    "Lower it to match queues with a smaller MaximumMessageSize.",
)
CONNECT_TIMEOUT = Variable(
    "ABE_SQS_CONNECT_TIMEOUT", "3", "Seconds botocore waits for a connection to the endpoint."
)
MAX_ATTEMPTS = Variable(
    "ABE_SQS_MAX_ATTEMPTS",
    "3",
    "Attempts botocore makes per call (standard retry mode), within ABE_MQ_OPERATION_TIMEOUT.",
)

VARIABLES: tuple[Variable, ...] = (
    REGION,
    DEFAULT_REGION,
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    PROFILE,
    CONFIG_FILE,
    CREDENTIALS_FILE,
    WEB_IDENTITY_TOKEN_FILE,
    CONTAINER_CREDENTIALS_RELATIVE_URI,
    CONTAINER_CREDENTIALS_FULL_URI,
    METADATA_DISABLED,
    ENDPOINT_URL_SQS,
    ENDPOINT_URL,
    QUEUE_PREFIX,
    AUTO_CREATE,
    WAIT_TIME,
    MAX_PAYLOAD,
    CONNECT_TIMEOUT,
    MAX_ATTEMPTS,
    *COMMON_VARIABLES,
)
"""Every variable `from_env()` reads, in the order the README's table lists them."""

_REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
_PREFIX = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, kw_only=True)
class SqsSettings(BackendSettings):
    """Where the queues are, how to sign in, and how abe uses them.

    `redelivery_timeout` is the visibility timeout of every receive (whole seconds,
    rounded up, 1 to 43,200). Secrets are `abe.settings.Secret`s: shown as '***'.
    """

    region: str | None = None
    """AWS region; None leaves it to botocore (which then fails with a clear error)."""
    endpoint_url: str | None = None
    """Another SQS endpoint (LocalStack, moto, a VPC endpoint); None is AWS's own."""
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    profile: str | None = None
    """A profile of the AWS config files; used for credentials when no keys are given."""
    queue_prefix: str = ""
    """Prepended to every key to make its queue name."""
    auto_create: bool = True
    """Create a key's queue (and its dead-letter queue) on first use."""
    wait_time_seconds: int = 20
    """Long-poll wait of each ReceiveMessage (0 to 20)."""
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    """Largest JSON body accepted; body and attributes together stay within SQS's limit."""
    connect_timeout: float = 3.0
    """Seconds botocore waits for a TCP (and TLS) connection."""
    max_attempts: int = 3
    """Attempts per call, retries included (botocore's standard retry mode)."""
    poll_interval: float = 20.0
    """Longest one fetch waits before returning empty: the long-poll wait."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.wait_time_seconds <= 20:
            raise ValueError(f"wait_time_seconds must be 0 to 20, got {self.wait_time_seconds}")
        if not 1 <= self.max_payload_bytes <= DEFAULT_MAX_PAYLOAD:
            raise ValueError(
                f"max_payload_bytes must be 1 to {DEFAULT_MAX_PAYLOAD}, "
                f"got {self.max_payload_bytes}"
            )
        if not (math.isfinite(self.connect_timeout) and self.connect_timeout > 0):
            raise ValueError(f"connect_timeout must be positive, got {self.connect_timeout!r}")
        if not 1 <= self.max_attempts <= 20:
            raise ValueError(f"max_attempts must be 1 to 20, got {self.max_attempts}")
        if len(self.queue_prefix) > PREFIX_LIMIT or not _PREFIX.fullmatch(self.queue_prefix):
            raise ValueError(
                f"queue_prefix must be at most {PREFIX_LIMIT} letters, digits, '_' or '-', "
                f"got {self.queue_prefix!r}"
            )
        if self.redelivery_timeout > MAX_VISIBILITY:
            raise ValueError(
                f"redelivery_timeout is SQS's visibility timeout: at most {MAX_VISIBILITY} s, "
                f"got {self.redelivery_timeout:g}"
            )
        problem = endpoint_problem(self.endpoint_url) if self.endpoint_url else None
        if problem is not None:
            raise ValueError(f"endpoint_url {problem}")

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.describe().items())
        return f"{type(self).__name__}({shown})"

    def describe(self) -> dict[str, object]:
        """Field names and values for display: secrets as '***', the endpoint without them."""
        described = super().describe()
        if self.endpoint_url is not None:
            described["endpoint_url"] = redact_url(self.endpoint_url)
        return described

    @property
    def max_message_bytes(self) -> int:
        """The largest message (body and attributes, as SQS counts) abe sends."""
        return min(SQS_MESSAGE_LIMIT, self.max_payload_bytes + ATTRIBUTE_RESERVE)

    @property
    def queue_maximum_message_size(self) -> int:
        """The MaximumMessageSize abe gives the queues it creates (SQS allows 1,024 to 1 MiB)."""
        return max(1_024, self.max_message_bytes)

    @property
    def visibility_timeout(self) -> int:
        """The redelivery timeout as SQS takes it: whole seconds, 1 to 43,200."""
        return min(MAX_VISIBILITY, max(1, math.ceil(self.redelivery_timeout)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SqsSettings:
        """Read the variables of the README's table; one ConfigurationError names every problem."""
        environ = os.environ if environ is None else environ
        env = Environment(environ)
        common = cls.read_common(env)
        values: dict[str, Any] = {}

        access_key = env.secret(ACCESS_KEY_ID)
        secret_key = env.secret(SECRET_ACCESS_KEY)
        token = env.secret(SESSION_TOKEN)
        if access_key and not secret_key:
            env.problem(SECRET_ACCESS_KEY, "is required when AWS_ACCESS_KEY_ID is set")
        if secret_key and not access_key:
            env.problem(ACCESS_KEY_ID, "is required when AWS_SECRET_ACCESS_KEY is set")
        if token and not (access_key and secret_key):
            env.problem(
                SESSION_TOKEN, "needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY beside it"
            )
        profile = env.string(PROFILE)
        profiles = _read_profiles(env)
        if profile is not None and profiles is not None and profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            env.problem(
                PROFILE,
                f"names no profile of {env.raw(CONFIG_FILE)} or {env.raw(CREDENTIALS_FILE)} "
                f"(got {profile!r}; profiles there: {known})",
            )
        metadata_disabled = env.boolean(METADATA_DISABLED)
        has_source = bool(access_key and secret_key) or profile is not None
        has_source = has_source or "default" in (profiles or {})
        has_source = has_source or any(
            env.is_set(variable)
            for variable in (
                WEB_IDENTITY_TOKEN_FILE,
                CONTAINER_CREDENTIALS_RELATIVE_URI,
                CONTAINER_CREDENTIALS_FULL_URI,
            )
        )
        if not has_source and metadata_disabled and not access_key and not secret_key:
            env.problem(
                ACCESS_KEY_ID,
                "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE (instance metadata is off: AWS_EC2_METADATA_DISABLED=true)",
            )

        region = env.string(REGION) or env.string(DEFAULT_REGION)
        if region is None and profiles is not None:
            region = profiles.get(profile or "default", {}).get("region") or None
        if region is None:
            env.problem(
                REGION,
                "is not set, nor AWS_DEFAULT_REGION, nor a region in the AWS profile; "
                "set AWS_REGION=us-east-1 (or your queues' region)",
            )
        elif _REGION.fullmatch(region) is None:
            source = REGION if env.is_set(REGION) else DEFAULT_REGION
            env.problem(source, f"must be a region name such as us-east-1 (got {region!r})")

        endpoint = env.url(ENDPOINT_URL_SQS, schemes=("http", "https"))
        if endpoint is None and not env.is_set(ENDPOINT_URL_SQS):
            endpoint = env.url(ENDPOINT_URL, schemes=("http", "https"))
        named = ENDPOINT_URL_SQS if env.is_set(ENDPOINT_URL_SQS) else ENDPOINT_URL
        if endpoint is not None and "," in endpoint:
            env.problem(named, "must be one URL")
        elif endpoint is not None and (problem := endpoint_problem(endpoint)) is not None:
            env.problem(named, problem)

        prefix = env.string(QUEUE_PREFIX) or ""
        if len(prefix) > PREFIX_LIMIT or not _PREFIX.fullmatch(prefix):
            env.problem(
                QUEUE_PREFIX,
                f"must be at most {PREFIX_LIMIT} letters, digits, '_' or '-' (got {prefix!r})",
            )
        values["auto_create"] = env.boolean(AUTO_CREATE)
        wait = env.integer(WAIT_TIME, minimum=0, maximum=20)
        values["max_payload_bytes"] = env.integer(
            MAX_PAYLOAD, minimum=1, maximum=DEFAULT_MAX_PAYLOAD
        )
        values["connect_timeout"] = env.seconds(CONNECT_TIMEOUT, minimum=0.1, maximum=600)
        values["max_attempts"] = env.integer(MAX_ATTEMPTS, minimum=1, maximum=20)
        redelivery = common.get("redelivery_timeout")
        if redelivery is not None and redelivery > MAX_VISIBILITY:
            env.problem(
                "ABE_MQ_REDELIVERY_TIMEOUT",
                f"is SQS's visibility timeout: at most {MAX_VISIBILITY} seconds "
                f"(got {redelivery:g})",
            )
        env.check(BACKEND_NAME)
        if wait is not None:
            values["wait_time_seconds"] = wait
            values["poll_interval"] = float(max(wait, 1))
        return cls(
            **common,
            **{name: value for name, value in values.items() if value is not None},
            region=region,
            endpoint_url=endpoint,
            access_key_id=access_key,
            secret_access_key=secret_key,
            session_token=token,
            profile=profile,
            queue_prefix=prefix,
        )


def endpoint_problem(url: str) -> str | None:
    """What is wrong with an endpoint URL botocore would refuse or aiohttp could not send
    (never echoing a secret of it), or None when it is usable."""
    shown = redact_url(url)
    if "@" in url:  # user info; a password with a "/" or "?" in it would end the host early
        return (
            f"must not carry a user name or password (got {shown!r}): SQS requests are "
            f"signed with the AWS credentials, so give them as AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and write the endpoint without them"
        )
    if not (is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)):
        return f"is not a valid endpoint URL (got {shown!r}); e.g. http://localhost:4566"
    return None


def _read_profiles(env: Environment) -> dict[str, dict[str, str]] | None:
    """The profiles of the AWS config and credentials files (local files only), or None if bad."""
    profiles: dict[str, dict[str, str]] = {}
    for variable, loader in ((CONFIG_FILE, load_config), (CREDENTIALS_FILE, raw_config_parse)):
        text = env.raw(variable)
        if not text:
            continue
        path = Path(text).expanduser()
        if not path.is_file():
            continue
        try:
            parsed = loader(str(path))
        except (ConfigParseError, OSError, UnicodeDecodeError) as exc:
            env.problem(variable, f"cannot be read as an AWS config file ({type(exc).__name__})")
            return None
        sections = parsed.get("profiles", {}) if variable is CONFIG_FILE else parsed
        for name, values in sections.items():
            if isinstance(values, dict):
                profiles.setdefault(str(name), {}).update(
                    {
                        str(key): str(value)
                        for key, value in values.items()
                        if isinstance(value, str)
                    }
                )
    return profiles
