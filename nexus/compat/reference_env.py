"""Every environment variable of the reference system, and what Nexus makes of it: the one table.

Teams replacing the reference system start Nexus with the environment they already have. Each of its
variables is here, once, with its status:

- `same`: Nexus reads the same name with the same meaning;
- `alias`: Nexus reads the name and applies it to its own setting (`STORAGE_BATCH_INTERVAL` is
  `STORAGE_BATCH_INTERVAL_MS`), unless that setting is set too;
- `unsupported`: Nexus has no such knob; `nexus` says what to do instead, and start-up prints one
  warning naming it when the variable is set (`nexus.compat.environment`);
- `elsewhere`: handled by a part of Nexus being built separately: no warning. None is left since AI
  analysis, Slack, MCP, Spark, telemetry, test samples and client setup landed (their names are rows
  of `_TABLE`); `HANDLED_ELSEWHERE` is the list to fill if another such part is ever split off.

`docs/settings.md` carries this table (`reference_markdown`, checked by `tests/test_compat_settings.py`),
the settings read the aliases from it (`apply_aliases`), and the start-up warnings come from it, so the
three cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

Status = Literal["same", "alias", "unsupported", "elsewhere"]

#: Reference names (exact, or prefixes ending in `_`) that other parts of Nexus handle: no warning.
#: Empty since those parts landed (issue 12): their variables are rows of `_TABLE` like any other, so
#: one Nexus does not read is reported at start-up instead of being ignored without a word.
HANDLED_ELSEWHERE_PREFIXES: tuple[str, ...] = ()
HANDLED_ELSEWHERE: frozenset[str] = frozenset()


def handled_elsewhere(name: str) -> bool:
    return name in HANDLED_ELSEWHERE or name.startswith(HANDLED_ELSEWHERE_PREFIXES)


@dataclass(frozen=True, slots=True)
class ReferenceVar:
    name: str
    status: Status
    #: The Nexus setting it is (`same`, `alias`), or what to use instead (`unsupported`).
    nexus: str
    note: str = ""


def _same(name: str, note: str = "") -> ReferenceVar:
    return ReferenceVar(name, "same", f"`{name}`", note)


def _alias(name: str, setting: str, note: str = "") -> ReferenceVar:
    return ReferenceVar(name, "alias", f"`{setting}`", note)


def _no(name: str, instead: str, note: str = "") -> ReferenceVar:
    return ReferenceVar(name, "unsupported", instead, note)


_RATE = "`AUTH_FAILURE_LIMIT` limits wrong keys; request and token rates are left to Anthropic's own limits"
_SSO = "`DASHBOARD_API_KEY` (login form and `X-API-Key`), behind your SSO proxy if you use one"
_AI_API = "`AUTH_FAILURE_LIMIT` (failed keys); `/api/analyses` follows the access rule of `/api/*`"
_AI_BUDGET = (
    "`AI_ANALYSIS_INPUT_TRUNCATION_TARGET_TOKENS`, `AI_ANALYSIS_TRUNCATE_FIRST_N_TOKENS`, "
    "`AI_ANALYSIS_TRUNCATE_LAST_M_TOKENS` (docs/analysis.md)"
)
_MCP_CACHE = "nothing needed: prompts are held compiled and reloaded when their files change (`MCP_WATCH_FILES`)"
_DB = "composes `DATABASE_URL` when that is unset (`postgresql://DB_USER:DB_PASSWORD@DB_HOST:DB_PORT/DB_NAME`)"

_TABLE: tuple[ReferenceVar, ...] = (
    # --- server ------------------------------------------------------------------------------------
    _same("PORT", "the reference dashboard's `PORT` is Nexus's `DASHBOARD_PORT`"),
    _same("HOST"),
    _same("PROXY_SERVER_TIMEOUT"),
    _no("NODE_ENV", "`DEBUG` for verbose logs, `LOG_FORMAT=json` for production logs"),
    _no("SERVICE_MODE", "the command: `nexus proxy` (proxy and `/api/*`), `nexus dashboard`, or `nexus serve`"),
    # --- upstream ----------------------------------------------------------------------------------
    _same("CLAUDE_API_BASE_URL"),
    _same("CLAUDE_API_TIMEOUT"),
    _same("CLAUDE_OAUTH_CLIENT_ID"),
    _no("CLAUDE_API_KEY", "a credential file: `CREDENTIALS_DIR/default.credentials.json` (docs/credentials.md)"),
    # --- auth --------------------------------------------------------------------------------------
    _same("ENABLE_CLIENT_AUTH", "keys in credential files (`client_api_key`) are accepted as they are"),
    _same("CREDENTIALS_DIR"),
    _no("ACCOUNTS_DIR", "`CREDENTIALS_DIR/accounts/` (named accounts live there)"),
    _same("TRAIN_CLIENT_KEYS_DIR", "its `<project>.client-keys.json` files are accepted as they are"),
    _same("DEFAULT_PROJECT_ID"),
    _alias("INTERNAL_API_KEY", "DASHBOARD_API_KEY", "the service key of the reference's `/api/*`"),
    _same("DASHBOARD_API_KEY", "also accepted as `X-Dashboard-Key`"),
    _same("API_KEY_SALT", "needed only for keys from `nexus keys create` / `nexus keys import`"),
    # --- database ----------------------------------------------------------------------------------
    _same("DATABASE_URL"),
    _alias("DB_HOST", "DATABASE_URL", _DB + "; default `localhost`"),
    _alias("DB_PORT", "DATABASE_URL", "with `DB_HOST`; default `5432`"),
    _alias("DB_NAME", "DATABASE_URL", "with `DB_HOST`; default `agent_prompttrain`"),
    _alias("DB_USER", "DATABASE_URL", "with `DB_HOST`; default `postgres`"),
    _alias("DB_PASSWORD", "DATABASE_URL", "with `DB_HOST`; never shown by `nexus config`"),
    _alias("DB_SSL", "DATABASE_URL", "with `DB_HOST`: `true` adds `sslmode=require`"),
    _same("DB_POOL_SIZE"),
    _same("STORAGE_ENABLED", "on by default in Nexus"),
    _same("STORAGE_BATCH_SIZE"),
    _alias(
        "STORAGE_BATCH_INTERVAL",
        "STORAGE_BATCH_INTERVAL_MS",
        "milliseconds in both; the reference ignored it, Nexus applies it (its example's 5000 holds rows up to 5 s)",
    ),
    _no("STORAGE_ADAPTER_CLEANUP_MS", "nothing needed: Nexus keeps no in-memory request map to clean up"),
    _no("STORAGE_ADAPTER_RETENTION_MS", "`STORAGE_RETENTION_DAYS` (stored rows); no in-memory map to expire"),
    _same("DEBUG_SQL"),
    _same("SLOW_QUERY_THRESHOLD_MS"),
    # --- limits ------------------------------------------------------------------------------------
    _same("MAX_REQUEST_SIZE"),
    _no("MAX_MESSAGE_COUNT", "`MAX_REQUEST_SIZE` (the reference declared these limits but never enforced them)"),
    _no("MAX_SYSTEM_LENGTH", "`MAX_REQUEST_SIZE` (never enforced by the reference)"),
    _no("MAX_MESSAGE_LENGTH", "`MAX_REQUEST_SIZE` (never enforced by the reference)"),
    _no("MAX_TOTAL_LENGTH", "`MAX_REQUEST_SIZE` (never enforced by the reference)"),
    _no("RATE_LIMIT_WINDOW_MS", _RATE),
    _no("RATE_LIMIT_MAX_REQUESTS", _RATE),
    _no("RATE_LIMIT_MAX_TOKENS", _RATE),
    _no("DOMAIN_RATE_LIMIT_WINDOW_MS", _RATE),
    _no("DOMAIN_RATE_LIMIT_MAX_REQUESTS", _RATE),
    _no("DOMAIN_RATE_LIMIT_MAX_TOKENS", _RATE),
    # --- logging and switches ----------------------------------------------------------------------
    _same("LOG_LEVEL", "`DEBUG=true` wins"),
    _alias("LOG_JSON", "LOG_FORMAT", "`true` is `LOG_FORMAT=json`"),
    _same("DEBUG"),
    _no("ENABLE_HEALTH_CHECKS", "nothing needed: `/health`, `/health/live` and `/health/ready` are always served"),
    _alias("ENABLE_METRICS", "METRICS_ENABLED"),
    _no("ENABLE_DASHBOARD", "the command: `nexus proxy` runs without the dashboard, `nexus serve` with it"),
    _no("MESSAGE_CACHE_SIZE", "`LINK_INDEX_SIZE` (recent requests the linker keeps in memory)"),
    _no("CREDENTIAL_CACHE_TTL", "nothing needed: credential files are re-read when they change on disk"),
    _no("CREDENTIAL_CACHE_SIZE", "nothing needed: credential files are re-read when they change on disk"),
    # --- dashboard ---------------------------------------------------------------------------------
    _same("DASHBOARD_CACHE_TTL"),
    _same("PROXY_API_URL", "the dashboard posts analysis requests there (docs/analysis.md)"),
    _no("ANTHROPIC_INPUT_COST_PER_MTOK", "nothing yet: the dashboard shows tokens, not prices"),
    _no("ANTHROPIC_OUTPUT_COST_PER_MTOK", "nothing yet: the dashboard shows tokens, not prices"),
    _no("DASHBOARD_DEV_USER_EMAIL", _SSO),
    _no("DASHBOARD_SSO_HEADERS", _SSO),
    _no("DASHBOARD_SSO_ALLOWED_DOMAINS", _SSO),
    _no("DASHBOARD_ALB_OIDC_ENABLED", _SSO),
    _no("GOOGLE_CLIENT_ID", "your oauth2-proxy's own settings; Nexus does not read them"),
    _no("GOOGLE_CLIENT_SECRET", "your oauth2-proxy's own settings; Nexus does not read them"),
    _no("OAUTH_PROXY_COOKIE_SECRET", "your oauth2-proxy's own settings; Nexus does not read them"),
    # --- notifications, telemetry, samples, Spark, client setup (docs/slack.md, telemetry.md, spark.md) -
    _alias("ENABLE_NOTIFICATIONS", "SLACK_ENABLED", "`false` turns Slack notifications off; `true` leaves the default"),
    *(
        _same(n)
        for n in (
            "SLACK_WEBHOOK_URL",
            "SLACK_CHANNEL",
            "SLACK_USERNAME",
            "SLACK_ICON_EMOJI",
            "SLACK_ENABLED",
            "TELEMETRY_ENDPOINT",
            "TELEMETRY_ENABLED",
            "SPARK_API_URL",
            "SPARK_API_KEY",
            "SPARK_ENABLED",
            "COLLECT_TEST_SAMPLES",
            "TEST_SAMPLES_DIR",
            "CLIENT_SETUP_DIR",
        )
    ),
    # --- AI analysis (docs/analysis.md) ------------------------------------------------------------
    *(
        _same(n)
        for n in (
            "AI_WORKER_ENABLED",
            "AI_WORKER_POLL_INTERVAL_MS",
            "AI_WORKER_MAX_CONCURRENT_JOBS",
            "AI_WORKER_JOB_TIMEOUT_MINUTES",
            "AI_ANALYSIS_MAX_RETRIES",
            "AI_ANALYSIS_REQUEST_TIMEOUT_MS",
            "AI_ESTIMATED_CHARS_PER_TOKEN",
            "AI_ANALYSIS_INPUT_TRUNCATION_TARGET_TOKENS",
            "AI_ANALYSIS_TRUNCATE_FIRST_N_TOKENS",
            "AI_ANALYSIS_TRUNCATE_LAST_M_TOKENS",
            "AI_ANALYSIS_PROJECT_ID",
            "ANTHROPIC_ANALYSIS_MODEL",
            "AI_ANALYSIS_PROXY_URL",
            "AI_ANALYSIS_API_KEY",
            "GEMINI_API_KEY",
            "GEMINI_API_URL",
            "GEMINI_MODEL_NAME",
        )
    ),
    _alias("AI_ANALYSIS_GEMINI_REQUEST_TIMEOUT_MS", "AI_ANALYSIS_REQUEST_TIMEOUT_MS", "the older reference's name"),
    _no("AI_ANALYSIS_RATE_LIMIT_CREATION", _AI_API),
    _no("AI_ANALYSIS_RATE_LIMIT_RETRIEVAL", _AI_API),
    _no("AI_ANALYSIS_PROMPT_VERSION", "nothing: one built-in prompt; a request's `customPrompt` for another"),
    *(
        _no(n, _AI_BUDGET)
        for n in (
            "AI_MAX_CONTEXT_TOKENS",
            "AI_MAX_PROMPT_TOKENS",
            "AI_MAX_PROMPT_TOKENS_BASE",
            "AI_TOKENIZER_SAFETY_MARGIN",
            "AI_TRUNCATION_STRATEGY",
            "AI_HEAD_MESSAGES",
            "AI_TAIL_MESSAGES",
        )
    ),
    _no("AI_ANALYSIS_ENABLE_PII_REDACTION", "nothing: keys are always redacted from the transcript"),
    _no("AI_ANALYSIS_ENABLE_PROMPT_INJECTION_PROTECTION", "nothing: the system prompt always says to ignore them"),
    _no("AI_ANALYSIS_ENABLE_OUTPUT_VALIDATION", "nothing: every reply is always validated"),
    _no("AI_ANALYSIS_ENABLE_AUDIT_LOGGING", "nothing: each analysis is stored as a request of type `analysis`"),
    # --- MCP prompt server (docs/mcp.md) -----------------------------------------------------------
    *(
        _same(n)
        for n in (
            "MCP_ENABLED",
            "MCP_GITHUB_OWNER",
            "MCP_GITHUB_REPO",
            "MCP_GITHUB_BRANCH",
            "MCP_GITHUB_TOKEN",
            "MCP_GITHUB_PATH",
            "MCP_SYNC_INTERVAL",
        )
    ),
    _no("MCP_GITHUB_WEBHOOK_SECRET", "`MCP_SYNC_INTERVAL` (polling) or `POST /api/mcp/sync`; no webhook"),
    _no("MCP_CACHE_TTL", _MCP_CACHE),
    _no("MCP_CACHE_SIZE", _MCP_CACHE),
    # --- scripts and leftovers ---------------------------------------------------------------------
    _no("GMAIL_OAUTH_CLIENT_FILE", "`nexus oauth login` (no mail-assisted relogin)"),
    _no("GMAIL_OAUTH_TOKEN_FILE", "`nexus oauth login` (no mail-assisted relogin)"),
    _no("GMAIL_AUTH_POLL_TIMEOUT_MS", "`nexus oauth login` (no mail-assisted relogin)"),
    _no("OAUTH_APPROVAL_TIMEOUT_MS", "`nexus oauth login` (no browser automation)"),
    _no("OAUTH_BROWSER_CHANNEL", "`nexus oauth login` (no browser automation)"),
    _no("CNP_WILDCARD_CREDENTIALS", "one credential file per project (wildcards were removed from the reference too)"),
    _no("CNP_RESOLUTION_CACHE_TTL", "nothing needed: unused by the reference as well"),
    _no("CNP_DEBUG_RESOLUTION", "`DEBUG`"),
)

#: Names of the parts built elsewhere, as the reference spelled them (shown in the docs).
_ELSEWHERE_NAMES: tuple[str, ...] = ()


def reference_vars() -> tuple[ReferenceVar, ...]:
    """The whole table: this module's rows, then the names handled by other parts of Nexus."""
    elsewhere = tuple(
        ReferenceVar(n, "elsewhere", "handled by its own feature (docs/migrating.md)") for n in _ELSEWHERE_NAMES
    )
    rows = tuple(r for r in _TABLE if not handled_elsewhere(r.name))
    return rows + elsewhere


