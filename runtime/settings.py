"""All settings, from `METERING_*` environment variables or an optional `.env` file.

Validated once at start-up; every bad setting is reported in one error.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.topics import Topics, topics_named

Role = Literal["producer", "licensing", "operations", "finance", "tenant", "metrics"]


class ApiKey(BaseModel):
    """One API key as stored: its SHA-256 (`metering key new` prints one), never the key.

    Roles (SECURITY.md): `producer` posts usage events, `licensing` licence snapshots,
    `operations` system events; `finance` reads everything; `tenant` reads its own tenant;
    `metrics` scrapes `/metrics`. A posting key (producer, licensing, operations) may be
    limited to `sources` and `tenants`."""

    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: str | None = None
    # An empty list would refuse every event: a mistake, not a scope.
    sources: list[str] | None = Field(
        default=None, min_length=1, description="A posting key: the sources it may post as."
    )
    tenants: list[str] | None = Field(
        default=None, min_length=1, description="A posting key: the tenants it may post for."
    )

    @model_validator(mode="after")
    def _tenant_keys_name_a_tenant(self) -> ApiKey:
        if (self.role == "tenant") != (self.tenant is not None):
            raise ValueError("a tenant key names its tenant, and only a tenant key does")
        return self

    @model_validator(mode="after")
    def _only_posting_keys_are_limited(self) -> ApiKey:
        # Limits on a key that reads would be ignored, leaving it wider than its entry says.
        posting = self.role in {"producer", "licensing", "operations"}
        if not posting and (self.sources is not None or self.tenants is not None):
            raise ValueError(
                "sources and tenants limit a producer, licensing or operations key only"
            )
        return self


class SettingsError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metering"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="METERING_", env_file=".env", extra="ignore", validate_default=True
    )

    kafka_bootstrap: str | None = Field(
        default=None, description="host:port[,...]; unset: the local stack in the data dir."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(default=None, description="CA bundle (PEM).")
    kafka_ssl_certfile: Path | None = Field(default=None, description="Client cert (mTLS).")
    kafka_ssl_keyfile: Path | None = Field(default=None, description="Client key (mTLS).")
    kafka_ssl_key_password: SecretStr | None = None

    kafka_session_timeout: float = Field(
        default=10.0, ge=6, le=300, description="Seconds before a silent worker's partitions move."
    )

    data_dir: Path = Path(".metering")
    cache_dir: Path = Field(default_factory=_default_cache)
    plan_file: Path | None = Field(
        default=None, description="The plan (TOML); unset: the packaged billing/plan.toml."
    )
    services_file: Path | None = Field(
        default=None,
        description="The table of metered services (TOML); unset: the packaged "
        "schemas/services.toml.",
    )
    app_id: str = Field(default="metering", pattern=r"^[A-Za-z0-9._-]+$")
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    partitions: int = Field(default=8, ge=1, le=1024)
    auto_close_grace: dt.timedelta | None = Field(
        default=dt.timedelta(days=3), description="ISO 8601 duration after month end, or off."
    )
    auto_close_check: float = Field(
        default=60.0, gt=0, description="Seconds between checks for a month to close."
    )
    batch_size: int = Field(
        default=5000, ge=1, le=100_000, description="Most records a worker folds at once."
    )
    batch_within: float = Field(
        default=0.1, gt=0, le=10, description="Seconds a worker waits to fill a fetch."
    )
    commit_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds between a worker's flushes under load (outputs, changelogs, "
        "offsets); an idle worker flushes at once.",
    )
    query_timeout: float = Field(default=60.0, gt=0)
    duckdb_path: Path | None = Field(
        default=None, description="The read model; default <data dir>/metering.duckdb."
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=0, ge=0, le=65535, description="0: a free port.")
    api_url: str | None = Field(
        default=None, description="Where queries go; unset: the local stack's API."
    )
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='JSON: [{"role": "finance", "sha256": "..."}, ...]; none: loopback only.',
    )
    api_key: SecretStr | None = Field(default=None, description="The key the CLI presents.")
    ingest_max_events: int = Field(default=1000, ge=1, le=100_000)
    ingest_max_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    http_max_body: int = Field(
        default=16 << 10,
        ge=1024,
        le=64 << 20,
        description="Bytes a request body may have on any route but ingest and SQL.",
    )
    sql_max_bytes: int = Field(
        default=64 << 10, ge=1024, le=16 << 20, description="Bytes a finance SQL request may have."
    )
    sql_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds a finance SQL query may run."
    )
    sql_max_rows: int = Field(
        default=100_000, ge=1, le=10_000_000, description="Rows a finance SQL answer holds at most."
    )
    sql_concurrency: int = Field(
        default=2, ge=1, le=64, description="Finance SQL queries that may run at once."
    )
    duckdb_memory_limit: str | None = Field(
        default=None,
        pattern=r"^[0-9]+(\.[0-9]+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB's memory_limit for the read model (e.g. 2GB); default DuckDB's.",
    )
    duckdb_temp_limit: str | None = Field(
        default="4GiB",
        pattern=r"^[0-9]+(\.[0-9]+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="Most disk DuckDB's spilled temporary files may take; unset: DuckDB's "
        "default (90 % of the free space).",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Signs /ui sessions; unset: a random one per process (sign in again "
        "after a restart). Share it between replicas behind one address.",
    )
    session_ttl: dt.timedelta = Field(
        default=dt.timedelta(hours=8), description="How long a /ui sign-in lasts."
    )
    cookie_secure: bool = Field(
        default=False,
        description="Mark /ui cookies Secure even on plain HTTP (behind a TLS proxy).",
    )
    webhook_signing_key: SecretStr | None = Field(
        default=None,
        description="Derives each webhook subscription's signing secret; the API and the "
        "notifier share it. Unset: a random one kept in <data dir>/webhook-signing.key.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Let webhook endpoints be loopback, private or other non-public addresses "
        "(a local receiver; tests).",
    )
    ready_file: Path | None = Field(
        default=None,
        description="Written by a worker once it has partitions and state, and by the projector "
        "once its API serves.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    metrics_host: str = Field(default="127.0.0.1", description="Where a worker serves /metrics.")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="A worker's /metrics port; 0: a free port."
    )
    metrics_refresh: float = Field(
        default=15.0,
        gt=0,
        description="Seconds between reads of the read-model gauges (at least 10x a read).",
    )
    metrics_tenant_top: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Per-tenant usage ratio series for this many top tenants; 0: none.",
    )

    @field_validator("session_secret", "webhook_signing_key")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # A short secret can be guessed offline from any cookie, and sessions forged with it.
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must have at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("auto_close_grace", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"off", "none", "false", "0"}:
            return None
        return value

    @field_validator("auto_close_grace")
    @classmethod
    def _non_negative(cls, value: dt.timedelta | None) -> dt.timedelta | None:
        if value is not None and value < dt.timedelta(0):
            raise ValueError("must not be negative")
        return value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        protocol = self.kafka_security_protocol
        if self.kafka_sasl_mechanism and not protocol.startswith("SASL_"):
            raise ValueError(
                "kafka_security_protocol: a SASL mechanism needs SASL_PLAINTEXT or SASL_SSL"
            )
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"kafka_sasl_mechanism: {protocol} needs a mechanism, a username and a password"
            )
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile: a client certificate needs its key, and both")
        return self

    @model_validator(mode="after")
    def _keys_outside_loopback(self) -> Settings:
        loopback = {"127.0.0.1", "localhost", "::1"}
        if not self.api_keys and self.api_host not in loopback:
            raise ValueError(
                "api_keys: an API listening beyond loopback needs keys (METERING_API_KEYS)"
            )
        if not self.api_keys and self.metrics_host not in loopback:
            # Without keys /metrics is open, and it shows revenue and usage.
            raise ValueError(
                "api_keys: /metrics served beyond loopback needs keys (METERING_API_KEYS, "
                "with a metrics key for Prometheus)"
            )
        return self

    @property
    def topics(self) -> Topics:
        return topics_named(self.topic_prefix)

    @property
    def stack_file(self) -> Path:
        return self.data_dir / "stack.json"

    def _recorded(self, key: str, variable: str, what: str) -> str:
        """A value `metering up` recorded in the data dir, or an error saying what to do."""
        try:
            return str(json.loads(self.stack_file.read_text())[key])
        except (OSError, ValueError, KeyError):
            raise SettingsError(
                [
                    f"{variable} is not set and no local stack{what} runs in {self.data_dir} "
                    f"(start one with `metering up --detach`)"
                ]
            ) from None

    def bootstrap(self) -> str:
        """The configured bootstrap, or the one `metering up` recorded in the data dir."""
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        return self._recorded("bootstrap", "METERING_KAFKA_BOOTSTRAP", "")

    def api(self) -> str:
        """The read-model API: configured, or the one `metering up` recorded in the data dir."""
        if self.api_url:
            return self.api_url.rstrip("/")
        return self._recorded("api_url", "METERING_API_URL", " with a projector")

    def kafka_options(self) -> dict[str, Any]:
        """Security options for aiokafka clients; the password stays a secret until here."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            if self.kafka_sasl_password is not None:
                options["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_security_protocol in {"SSL", "SASL_SSL"}:
            from aiokafka.helpers import create_ssl_context

            key_password = self.kafka_ssl_key_password
            options["ssl_context"] = create_ssl_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
                certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
                keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
                password=key_password.get_secret_value() if key_password else None,
            )
        return options


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            message = str(err["msg"]).removeprefix("Value error, ")
            loc = [str(p) for p in err["loc"]]
            if not loc:  # a check across settings names its setting first: "field: reason"
                field, _, message = message.partition(": ")
                loc = [field]
            problems.append(f"METERING_{'_'.join(loc).upper()}: {message}")
        raise SettingsError(problems) from None
