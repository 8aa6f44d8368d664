"""The SQS backend's settings: the standard AWS variables, abe's SQS ones and the common ones."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import unquote, urlsplit

from botocore.configloader import load_config, raw_config_parse  # type: ignore[import-untyped]
from botocore.exceptions import ConfigParseError  # type: ignore[import-untyped]
from botocore.utils import is_valid_endpoint_url as valid_url  # type: ignore[import-untyped]
from botocore.utils import is_valid_ipv6_endpoint_url as valid_ipv6_url

from abe.errors import ConfigurationError
from abe.provider import BackendSettings, Secret, redact_url, setting

if TYPE_CHECKING:
    from typing_extensions import Self

SQS_MESSAGE_LIMIT = 1_048_576  # SQS's largest message (body and attributes), and batch
DEFAULT_MAX_PAYLOAD = SQS_MESSAGE_LIMIT - 1_024  # 1 KiB is kept for abe's attributes
MAX_VISIBILITY = 43_200  # SQS's longest visibility timeout: 12 hours
_REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
_PREFIX = re.compile(r"[A-Za-z0-9_-]{0,40}")
_SOURCES = "AWS_WEB_IDENTITY_TOKEN_FILE AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_PROFILE "
_SOURCES += "AWS_CONTAINER_CREDENTIALS_FULL_URI AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY"


@dataclass(frozen=True, kw_only=True)
class SqsSettings(BackendSettings):
    """Where the queues are, how to sign in, how abe uses them (`config_file` to
    `metadata_disabled` only tell `from_env()` where credentials may come from)."""

    region: str | None = setting(
        "AWS_REGION", None, "AWS region of the queues; else AWS_DEFAULT_REGION, else the profile's."
    )
    default_region: str | None = setting(
        "AWS_DEFAULT_REGION", None, "AWS region, when AWS_REGION is unset."
    )
    access_key_id: Secret | None = setting(
        "AWS_ACCESS_KEY_ID",
        None,
        "Access key id (with AWS_SECRET_ACCESS_KEY).",
        secret=True,
        pair="secret_access_key",
    )
    secret_access_key: Secret | None = setting(
        "AWS_SECRET_ACCESS_KEY", None, "Secret access key (with AWS_ACCESS_KEY_ID).", secret=True
    )
    session_token: Secret | None = setting(
        "AWS_SESSION_TOKEN", None, "Session token of temporary credentials.", secret=True
    )
    profile: str | None = setting(
        "AWS_PROFILE", None, "AWS config profile for credentials (and region) when no keys are set."
    )
    config_file: str = setting("AWS_CONFIG_FILE", "~/.aws/config", "The AWS config file.")
    credentials_file: str = setting(
        "AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials", "The AWS shared credentials file."
    )
    web_identity_token_file: str | None = setting(
        "AWS_WEB_IDENTITY_TOKEN_FILE", None, "Web identity token file (with AWS_ROLE_ARN; EKS)."
    )
    container_credentials_relative_uri: str | None = setting(
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", None, "Set by ECS: container credentials path."
    )
    container_credentials_full_uri: str | None = setting(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", None, "Container credentials endpoint (full URL)."
    )
    metadata_disabled: bool = setting(
        "AWS_EC2_METADATA_DISABLED", False, "true: never ask EC2 instance metadata for credentials."
    )
    endpoint_url: str | None = setting(
        "AWS_ENDPOINT_URL_SQS", None, "SQS endpoint (LocalStack, moto, a VPC endpoint), not AWS's."
    )
    shared_endpoint_url: str | None = setting(
        "AWS_ENDPOINT_URL", None, "Endpoint for every AWS service, SQS included."
    )
    queue_prefix: str = setting(
        "ABE_SQS_QUEUE_PREFIX", "", "Prefix of every queue name: A-Za-z0-9_-, 40 at most."
    )
    auto_create: bool = setting(
        "ABE_SQS_AUTO_CREATE", True, "Create a missing queue on first use (false: InvalidKeyError)."
    )
    wait_time_seconds: int = setting(
        "ABE_SQS_WAIT_TIME_SECONDS", 20, "Long-poll wait per ReceiveMessage.", minimum=0, maximum=20
    )
    max_payload_bytes: int = setting(
        "ABE_SQS_MAX_PAYLOAD_BYTES",
        DEFAULT_MAX_PAYLOAD,
        "Largest JSON body accepted (SQS's 1 MiB less 1 KiB kept for attributes).",
        minimum=1,
        maximum=DEFAULT_MAX_PAYLOAD,
    )
    connect_timeout: float = setting(
        "ABE_SQS_CONNECT_TIMEOUT", 3.0, "Seconds to connect to SQS.", minimum=0.1, maximum=600
    )
    max_attempts: int = setting(
        "ABE_SQS_MAX_ATTEMPTS", 3, "Attempts per call (standard retry mode).", minimum=1, maximum=20
    )

    backend_name: ClassVar[str] = "sqs"

    def __post_init__(self) -> None:
        object.__setattr__(self, "poll_interval", float(max(self.wait_time_seconds, 1)))
        super().__post_init__()

    def check(self) -> Iterator[tuple[str, str]]:
        """A session token needs keys; region, prefix and endpoint must be ones SQS accepts."""
        if self.session_token and not (self.access_key_id and self.secret_access_key):
            yield "session_token", "needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY beside it"
        name = "region" if self.region else "default_region"
        if (region := getattr(self, name)) and not _REGION.fullmatch(region):
            yield name, f"must be a region name such as us-east-1 (got {region!r})"
        if not _PREFIX.fullmatch(self.queue_prefix):
            got = f"(got {self.queue_prefix!r})"
            yield "queue_prefix", f"must be at most 40 letters, digits, '_' or '-' {got}"
        name = "endpoint_url" if self.endpoint_url is not None else "shared_endpoint_url"
        if (problem := _endpoint_problem(getattr(self, name))) is not None:
            yield name, problem

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The declared variables, the fallbacks and what only the environment shows (see
        `_environment`): one ConfigurationError for every problem, and no network I/O."""
        environ = os.environ if environ is None else environ
        text = {v.name: environ.get(v.name, "").strip() or v.default or "" for v in cls.variables()}
        problems: dict[str, str] = {}
        region = _environment(text, problems) or None
        try:
            settings = super().from_env(environ)
        except ConfigurationError as exc:
            raise ConfigurationError(cls.backend_name, {**exc.problems, **problems}) from None
        if problems:
            raise ConfigurationError(cls.backend_name, problems)
        endpoint = settings.endpoint_url or settings.shared_endpoint_url
        return replace(settings, region=region, endpoint_url=endpoint)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.describe().items())
        return f"{type(self).__name__}({shown})"

    def describe(self) -> dict[str, object]:
        """Field names and values for display: secrets as '***', endpoints without theirs."""
        shown, urls = super().describe(), ("endpoint_url", "shared_endpoint_url")
        return shown | {name: redact_url(str(shown[name])) for name in urls if shown[name]}

    def secrets(self) -> tuple[str, ...]:
        """The credentials, and the endpoint's secret query options (as written and decoded)."""
        query = urlsplit(self.endpoint_url or "").query
        options = [option.partition("=") for option in re.split("[&;]", query)]
        hidden = [v for k, _, v in options if v and redact_url(f"?{k}=x") != f"?{k}=x"]
        return (*super().secrets(), *hidden, *map(unquote, hidden))

    @property
    def max_message_bytes(self) -> int:
        """The largest message (body and attributes, as SQS counts it) abe sends."""
        return min(SQS_MESSAGE_LIMIT, self.max_payload_bytes + 1_024)

    @property
    def visibility_timeout(self) -> int:
        """The redelivery timeout as SQS takes it: whole seconds, 1 to 43,200."""
        return min(MAX_VISIBILITY, max(1, math.ceil(self.redelivery_timeout)))


