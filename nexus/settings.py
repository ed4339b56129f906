"""The one source of truth for configuration.

Every knob of every Nexus service is a field here, read from the environment (names kept from the
reference system so existing deployments keep working), validated once at start-up so a typo fails
loudly instead of surfacing as a strange runtime error, and printed with secrets masked by
`nexus config`. `docs/settings.md` is generated from this class (`nexus config --markdown`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024

#: Fields whose values are secrets: masked wherever settings are shown.
SECRET_FIELDS = frozenset(
    {
        "api_key_salt",
        "nexus_secret_key",
        "dashboard_api_key",
        "mcp_github_token",
        "ai_analysis_api_key",
        "gemini_api_key",
        "slack_webhook_url",
        "spark_api_key",
    }
)
#: Fields that are URLs which may carry a password.
URL_FIELDS = frozenset(
    {"database_url", "otel_exporter_otlp_endpoint", "ai_analysis_proxy_url", "proxy_api_url", "telemetry_endpoint"}
)


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
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL (postgresql://...) or libpq connection string (host=... dbname=...); "
        "unset starts an embedded PostgreSQL.",
    )
    storage_enabled: bool = Field(True, description="Store requests and responses.")
    storage_batch_size: int = Field(200, ge=1, le=100_000, description="Rows per batch write.")
    storage_batch_interval_ms: int = Field(50, ge=1, description="Longest a row waits before its batch is flushed, ms.")
    storage_max_queue: int = Field(
        50_000, ge=100, description="Rows held in memory per worker before new ones are refused (and counted)."
    )
    storage_max_queue_bytes: int = Field(
        8 * MIB,
        ge=MIB,
        description="Request and response bytes held in memory per worker waiting to be written; past it the "
        "oldest waiting rows are encoded at once and wait as compact COPY payloads (up to half as many bytes), "
        "then go to the spool on disk and are written when the database catches up (a database slower than the "
        "traffic costs disk, bounded by STORAGE_SPOOL_MAX_BYTES, never unbounded memory).",
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
    storage_search_enabled: bool = Field(
        True,
        description="Make each stored request searchable (full-text search of the dashboard and /api); PostgreSQL "
        "then runs to_tsvector on each row's staged text (the insert ~0.36 ms a row instead of ~0.28: "
        "docs/storage.md).",
    )
    storage_spool_max_bytes: int = Field(
        1024 * MIB, ge=MIB, description="Disk bound of the spool that keeps batches while the database is away."
    )
    nexus_home: Path = Field(
        Path("~/.local/share/nexus"),
        description="Local state: embedded database, spool. Every install of the same user shares the default; "
        "set it per install to keep them apart.",
    )

    # --- conversation tracking ----------------------------------------------------------------
    link_index_size: int = Field(
        50_000,
        ge=100,
        description="Recent requests the linker keeps in memory per worker (about 0.27 KB each); older "
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
    link_shared: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Link every request against what all workers and instances decided, kept in PostgreSQL "
        "(docs/scaling.md). auto: a process that is the only one linking against its database decides in memory "
        "and writes its decisions in batches, and shares decisions from the moment another one starts (the solo "
        "lease); `nexus serve` with its embedded database and one worker: off. on: always shared; off: each "
        "worker links from its own memory.",
    )

    # --- cost ------------------------------------------------------------------------------------
    pricing_file: Path | None = Field(
        None,
        description="A price file laid over the shipped model prices (format: docs/pricing.md); a bad file stops "
        "start-up.",
    )

    # --- credentials and auth ---------------------------------------------------------------
    credentials_dir: Path = Field(Path("./credentials"), description="Directory of credential files.")
    enable_client_auth: bool = Field(False, description="Require a client key issued by `nexus keys create`.")
    api_key_salt: str | None = Field(None, description="Secret salt for client-key digests.")
    nexus_secret_key: str | None = Field(
        None,
        description="Key sealing the credentials stored in the database (Fernet; comma-separated for rotation: "
        "the first seals, all open). Unset: a key generated into NEXUS_HOME/secret.key. Every instance sharing "
        "DATABASE_URL needs the same key (docs/scaling.md).",
    )
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

    # --- AI analysis of conversations (docs/analysis.md) ---------------------------------------
    ai_worker_enabled: bool = Field(
        False, description="`nexus serve` also runs the analysis worker (`nexus worker` runs one on its own)."
    )
    ai_worker_poll_interval_ms: int = Field(
        5000, ge=10, le=3_600_000, description="How often an idle analysis worker looks for queued jobs, ms."
    )
    ai_worker_max_concurrent_jobs: int = Field(
        3, ge=1, le=64, description="Analysis jobs one worker process runs at once."
    )
    ai_worker_job_timeout_minutes: int = Field(
        5,
        ge=1,
        le=24 * 60,
        description="A worker gives up an analysis job after this long (a failed attempt); the watchdog returns "
        "a job still `processing` a minute past it (its worker died) to the queue, minutes.",
    )
    ai_analysis_max_retries: int = Field(
        3, ge=0, le=20, description="Retries of a failed analysis job (so at most 1 + this many attempts)."
    )
    ai_analysis_retry_base_delay_ms: int = Field(
        1000, ge=0, description="Wait before the first retry, ms; times 2.5 for each later one, plus up to 30% jitter."
    )
    ai_analysis_retry_max_delay_ms: int = Field(15_000, ge=0, description="Cap on one retry wait, ms.")
    ai_analysis_request_timeout_ms: int = Field(
        60_000, ge=100, description="Limit of one call to the analysis model, ms."
    )
    ai_analysis_provider: Literal["claude", "gemini"] = Field(
        "claude",
        description="`claude`: through this gateway's own /v1/messages, paid by AI_ANALYSIS_PROJECT_ID's "
        "credential; `gemini`: Google's API with GEMINI_API_KEY.",
    )
    ai_analysis_project_id: str | None = Field(
        None,
        description="Project whose credential pays for analyses through the gateway (required for the `claude` "
        "provider).",
    )
    ai_analysis_proxy_url: str | None = Field(
        None, description="Where the worker reaches the gateway; unset: http://127.0.0.1:PORT."
    )
    ai_analysis_api_key: str | None = Field(
        None,
        description="Sent as x-api-key with each analysis request: a client key of AI_ANALYSIS_PROJECT_ID when "
        "ENABLE_CLIENT_AUTH is on, or an Anthropic key when that project has no credential file.",
    )
    anthropic_analysis_model: str = Field("claude-opus-4-6", description="Model of the `claude` provider.")
    ai_analysis_max_output_tokens: int = Field(
        8192, ge=256, le=64_000, description="max_tokens of an analysis request."
    )
    ai_analysis_input_truncation_target_tokens: int = Field(
        100_000,
        ge=1000,
        description="Most transcript tokens sent to the model; a longer transcript keeps its head and its tail.",
    )
    ai_analysis_truncate_first_n_tokens: int = Field(
        20_000, ge=0, description="Of a truncated transcript, the head kept (whole turns, from the start), tokens."
    )
    ai_analysis_truncate_last_m_tokens: int = Field(
        80_000,
        ge=0,
        description="Of a truncated transcript, the tail kept (whole turns, up to the end), tokens; head plus tail "
        "never exceed AI_ANALYSIS_INPUT_TRUNCATION_TARGET_TOKENS.",
    )
    ai_estimated_chars_per_token: float = Field(
        4.0, gt=0.5, le=20, description="Characters per token when estimating the transcript's size."
    )
    gemini_api_key: str | None = Field(None, description="Google AI key of the `gemini` provider (never logged).")
    gemini_api_url: str = Field(
        "https://generativelanguage.googleapis.com/v1beta/models",
        description="Base URL of Gemini's models (`{url}/{model}:generateContent`).",
    )
    gemini_model_name: str = Field("gemini-2.5-pro", description="Model of the `gemini` provider.")
    proxy_api_url: str | None = Field(
        None,
        description=(
            "Where the dashboard reaches the proxy's /api (the analysis button, the reference dashboard's "
            "JSON paths); unset: http://127.0.0.1:PORT."
        ),
    )

    # --- diagnostics ------------------------------------------------------------------------
    debug: bool = Field(False, description="Verbose logs (never secrets).")
    debug_sql: bool = Field(
        False, description="Log each SQL statement of /api/* and the dashboard, with its duration (not its parameters)."
    )

    # --- names kept from the reference system (docs/settings.md, docs/migrating.md) ------------
    default_project_id: str | None = Field(
        None,
        description="Project of a request that names none (no client key, no train-id/MSL-Project-Id header); "
        "when set it replaces the Host-domain step, as in the reference system. Unset: the Host domain, "
        "else `default`.",
    )
    log_level: Literal["debug", "info", "warning", "error"] | None = Field(
        None, description="Lowest level of log lines (`warn` is `warning`); unset: `warning`, `debug` with DEBUG."
    )
    db_pool_size: int = Field(
        4, ge=1, le=100, description="Connections each reading pool (each proxy worker's /api/*, the dashboard) opens."
    )
    slow_query_threshold_ms: int = Field(
        5000,
        ge=0,
        description="Queries of /api/* and the dashboard that take longer are logged (a warning with the duration "
        "and the statement, never its parameters), ms; 0: none.",
    )
    dashboard_cache_ttl: int = Field(
        0,
        ge=0,
        le=3600,
        description="Seconds the dashboard reuses the figures of its overview, usage and conversation list pages "
        "before it queries again; 0: always fresh.",
    )
    train_client_keys_dir: Path | None = Field(
        None,
        description="Reference-system key files (`<project>.client-keys.json`), accepted as client keys as they "
        "are; unset: CREDENTIALS_DIR/train-client-keys.",
    )

    @model_validator(mode="before")
    @classmethod
    def _reference_names(cls, data: Any) -> Any:
        """Reference-system names of settings (`STORAGE_BATCH_INTERVAL`, `DB_*`, ...), read when the
        Nexus name is unset: the table is `nexus.compat.reference_env`."""
        from nexus.compat.reference_env import apply_aliases

        return apply_aliases(data, os.environ) if isinstance(data, dict) else data

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            return {"warn": "warning", "": None, "fatal": "error", "trace": "debug"}.get(value, value)
        return value

    @field_validator("default_project_id")
    @classmethod
    def _project_name(cls, value: str | None) -> str | None:
        from nexus.auth.names import safe_name

        if not value:
            return None
        if safe_name(value) is None:
            raise ValueError("must be a project name: letters, digits and . _ : - (128 at most)")
        return value

    @property
    def credentials_database(self) -> str | None:
        """The database that holds credentials and client keys (docs/credentials.md), or None when this
        process has none and uses CREDENTIALS_DIR's files alone (STORAGE_ENABLED=false, no DATABASE_URL)."""
        return self.database_url if self.storage_enabled else None

    @property
    def client_keys_dir(self) -> Path:
        """Where the reference system's per-project key files are read from."""
        return self.train_client_keys_dir or self.credentials_dir / "train-client-keys"

    # --- MCP prompt server and client setup (docs/mcp.md, docs/client-setup.md) ---------------
    mcp_enabled: bool = Field(False, description="Serve the MCP prompt server at POST/GET /mcp.")
    mcp_prompts_dir: Path = Field(
        Path("./prompts"), description="Directory of prompt files (`*.yaml`, `*.yml`) the MCP server serves."
    )
    mcp_watch_files: bool = Field(
        True, description="Reload the prompts when a file in MCP_PROMPTS_DIR is added, changed or removed."
    )
    mcp_max_request_size: int = Field(
        1 * MIB, ge=1024, le=32 * MIB, description="Largest accepted MCP request body, bytes."
    )
    mcp_github_owner: str | None = Field(None, description="GitHub owner of the repository prompts are synced from.")
    mcp_github_repo: str | None = Field(None, description="GitHub repository prompts are synced from.")
    mcp_github_token: str | None = Field(None, description="GitHub token for the prompt sync (needs read access).")
    mcp_github_branch: str = Field("main", description="Branch the prompt sync reads.")
    mcp_github_path: str = Field("prompts/", description="Folder of the repository the prompt sync reads.")
    mcp_github_api_url: str = Field(
        "https://api.github.com", description="GitHub API base URL (GitHub Enterprise, or a test's fake)."
    )
    mcp_sync_interval: int = Field(
        300, ge=10, description="Seconds between two prompt syncs from GitHub (one also runs at start)."
    )
    client_setup_dir: Path = Field(
        Path("./client-setup"), description="Directory of files served at GET /client-setup/{filename}."
    )
    client_setup_base_url: str | None = Field(
        None,
        description="The gateway's URL as clients reach it, written into the generated Claude Code settings; "
        "unset: the address the request was sent to.",
    )

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

    @field_validator(
        "claude_api_base_url",
        "claude_oauth_token_url",
        "claude_oauth_authorize_url",
        "mcp_github_api_url",
        "spark_api_url",
    )
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
    def _salt(cls, value: str | None) -> str | None:
        """Needed for keys issued by `nexus keys create`, not for the reference system's keys kept in
        files (`nexus.auth.reference_keys`): whether client auth can admit anyone is a start-up check."""
        return value or None

    @field_validator("nexus_secret_key")
    @classmethod
    def _secret_key(cls, value: str | None) -> str | None:
        """Checked now, without echoing the value: a bad key must stop start-up, not every request."""
        if not value:
            return None
        from nexus.auth.sealing import SealingError, SecretBox, parse_keys

        try:
            SecretBox(parse_keys(value), "NEXUS_SECRET_KEY")
        except SealingError as exc:
            raise ValueError(str(exc).removeprefix("NEXUS_SECRET_KEY: ")) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _pg_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("postgres", "postgresql") and not _is_conninfo(value):
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

    @field_validator("ai_analysis_proxy_url", "proxy_api_url")
    @classmethod
    def _optional_http_url(cls, value: str | None) -> str | None:
        return cls._http_url(value) if value else None

    @field_validator("gemini_api_url")
    @classmethod
    def _gemini_url(cls, value: str) -> str:
        return cls._http_url(value)

    @field_validator("gemini_model_name", "anthropic_analysis_model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:\[\]-]{0,99}", value):
            raise ValueError(f"not a model name: {value[:40]!r}")
        return value

    @model_validator(mode="after")
    def _analysis_provider(self) -> Settings:
        if self.ai_worker_enabled and (problem := self.analysis_problem()):
            raise ValueError(problem)
        return self

    def analysis_problem(self) -> str | None:
        """Why the analysis worker cannot run with these settings (None: it can)."""
        if self.ai_analysis_provider == "claude" and not self.ai_analysis_project_id:
            return "AI_ANALYSIS_PROJECT_ID is required for the claude analysis provider (the project that pays)"
        if self.ai_analysis_provider == "gemini" and not self.gemini_api_key:
            return "GEMINI_API_KEY is required for the gemini analysis provider"
        return None

    # --- durations in seconds, derived (not settings: the environment gives milliseconds) ------
    # asyncio, the HTTP client and the pools take seconds; each conversion is written once, here.
    @property
    def server_timeout_s(self) -> float:
        """PROXY_SERVER_TIMEOUT: the limit for one request until its response starts."""
        return self.proxy_server_timeout / 1000

    @property
    def head_timeout_s(self) -> float:
        """CLAUDE_API_TIMEOUT: the wait for the upstream's response head (and a buffered body)."""
        return self.claude_api_timeout / 1000

    @property
    def stream_idle_timeout_s(self) -> float:
        return self.stream_idle_timeout_ms / 1000

    @property
    def body_read_idle_timeout_s(self) -> float:
        return self.body_read_idle_timeout_ms / 1000

    @property
    def body_read_timeout_s(self) -> float:
        return self.body_read_timeout_ms / 1000

    @property
    def upstream_retry_base_delay_s(self) -> float:
        return self.upstream_retry_base_delay_ms / 1000

    @property
    def upstream_retry_max_delay_s(self) -> float:
        return self.upstream_retry_max_delay_ms / 1000

    @property
    def upstream_retry_budget_s(self) -> float:
        return self.upstream_retry_budget_ms / 1000

    @property
    def storage_batch_interval_s(self) -> float:
        return self.storage_batch_interval_ms / 1000

    @property
    def storage_write_timeout_s(self) -> float:
        return self.storage_write_timeout_ms / 1000

    @property
    def link_lookup_timeout_s(self) -> float:
        return self.link_lookup_timeout_ms / 1000

    @property
    def auth_failure_window_s(self) -> float:
        return self.auth_failure_window_ms / 1000

    @property
    def shutdown_timeout_s(self) -> float:
        return self.shutdown_timeout_ms / 1000

    @property
    def dashboard_live_interval_s(self) -> float:
        return self.dashboard_live_interval_ms / 1000

    @property
    def ai_worker_poll_interval_s(self) -> float:
        return self.ai_worker_poll_interval_ms / 1000

    @property
    def slack_batch_interval_s(self) -> float:
        return self.slack_batch_interval_ms / 1000

    @property
    def telemetry_interval_s(self) -> float:
        return self.telemetry_interval_ms / 1000

    @property
    def analysis_proxy_url(self) -> str:
        return self.ai_analysis_proxy_url or f"http://127.0.0.1:{self.port}"

    @property
    def dashboard_proxy_url(self) -> str:
        return self.proxy_api_url or f"http://127.0.0.1:{self.port}"

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

    @field_validator("client_setup_base_url")
    @classmethod
    def _optional_url(cls, value: str | None) -> str | None:
        return cls._http_url(value) if value else None

    @field_validator(
        "nexus_home",
        "credentials_dir",
        "prometheus_multiproc_dir",
        "train_client_keys_dir",
        "mcp_prompts_dir",
        "client_setup_dir",
        "test_samples_dir",
    )
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("pricing_file")
    @classmethod
    def _prices(cls, value: Path | None) -> Path | None:
        """Read and check the operator's prices now: a typo in a rate must stop start-up, not be
        discovered as a wrong bill."""
        if value is None:
            return None
        from nexus.pricing.table import PricingError, load

        value = value.expanduser()
        try:
            load(value)
        except PricingError as exc:
            raise ValueError(str(exc)) from None
        return value

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


def _is_conninfo(value: str) -> bool:
    """A libpq `key=value` connection string (its keywords in any order: `dbname=x host=/tmp`); a
    value with a URL scheme is a URL, whatever follows (`options='-c x=a://b'` is still a keyword)."""
    if "=" not in value or urlsplit(value).scheme:
        return False
    import psycopg.conninfo  # here: settings are read by commands that never connect

    try:
        psycopg.conninfo.conninfo_to_dict(value)
    except psycopg.ProgrammingError:
        return False
    return True


def mask_url_password(url: str) -> str:
    """The URL or libpq connection string with its password, wherever it is, replaced by `****`: in
    the URL's user part, as a `password=` query parameter, or as a `password=` keyword."""
    if _is_conninfo(url):
        import psycopg.conninfo

        params = psycopg.conninfo.conninfo_to_dict(url)
        if "password" not in params:
            return url
        return psycopg.conninfo.make_conninfo("", **{**params, "password": "****"})
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":****@", 1)
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k == "password" for k, _ in pairs):
        query = urlencode([(k, "****" if k == "password" else v) for k, v in pairs], safe="/*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


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