REFERENCE_VARS: dict[str, ReferenceVar] = {r.name: r for r in reference_vars()}


# --- aliases: reference names the settings read ----------------------------------------------------

DB_DEFAULTS = {"DB_HOST": "localhost", "DB_PORT": "5432", "DB_NAME": "agent_prompttrain", "DB_USER": "postgres"}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def database_url_from_parts(env: Mapping[str, str]) -> str | None:
    """The reference's `DB_*` variables as one URL (None unless `DB_HOST` or `DB_NAME` is set)."""
    if not (env.get("DB_HOST") or env.get("DB_NAME")):
        return None
    part = {name: env.get(name) or default for name, default in DB_DEFAULTS.items()}
    password = env.get("DB_PASSWORD")
    auth = quote(part["DB_USER"], safe="") + (f":{quote(password, safe='')}" if password else "")
    host = part["DB_HOST"]
    name = quote(part["DB_NAME"], safe="")
    ssl = (env.get("DB_SSL") or "").strip().lower() in _TRUE
    if host.startswith("/"):
        # A unix socket directory (`/var/run/postgresql`), as node-postgres takes it: libpq wants it
        # as the `host` parameter; in the authority it would be read as part of the database name.
        query = f"host={quote(host, safe='')}&port={quote(part['DB_PORT'], safe='')}"
        return f"postgresql://{auth}@/{name}?{query}" + ("&sslmode=require" if ssl else "")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    url = f"postgresql://{auth}@{host}:{part['DB_PORT']}/{name}"
    if ssl:
        url += "?sslmode=require"
    return url