def _endpoint_problem(url: str | None) -> str | None:
    """Why botocore or aiohttp cannot use an endpoint URL (showing no secret of it), or None."""
    if url is None:
        return None
    shown = redact_url(url)
    if "," in url:
        return f"must be one URL (got {shown!r})"
    if "@" in url:  # user info; a password with a "/" or "?" in it would end the host early
        return (
            f"must not carry a user name or password (got {shown!r}): SQS requests are "
            f"signed with the AWS credentials, so give them as AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and write the endpoint without them"
        )
    if not url.lower().startswith(("http://", "https://")):
        return f"must start with http://, https:// (got {shown!r})"
    if not (valid_url(url) or valid_ipv6_url(url)):
        return f"is not a valid endpoint URL (got {shown!r}); e.g. http://localhost:4566"
    return None


def _environment(text: Mapping[str, str], problems: dict[str, str]) -> str:
    """The region; records what only the environment shows (bad files, profile, region...)."""
    regions = _profile_regions(text, problems)
    profile = text["AWS_PROFILE"]
    if profile and regions is not None and profile not in regions:
        files = f"{text['AWS_CONFIG_FILE']} or {text['AWS_SHARED_CREDENTIALS_FILE']}"
        known = ", ".join(sorted(regions)) or "none"
        problems["AWS_PROFILE"] = f"names no profile of {files} (got {profile!r}; known: {known})"
    regions = regions or {}
    no_source = "default" not in regions and not any(text[name] for name in _SOURCES.split())
    if no_source and text["AWS_EC2_METADATA_DISABLED"].lower() in ("1", "true", "yes", "on"):
        problems["AWS_ACCESS_KEY_ID"] = (
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "AWS_PROFILE (instance metadata is off: AWS_EC2_METADATA_DISABLED=true)"
        )
    found = regions.get(profile or "default", "")
    region = text["AWS_REGION"] or text["AWS_DEFAULT_REGION"] or found
    if not region:
        problems["AWS_REGION"] = (
            "is not set, nor AWS_DEFAULT_REGION, nor a region in the AWS profile; "
            "set AWS_REGION=us-east-1 (or your queues' region)"
        )
    return region


def _profile_regions(text: Mapping[str, str], problems: dict[str, str]) -> dict[str, str] | None:
    """Each profile of the AWS config files with its valid region or '', None if one is bad."""
    regions: dict[str, str] = {}
    for variable in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        path, config = Path(text[variable]).expanduser(), variable == "AWS_CONFIG_FILE"
        read = load_config if config else raw_config_parse
        try:
            parsed = read(str(path)) if path.is_file() else {}
        except (ConfigParseError, OSError, UnicodeDecodeError) as exc:
            problems[variable] = f"cannot be read as an AWS config file ({type(exc).__name__})"
            return None
        for name, values in (parsed.get("profiles", {}) if config else parsed).items():
            region = values.get("region") if isinstance(values, dict) else None
            if isinstance(values, dict) and not regions.get(str(name)):
                regions[str(name)] = str(region) if region and _REGION.fullmatch(region) else ""
    return regions
