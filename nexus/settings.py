"""The one source of truth for configuration.

Every knob of every Nexus service is a field here, read from the environment (names kept from the
reference system so existing deployments keep working), validated once at start-up so a typo fails
loudly instead of surfacing as a strange runtime error, and printed with secrets masked by
`nexus config`. `docs/settings.md` is generated from this class (`nexus config --markdown`).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024

#: Fields whose values are secrets: masked wherever settings are shown.
SECRET_FIELDS = frozenset({"api_key_salt", "dashboard_api_key", "slack_webhook_url", "spark_api_key"})
#: Fields that are URLs which may carry a password.
URL_FIELDS = frozenset({"database_url", "otel_exporter_otlp_endpoint", "telemetry_endpoint"})


class SettingsError(ValueError):
    """Raised with one readable line per bad environment variable."""


class Settings(BaseSettings):
    """Nexus settings. Each field is one environment variable (upper-case name)."""

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    # --- listening --------------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Proxy listen address.")
    port: int = Field(3000, ge=1, le=65535, description="Proxy listen port.")
    dashboard_port: int = Field(3001, ge=1, le=65535, description="Dashboard listen port.")
    dashboard_host: str | None = Field(
        None,
        description="Dashboard listen address; unset: 127.0.0.1 without DASHBOARD_API_KEY (it serves this machine "
        "only), 0.0.0.0 with it.",
    )
    dashboard_session_hours: int = Field(
        24, ge=1, le=24 * 30, description="Lifetime of a dashboard login session (signed cookie), hours."
    )
    dashboard_live_interval_ms: int = Field(
        1000, ge=100, le=60_000, description="How often the dashboard looks for new requests to push live, ms."
    )
    proxy_workers: int = Field(1, ge=1, le=64, description="Granian worker processes for the proxy (one per core).")
    proxy_threads: int = Field(1, ge=1, le=64, description="Granian runtime threads per proxy worker.")
    proxy_server_timeout: int = Field(
        660_000, ge=1000, description="Server-side limit for one request, ms (longer than the upstream timeout)."
    )
    proxy_backpressure: int = Field(
        8192,
        ge=16,
        le=1_000_000,
        description="Requests one proxy worker serves at once (Granian backpressure); kept well above what slow "
        "uploads can hold, which the body deadlines end.",
    )
    body_read_idle_timeout_ms: int = Field(
        30_000, ge=100, description="A request body that sends nothing for this long is refused with 408, ms."
    )
    body_read_timeout_ms: int = Field(
        120_000,
        ge=100,
        description="A request body not complete this long after the request began is refused with 408, ms.",
    )
    slow_uploads_per_client: int = Field(
        64,
        ge=1,
        description="Uploads taking over a second that one client address may hold open; beyond it that address's "
        "new requests must send their body within 2 s (normal clients do in milliseconds).",
    )

    # --- upstream ---------------------------------------------------------------------------
    claude_api_base_url: str = Field("https://api.anthropic.com", description="Upstream base URL.")
    claude_api_timeout: int = Field(
        600_000,
        ge=100,
        description="Upstream timeout, ms: until response headers, and for a whole non-streaming body.",
    )
    stream_idle_timeout_ms: int = Field(
        300_000,
        ge=100,
        description="A stream that sends no byte (not even a ping) for this long is ended with an error event, ms.",
    )
    upstream_connect_timeout_ms: int = Field(10_000, ge=10, description="TCP/TLS connect timeout upstream, ms.")
    upstream_max_attempts: int = Field(
        3, ge=1, le=10, description="Attempts per request for connect errors, 5xx and 529 before any byte was sent."
    )
    upstream_retry_base_delay_ms: int = Field(
        500, ge=0, description="First retry delay, ms; doubled each attempt, plus up to 50% jitter."
    )
    upstream_retry_max_delay_ms: int = Field(
        30_000, ge=0, description="Cap on one retry delay (and on retry-after), ms."
    )
    upstream_retry_budget_ms: int = Field(
        60_000, ge=0, description="No new attempt starts once this much time has passed since the first, ms."
    )
    upstream_pool_max_idle: int = Field(
        256, ge=0, description="Idle keep-alive connections kept per upstream host by the shared client."
    )
    max_request_size: int = Field(
        32 * MIB, ge=1024, description="Largest accepted request body, bytes (checked while reading)."
    )

    # --- storage ----------------------------------------------------------------------------
    database_url: str | None = Field(None, description="PostgreSQL URL; unset starts an embedded PostgreSQL.")
    storage_enabled: bool = Field(True, description="Store requests and responses.")
    storage_batch_size: int = Field(200, ge=1, le=100_000, description="Rows per batch write.")
    storage_batch_interval_ms: int = Field(50, ge=1, description="Longest a row waits before its batch is flushed, ms.")
    storage_max_queue: int = Field(
        50_000, ge=100, description="Rows held in memory per worker before new ones are refused (and counted)."
    )
    storage_retention_days: int = Field(
        0,
        ge=0,
        description="Drop stored requests older than this many days, whole daily partitions at a time (0 keeps all).",
    )
    storage_write_timeout_ms: int = Field(
        15_000,
        ge=1000,
        description="Longest one database write may wait; past it the connection is abandoned and the batch "
        "spooled (a hung server never stalls storage), ms.",
    )
    storage_spool_max_bytes: int = Field(
        1024 * MIB, ge=MIB, description="Disk bound of the spool that keeps batches while the database is away."
    )
    nexus_home: Path = Field(Path("~/.local/share/nexus"), description="Local state: embedded database, spool.")

    # --- conversation tracking ----------------------------------------------------------------
    link_index_size: int = Field(
        50_000,
        ge=100,
        description="Recent requests the linker keeps in memory per worker (about 0.4 KB each); older "
        "parents are found in the database.",
    )
    link_lookup_timeout_ms: int = Field(
        1000,
        ge=1,
        description="Limit of one linker lookup in the database (it runs beside the upstream call, "
        "never in front of it; the row is stored once it answers), ms.",
    )
    link_lookback_days: int = Field(
        30, ge=1, description="How far back the linker's database lookups search for a parent, days."
    )

    # --- credentials and auth ---------------------------------------------------------------
    credentials_dir: Path = Field(Path("./credentials"), description="Directory of credential files.")
    enable_client_auth: bool = Field(False, description="Require a client key issued by `nexus keys create`.")
    api_key_salt: str | None = Field(None, description="Secret salt for client-key digests.")
    dashboard_api_key: str | None = Field(
        None,
        description="Key required on /api/*, /token-stats and the dashboard when set; without it they serve "
        "loopback clients only.",
    )
    auth_failure_limit: int = Field(
        10,
        ge=1,
        description="Failed key checks (data key, dashboard login, client key) one client address may make per "
        "window before it is refused with 429.",
    )
    auth_failure_window_ms: int = Field(60_000, ge=1000, description="The window of AUTH_FAILURE_LIMIT, ms.")
    cors_allowed_origins: str = Field(
        "",
        description="Comma-separated web origins (e.g. https://app.example.com) allowed to call the proxy from a "
        "browser; requests from any other origin are refused (403). Empty: no cross-origin access.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or CIDRs of reverse proxies in front of Nexus: only from them is "
        "X-Forwarded-For believed, to find the client address that limits apply to.",
    )
    claude_oauth_token_url: str = Field(
        "https://console.anthropic.com/v1/oauth/token", description="OAuth token endpoint used to refresh accounts."
    )
    claude_oauth_client_id: str = Field(
        "9d1c250a-e61b-44d9-88ed-5944d1962f5e", description="OAuth client id used for refresh and login."
    )
    claude_oauth_authorize_url: str = Field(
        "https://claude.ai/oauth/authorize", description="Where `nexus oauth login` sends you to sign in."
    )
    claude_oauth_redirect_uri: str = Field(
        "https://console.anthropic.com/oauth/code/callback",
        description="Redirect URI of the login; its page shows the `code#state` to paste back.",
    )
    claude_oauth_scopes: str = Field(
        "org:create_api_key user:profile user:inference", description="Scopes `nexus oauth login` asks for."
    )

    # --- lifecycle and observability (docs/operations.md) ------------------------------------
    shutdown_timeout_ms: int = Field(
        30_000,
        ge=0,
        description="On SIGTERM, how long requests in flight (long streams) may still run before they are ended "
        "with an error event; then the storage writer is flushed and what it cannot write is spooled, ms.",
    )
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at GET /metrics (data access rules).")
    metrics_label_limit: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Distinct `model` and `project` label values each proxy worker reports (each is chosen by "
        "clients); later ones are counted under `other`.",
    )
    prometheus_multiproc_dir: Path | None = Field(
        None,
        description="Directory where proxy workers share their metrics (prometheus_client multiprocess mode); "
        "emptied at start. Unset: a private temporary directory, removed at exit.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`json`: one JSON object per log line, with the request id while serving a request."
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector (e.g. http://collector:4318): one trace span per request, GenAI semantic "
        "conventions. Unset: no tracing. Needs the `otel` extra (`pip install 'nexus-gateway[otel]'`).",
    )
    otel_service_name: str = Field("nexus-proxy", description="`service.name` of the exported traces.")

    # --- diagnostics ------------------------------------------------------------------------
    debug: bool = Field(False, description="Verbose logs (never secrets).")
    debug_sql: bool = Field(False, description="Log SQL statements.")

    # --- integrations: Slack, telemetry, test samples, Spark (docs/slack.md, telemetry.md, spark.md) ---
    slack_webhook_url: str | None = Field(
        None, description="Slack incoming-webhook URL for request notifications (a secret: its path is the key)."
    )
    slack_enabled: bool | None = Field(
        None, description="Send Slack notifications; unset: on when SLACK_WEBHOOK_URL is."
    )
    slack_channel: str | None = Field(None, description="Channel the webhook posts to (unset: the webhook's own).")
    slack_username: str = Field("Claude Nexus Proxy", description="Name the Slack messages are posted under.")
    slack_icon_emoji: str = Field(":robot_face:", description="Icon of the Slack messages.")
    slack_projects: str = Field(
        "", description="Comma-separated projects that notify (empty: every project not in SLACK_EXCLUDED_PROJECTS)."
    )
    slack_excluded_projects: str = Field("", description="Comma-separated projects that never notify.")
    slack_request_types: str = Field(
        "main", description="Comma-separated request types (main, subagent, compaction, auxiliary) that notify."
    )
    slack_notify_errors: bool = Field(True, description="Also notify requests that failed (upstream or proxy error).")
    slack_max_posts_per_minute: int = Field(
        20, ge=1, le=600, description="Most webhook posts per minute per proxy worker; each post batches notifications."
    )
    slack_batch_max: int = Field(10, ge=1, le=50, description="Most notifications in one Slack post.")
    slack_batch_interval_ms: int = Field(
        2000, ge=10, description="How long notifications are gathered into one post after the first arrives, ms."
    )
    slack_queue_size: int = Field(
        500, ge=1, description="Finished requests waiting for Slack per worker; beyond it they are dropped (counted)."
    )
    slack_excerpt_chars: int = Field(
        500, ge=20, le=3000, description="Longest prompt and reply excerpt in a Slack message (secrets masked)."
    )
    dashboard_public_url: str | None = Field(
        None,
        description="The dashboard's address as people reach it, for links in notifications; unset: "
        "http://localhost:DASHBOARD_PORT.",
    )
    telemetry_endpoint: str | None = Field(
        None, description="URL that receives batched per-request metrics as JSON POSTs (no prompts, no secrets)."
    )
    telemetry_enabled: bool = Field(True, description="Send telemetry when TELEMETRY_ENDPOINT is set.")
    telemetry_batch_size: int = Field(100, ge=1, le=10_000, description="Most requests in one telemetry POST.")
    telemetry_interval_ms: int = Field(
        5000, ge=10, description="How long requests are gathered into one telemetry POST after the first arrives, ms."
    )
    telemetry_queue_size: int = Field(
        10_000, ge=1, description="Requests waiting for telemetry per worker; beyond it they are dropped (counted)."
    )
    collect_test_samples: bool = Field(
        False, description="Write sanitised request/response samples (secrets masked) to TEST_SAMPLES_DIR."
    )
    test_samples_dir: Path = Field(Path("test-samples"), description="Folder of the test samples.")
    test_samples_max_files: int = Field(
        1000, ge=1, description="Samples kept in TEST_SAMPLES_DIR; once it holds this many, no more are written."
    )
    test_samples_max_bytes: int = Field(
        1 * MIB, ge=1024, description="Largest exchange (request plus response body) written as a sample, bytes."
    )
    spark_api_url: str = Field("http://localhost:8000", description="Spark recommendation API base URL.")
    spark_api_key: str | None = Field(None, description="Bearer key for the Spark API.")
    spark_enabled: bool | None = Field(None, description="Send Spark feedback; unset: on when SPARK_API_KEY is set.")

    @field_validator("otel_exporter_otlp_endpoint", "telemetry_endpoint", "dashboard_public_url")
    @classmethod
    def _otlp_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        return cls._http_url(value)

    @field_validator("claude_api_base_url", "claude_oauth_token_url", "claude_oauth_authorize_url", "spark_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) URL with a host, got {value!r}")
        return value.rstrip("/")

    @field_validator("slack_request_types")
    @classmethod
    def _request_types(cls, value: str) -> str:
        known = ("main", "subagent", "compaction", "auxiliary", "count_tokens")
        unknown = [t for t in _items(value) if t not in known]
        if unknown:
            raise ValueError(f"unknown request types {unknown}; known: {', '.join(known)}")
        return value

    @field_validator("slack_enabled", "spark_enabled", mode="before")
    @classmethod
    def _unset_bool(cls, value: Any) -> Any:
        """`SLACK_ENABLED=` (empty) means unset: the default that follows the webhook or key."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("slack_webhook_url")
    @classmethod
    def _secret_url(cls, value: str | None) -> str | None:
        """A URL that is itself a secret: checked without ever being echoed in the error."""
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL with a host")
        return value

    @field_validator("api_key_salt")
    @classmethod
    def _salt_with_client_auth(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("enable_client_auth") and not value:
            raise ValueError("required when ENABLE_CLIENT_AUTH is true (e.g. the output of `openssl rand -hex 32`)")
        return value or None

    @field_validator("database_url")
    @classmethod
    def _pg_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("postgres", "postgresql") and not value.startswith("host="):
            raise ValueError("must be a postgresql:// URL or a libpq connection string")
        if parts.scheme:
            try:
                parts.port  # noqa: B018 (validates: a port that is not a number raises here, not at connect)
            except ValueError:
                raise ValueError("the port in the URL is not a number") from None
        return value

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in _items(value):
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
                raise ValueError(f"each origin must be scheme://host[:port] without a path, got {origin!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in _items(value):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an address or CIDR: {item!r}") from None
        return value

    @property
    def dashboard_bind(self) -> str:
        """Where the dashboard listens: without a key it serves loopback clients only, so it listens on
        loopback too, and no other machine can even connect to it."""
        if self.dashboard_host:
            return self.dashboard_host
        return "0.0.0.0" if self.dashboard_api_key else "127.0.0.1"

    @property
    def slack_active(self) -> bool:
        """Slack notifications are sent: SLACK_ENABLED, or unset with a webhook (with SLACK_ENABLED and no
        global webhook, only the projects' own webhooks of their credential files are used)."""
        return self.slack_webhook_url is not None if self.slack_enabled is None else self.slack_enabled

    @property
    def spark_active(self) -> bool:
        """Spark feedback is relayed: SPARK_ENABLED, or unset with a key."""
        return bool(self.spark_api_key) if self.spark_enabled is None else self.spark_enabled

    @property
    def dashboard_link(self) -> str:
        """The dashboard's base address for links sent out (no trailing slash)."""
        return self.dashboard_public_url or f"http://localhost:{self.dashboard_port}"

    @property
    def cors_origins(self) -> frozenset[str]:
        return frozenset(o.lower().rstrip("/") for o in _items(self.cors_allowed_origins))

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(i, strict=False) for i in _items(self.trusted_proxies))

    @field_validator("nexus_home", "credentials_dir", "prometheus_multiproc_dir", "test_samples_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    def masked(self) -> dict[str, Any]:
        """Effective values with every secret reduced to a short preview."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None and name in SECRET_FIELDS:
                value = mask_secret(str(value))
            elif value is not None and name in URL_FIELDS:
                value = mask_url_password(str(value))
            elif isinstance(value, Path):
                value = str(value)
            out[name.upper()] = value
        return out


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def mask_secret(value: str) -> str:
    """Keep just enough of a secret to tell two apart, never enough to use one."""
    if len(value) <= 8:
        return "****"
    return f"{value[:4]}…{value[-2:]}"


def mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the environment; raise `SettingsError` naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            shown = "" if name in SECRET_FIELDS | URL_FIELDS else f" (got {err.get('input')!r})"
            lines.append(f"{name.upper() or 'settings'}: {err['msg']}{shown}")
        if len(lines) == 1:  # the usual case: one clear line
            raise SettingsError(f"invalid setting {lines[0]}") from None
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()


def settings_markdown() -> str:
    """The settings table for the docs, generated so it cannot drift from the code."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = str(default)
        shown = "unset" if default is None else f"`{default}`"
        if isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        rows.append(f"| `{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows) + "\n"