def _log_json(value: str) -> str:
    return "json" if value.strip().lower() in _TRUE else "text"


def _notifications(value: str) -> str | None:
    """`ENABLE_NOTIFICATIONS=false` turns Slack off; any other value leaves SLACK_ENABLED's default."""
    return "false" if value.strip().lower() in _FALSE else None


#: setting (field name) -> [(reference variable, conversion)]: read when the setting itself is not set.
ALIASES: dict[str, list[tuple[str, Callable[[str], Any]]]] = {
    "storage_batch_interval_ms": [("STORAGE_BATCH_INTERVAL", str)],
    "dashboard_api_key": [("INTERNAL_API_KEY", str)],
    "metrics_enabled": [("ENABLE_METRICS", str)],
    "log_format": [("LOG_JSON", _log_json)],
    "slack_enabled": [("ENABLE_NOTIFICATIONS", _notifications)],
    "ai_analysis_request_timeout_ms": [("AI_ANALYSIS_GEMINI_REQUEST_TIMEOUT_MS", str)],
}


def alias_source(field: str, env: Mapping[str, str]) -> str | None:
    """The reference variable a setting's value comes from, or None (unset, or set by its own name)."""
    if field.upper() in env:
        return None
    if field == "database_url":
        return "DB_HOST" if database_url_from_parts(env) else None
    return next((name for name, _ in ALIASES.get(field, []) if env.get(name)), None)


