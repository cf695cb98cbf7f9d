"""The one settings object: every ``STREAMSCORE_*`` variable, validated at start.

Nothing else in the product reads the environment. A bad value is reported by
:func:`load_settings` as :class:`~streams.errors.ConfigError` naming the
variable, and the command line turns that into exit code 2.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from models.execution import (
    CompileMode,
    ExecutionOptions,
    Precision,
    check_buckets,
    default_buckets,
)
from schemas.rollout import RoutingRule
from streams.errors import ConfigError

ENV_PREFIX = "STREAMSCORE_"

# Kafka's own rule for topic names (legal characters, at most 249 of them).
TopicName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]

_BROKER_URL = re.compile(
    r"^(?:(?:kafka|aiokafka)://)?(?P<host>[^:/,\s]+)(?::(?P<port>\d{1,5}))?/?$"
)
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class Settings(BaseSettings):
    """Configuration of a worker and of the operator commands (environment only)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        case_sensitive=False,
    )

    # -- the contract's variables -------------------------------------------------------
    broker: str = Field(
        "kafka://127.0.0.1:9092", description="Kafka bootstrap URL(s), comma separated"
    )
    app_id: str = Field(
        "streamscore",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$",
        description="Faust app id = consumer group",
    )
    events_topic: TopicName = Field("events", description="input events")
    features_topic: TopicName = Field("features", description="profile feature updates")
    scores_topic: TopicName = Field("scores", description="output scores")
    dlq_topic: TopicName = Field("events.dlq", description="dead letters")
    partitions: int = Field(8, ge=1, le=10_000, description="partitions for topics the app creates")
    replication_factor: int = Field(
        1, ge=1, le=16, description="replicas of topics the app creates (3 on a real cluster)"
    )
    max_batch_size: int = Field(256, ge=1, le=65_536, description="upper bound of one model batch")
    max_wait_ms: float = Field(
        10.0, ge=0, le=60_000, description="no event waits longer than this for its batch to start"
    )
    max_in_flight: int = Field(
        4096,
        ge=1,
        le=10_000_000,
        description="events between consume and emit before intake pauses",
    )
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:N")
    model: str | None = Field(None, description="model artifact path or registry name")
    web_port: int = Field(6066, ge=1, le=65_535, description="HTTP port for /metrics and /health/*")
    data_dir: Path = Field(Path("./data"), description="RocksDB state and other local state")
    model_registry: Path | None = Field(None, description="model registry directory")
    control_topic: TopicName = Field("streamscore.control", description="the rollout plan")
    shadow_topic: TopicName = Field("scores.shadow", description="scores of the shadow model")
    pipeline: str = Field(
        "fraud", min_length=1, description="a packaged pipeline name or MODULE:ATTRIBUTE"
    )

    # -- models in production: canary watch, router, shadow ------------------------------
    auto_rollback: bool = Field(
        True, description="roll a canary back when it breaches a threshold below"
    )
    canary_window_s: float = Field(
        60.0, gt=0, le=86_400, description="sliding window over which canary and primary compare"
    )
    canary_min_events: int = Field(
        200, ge=1, le=10_000_000, description="events each side needs in the window before judging"
    )
    canary_max_error_rate: float = Field(
        0.01, ge=0, le=1, description="canary failure share allowed above the primary's"
    )
    canary_max_latency_ratio: float = Field(
        3.0, ge=1, le=1_000, description="canary model time per event allowed, x the primary's"
    )
    canary_max_score_shift: float = Field(
        0.25, gt=0, le=1, description="largest Kolmogorov-Smirnov gap between the score samples"
    )
    escalation_model: str | None = Field(
        None, description="heavier model rescoring events whose score is in the band (empty: off)"
    )
    escalation_band_low: float = Field(
        0.2, ge=0, le=1, description="lower end of the escalated score band (inclusive)"
    )
    escalation_band_high: float = Field(
        0.8, ge=0, le=1, description="upper end of the escalated score band (inclusive)"
    )
    routing_rules: list[RoutingRule] = Field(
        default_factory=list,
        description="JSON list: events matching a rule go to its model, e.g. "
        '[{"model": "NAME:VERSION", "where": {"FIELD": {"gte": 1000}, "OTHER": ["a", "b"]}}]',
    )
    shadow_max_pending: int = Field(
        2_048, ge=1, le=10_000_000, description="shadow events queued before shadow work is shed"
    )

    # -- overload and failure -------------------------------------------------------------
    fallback_model: str | None = Field(
        None,
        description="lighter model scoring when the primary cannot (unset: the pipeline's "
        "own, fraud-lr:1 for fraud; empty: none)",
    )
    default_score: float | None = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="last rung of the ladder when no model can score (empty: dead-letter)",
    )
    deadline_ms: float | None = Field(
        None,
        gt=0,
        le=3_600_000,
        description="an event older than this (from its record timestamp) skips the primary",
    )
    model_timeout_ms: float = Field(
        1_000, gt=0, le=600_000, description="a model call longer than this fails over"
    )
    breaker_failures: int = Field(
        5, ge=1, le=1_000, description="consecutive primary failures that open the breaker"
    )
    breaker_cooldown_ms: float = Field(
        5_000, gt=0, le=3_600_000, description="how long the breaker stays open before a probe"
    )
    delivery_timeout_ms: int = Field(
        30_000,
        ge=1_000,
        le=3_600_000,
        description="how long an output may wait for its acknowledgement before intake stops",
    )
    emit_retries: int = Field(
        5,
        ge=0,
        le=1_000,
        description="more delivery timeouts or re-sends before readiness fails (retrying goes on)",
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="exactly_once: scores, dead letters and offsets in one Kafka transaction",
    )

    # -- group membership and commits (not in the contract's table; add-only) -----------
    session_timeout_ms: int = Field(
        10_000, ge=1_000, le=300_000, description="consumer group session timeout"
    )
    heartbeat_interval_ms: int = Field(
        1_000, ge=100, le=60_000, description="consumer group heartbeat interval"
    )
    rebalance_timeout_ms: int = Field(
        20_000, ge=1_000, le=600_000, description="time members get to rejoin on a rebalance"
    )
    fetch_max_wait_ms: int | None = Field(
        None,
        ge=1,
        le=30_000,
        description="longest a fetch waits for data (default: 500 on Kafka, 10 on the "
        "embedded broker, which answers a waiting fetch only when it expires)",
    )
    commit_interval_ms: int = Field(
        1_000, ge=50, le=600_000, description="how often acknowledged offsets are committed"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="worker log level"
    )
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="intra-op threads of the model (default: cores - 1)"
    )
    precision: Precision = Field(
        "fp32", description="fp32, fp16 or bf16 model weights (scores stay fp32)"
    )
    precision_tolerance: float = Field(
        0.01, gt=0, le=1, description="largest score difference from fp32 a model may show"
    )
    compile: CompileMode = Field(
        "off", description="torch.compile mode: off, default, reduce-overhead, max-autotune"
    )
    batch_buckets: Annotated[tuple[int, ...], NoDecode] = Field(
        (),
        description="batch sizes compiled models are padded to, comma-separated "
        "(default with compile: powers of two from 8 to MAX_BATCH_SIZE)",
    )
    drain_timeout_ms: int = Field(
        15_000,
        ge=100,
        le=600_000,
        description="how long a rebalance or shutdown waits for in-flight events "
        "before leaving them to be re-read (below the rebalance timeout)",
    )

    # -- Kafka security pass-through ------------------------------------------------------
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (with a SASL_* protocol)"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged)")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle that signs the brokers")
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (mutual TLS)")
    kafka_ssl_keyfile: Path | None = Field(None, description="client private key (mutual TLS)")

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts:
            raise ValueError("at least one broker URL is required, e.g. kafka://127.0.0.1:9092")
        for part in parts:
            match = _BROKER_URL.match(part)
            if match is None or (match["port"] and not 0 < int(match["port"]) < 65_536):
                raise ValueError(f"{part!r} is not a broker URL like kafka://HOST:PORT")
        return ",".join(parts)

    @field_validator(
        "fallback_model", "default_score", "deadline_ms", "model", "escalation_model",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """``STREAMSCORE_FALLBACK_MODEL=`` (empty) turns a rung off."""
        return None if isinstance(value, str) and value.strip() in ("", "none") else value

    @field_validator("batch_buckets", mode="before")
    @classmethod
    def _split_buckets(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return tuple(int(part) for part in value.split(",") if part.strip())
            except ValueError:
                raise ValueError(
                    "must be batch sizes separated by commas, e.g. 8,32,128,256"
                ) from None
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.max_in_flight < self.max_batch_size:
            raise ValueError(
                f"STREAMSCORE_MAX_IN_FLIGHT ({self.max_in_flight}) must be at least "
                f"STREAMSCORE_MAX_BATCH_SIZE ({self.max_batch_size}), or batches could never fill"
            )
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "STREAMSCORE_HEARTBEAT_INTERVAL_MS must be at most a third of "
                "STREAMSCORE_SESSION_TIMEOUT_MS"
            )
        if self.drain_timeout_ms >= self.rebalance_timeout_ms:
            raise ValueError(
                "STREAMSCORE_DRAIN_TIMEOUT_MS must be below STREAMSCORE_REBALANCE_TIMEOUT_MS, "
                "or a rebalance would drop this worker from the group while it drains"
            )
        if self.escalation_band_low > self.escalation_band_high:
            raise ValueError(
                "STREAMSCORE_ESCALATION_BAND_LOW must not be above STREAMSCORE_ESCALATION_BAND_HIGH"
            )
        buckets = self.batch_buckets
        try:
            check_buckets(buckets)
        except ValueError as exc:
            raise ValueError(f"STREAMSCORE_BATCH_BUCKETS: {exc}") from None
        if buckets and buckets[-1] < self.max_batch_size:
            raise ValueError(
                "STREAMSCORE_BATCH_BUCKETS: the last must be at least "
                f"STREAMSCORE_MAX_BATCH_SIZE ({self.max_batch_size})"
            )
        sasl = self.kafka_security_protocol.startswith("SASL")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username):
            raise ValueError(
                "a SASL security protocol needs STREAMSCORE_KAFKA_SASL_MECHANISM, "
                "STREAMSCORE_KAFKA_SASL_USERNAME and STREAMSCORE_KAFKA_SASL_PASSWORD"
            )
        return self

    # -- derived values -------------------------------------------------------------------
    @cached_property
    def bootstrap_servers(self) -> str:
        """``host:port,host:port`` for clients that do not take URLs."""
        hosts = []
        for part in self.broker.split(","):
            match = _BROKER_URL.match(part)
            assert match is not None  # checked by the validator
            hosts.append(f"{match['host']}:{match['port'] or 9092}")
        return ",".join(hosts)

    @property
    def faust_broker(self) -> str:
        """The broker list as Faust wants it (``kafka://h:p;kafka://h:p``)."""
        return ";".join(f"kafka://{hp}" for hp in self.bootstrap_servers.split(","))

    @property
    def registry_dir(self) -> Path:
        return (
            self.model_registry if self.model_registry is not None else self.data_dir / "registry"
        )

    def execution(self) -> ExecutionOptions:
        """How models run: precision, compilation and the batch sizes compiled for."""
        buckets = self.batch_buckets
        if not buckets and self.compile != "off":
            buckets = default_buckets(self.max_batch_size)
        return ExecutionOptions(
            precision=self.precision,
            compile=self.compile,
            buckets=buckets,
            tolerance=self.precision_tolerance,
        )

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every confluent-kafka client of the product."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username or ""
            password = self.kafka_sasl_password
            config["sasl.password"] = password.get_secret_value() if password else ""
        if self.kafka_ssl_cafile:
            config["ssl.ca.location"] = str(self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            config["ssl.certificate.location"] = str(self.kafka_ssl_certfile)
        if self.kafka_ssl_keyfile:
            config["ssl.key.location"] = str(self.kafka_ssl_keyfile)
        return config


def faust_credentials(settings: Settings) -> Any:
    """The same security settings for Faust's (aiokafka) consumer and producer."""
    import ssl

    from faust.auth import SASLCredentials, SSLCredentials

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            )
    if protocol == "SSL":
        return SSLCredentials(context)
    password = settings.kafka_sasl_password
    return SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password else None,
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the environment; raise :class:`ConfigError` with a readable reason."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
    except SettingsError as exc:  # a list or object variable that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"{ENV_PREFIX}{field[1].upper()}" if field else "a STREAMSCORE_* variable"
        raise ConfigError(f"invalid configuration:\n  {name}: not valid JSON") from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad variable, named as the operator typed it."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if not field:  # a rule across variables: its message names them
            lines.append(message)
            continue
        given = error.get("input")
        shown = "" if "password" in field else f" (got {given!r})"
        lines.append(f"{ENV_PREFIX}{field.upper()}: {message}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