def apply_aliases(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """`data` (the settings' input, by field name) with each unset setting taken from its reference
    name when that is set. The Nexus name always wins."""
    out = dict(data)
    for field, sources in ALIASES.items():
        if out.get(field) not in (None, ""):
            continue
        for name, convert in sources:
            value = env.get(name)
            if value:
                out[field] = convert(value)
                break
    if not out.get("database_url"):
        url = database_url_from_parts(env)
        if url is not None:
            out["database_url"] = url
    return out


# --- the docs table ----------------------------------------------------------------------------------


def reference_markdown() -> str:
    """The section of docs/settings.md that lists every reference variable (generated, tested)."""
    lines = [
        "## Variables of the reference system",
        "",
        "Nexus starts with the environment of the system it replaces. Each of that system's variables is",
        "below with its Nexus equivalent. At start-up, Nexus prints one warning for each variable that is set",
        "but not supported, naming what to use instead, and one for each variable that looks like a",
        "misspelt Nexus setting. Where a reference name and its Nexus name are both set, the Nexus name",
        "wins. The table lives in `nexus/compat/reference_env.py`; regenerate this page with",
        "`nexus config --markdown`. Moving over step by step: [migrating.md](migrating.md).",
        "",
        "| reference variable | Nexus | note |",
        "|---|---|---|",
    ]
    for row in reference_vars():
        if row.status == "elsewhere":
            nexus = "handled elsewhere (its own feature)"
        elif row.status == "unsupported":
            nexus = f"not supported; instead: {row.nexus}"
        elif row.status == "alias":
            nexus = f"read as {row.nexus}"
        else:
            nexus = row.nexus
        lines.append(f"| `{row.name}` | {nexus} | {row.note} |")
    return "\n".join(lines) + "\n"
