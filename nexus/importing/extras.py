"""The reference's small tables: projects and conversation analyses, copied without their secrets.

Both are small (one row per project, per analysed branch), so they are read whole and inserted row by
row, each in its own savepoint with `ON CONFLICT DO NOTHING`: a second run adds nothing, and a row
PostgreSQL refuses (a date or number that is not one) is counted failed without stopping the others.
Never copied: a project's Slack webhook URL and its `msl_` key (both credentials), the client keys of
`project_api_keys`, and every token of `credentials` (see `secrets_left`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from nexus.importing import source
from nexus.importing.source import Layout

PROJECT_COLUMNS = (
    "project_id",
    "name",
    "default_account_id",
    "is_private",
    "disabled",
    "slack_enabled",
    "slack_channel",
    "system_prompt_enabled",
    "system_prompt",
    "created_at",
    "updated_at",
)
ANALYSIS_COLUMNS = (
    "conversation_id",
    "branch_id",
    "status",
    "model_used",
    "analysis_content",
    "analysis_data",
    "raw_response",
    "error_message",
    "retry_count",
    "prompt_tokens",
    "completion_tokens",
    "processing_duration_ms",
    "custom_prompt",
    "generated_at",
    "completed_at",
    "created_at",
    "updated_at",
)
#: How each column's text is cast on insert (text columns need none).
CASTS = {
    "is_private": "boolean",
    "disabled": "boolean",
    "slack_enabled": "boolean",
    "system_prompt_enabled": "boolean",
    "system_prompt": "jsonb",
    "analysis_data": "jsonb",
    "raw_response": "jsonb",
    "retry_count": "int",
    "prompt_tokens": "int",
    "completion_tokens": "int",
    "processing_duration_ms": "int",
    "generated_at": "timestamptz",
    "completed_at": "timestamptz",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "conversation_id": "uuid",
}


@dataclass(slots=True)
class TableCounts:
    read: int = 0
    imported: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _insert(
    conn: psycopg.Connection[Any], table: str, columns: tuple[str, ...], rows: list[dict[str, Any]], origin: str
) -> TableCounts:
    counts = TableCounts(read=len(rows))
    names = ", ".join(f'"{c}"' for c in (*columns, "source"))
    values = ", ".join(f"%s::{CASTS[c]}" if c in CASTS else "%s" for c in (*columns, "source"))
    statement = f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT DO NOTHING"  # noqa: S608 (constants)
    for row in rows:
        label = " ".join(str(row.get(c)) for c in columns[:2])
        problem = _problem(table, row)
        if problem:
            counts.failed.append((label, problem))
            continue
        try:
            with conn.transaction():
                cur = conn.execute(statement, (*(row.get(c) for c in columns), origin))  # type: ignore[arg-type]
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            counts.failed.append((label, str(exc).splitlines()[0][:200]))
            continue
        if cur.rowcount:
            counts.imported += 1
        else:
            counts.skipped += 1
    conn.commit()
    return counts


def _problem(table: str, row: dict[str, Any]) -> str | None:
    if table == "reference_projects":
        return None if (row.get("project_id") or "").strip() else "project_id is empty"
    try:
        uuid.UUID(str(row.get("conversation_id")))
    except ValueError:
        return "conversation_id is not a UUID"
    if not row.get("branch_id"):
        row["branch_id"] = "main"  # the reference's default
    return None


def import_projects(
    src: psycopg.Connection[Any], lay: Layout, dst: psycopg.Connection[Any], origin: str
) -> TableCounts:
    rows = source.table_rows(src, lay, "projects", PROJECT_COLUMNS)
    return _insert(dst, "reference_projects", PROJECT_COLUMNS, rows, origin)


def import_analyses(
    src: psycopg.Connection[Any], lay: Layout, dst: psycopg.Connection[Any], origin: str
) -> TableCounts:
    rows = source.table_rows(src, lay, "conversation_analyses", ANALYSIS_COLUMNS)
    return _insert(dst, "reference_analyses", ANALYSIS_COLUMNS, rows, origin)


#: Analyses with a result: the only ones handed to Nexus's own analyses. A reference job still pending
#: would make Nexus's worker call a model (and bill it) for a request made long ago; it is left for the
#: user to request again.
FINISHED = ("completed", "failed")


def offer_analyses(dst: psycopg.Connection[Any], origin: str) -> tuple[int, int]:
    """Copy the finished analyses of the reference `origin` into Nexus's `conversation_analyses` (AI
    analysis), where that table exists, so the dashboard shows them on their conversations; Nexus's own
    analysis of the same branch wins. Only the columns both tables have are copied, each cast to Nexus's
    type. Returns (copied, left as pending or processing): of this reference only, not of another one
    imported before into the same database."""
    found = dst.execute("SELECT to_regclass('conversation_analyses') IS NOT NULL").fetchone()
    if not found or not found[0]:
        dst.commit()
        return 0, 0
    types = dict(
        dst.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = 'conversation_analyses'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
        ).fetchall()
    )
    columns = [c for c in ANALYSIS_COLUMNS if c in types]  # conversation_id first
    if columns[:2] != ["conversation_id", "branch_id"]:
        dst.commit()
        return 0, 0
    select = ", ".join(f'"{c}"::text' for c in columns)
    rows = dst.execute(
        f"SELECT {select} FROM reference_analyses WHERE source = %s",  # noqa: S608 (constant columns)
        (origin,),
    ).fetchall()
    status = columns.index("status") if "status" in columns else None
    copied = left = 0
    for row in rows:
        if status is not None and row[status] not in FINISHED:
            left += 1
            continue
        # only the values present, so a NOT NULL column of Nexus's table gets its own default
        given = [(c, v) for c, v in zip(columns, row, strict=True) if v is not None]
        if "project_id" in types:  # Nexus's analyses name the conversation's project
            project = dst.execute(
                "SELECT project_id FROM conversations WHERE conversation_id = %s::uuid", (row[0],)
            ).fetchone()
            if project is not None:
                given.append(("project_id", project[0]))
        names = ", ".join(f'"{c}"' for c, _ in given)
        values = ", ".join(f"%s::{types[c]}" for c, _ in given)
        statement = f"INSERT INTO conversation_analyses ({names}) VALUES ({values}) ON CONFLICT DO NOTHING"  # noqa: S608
        try:
            with dst.transaction():
                copied += dst.execute(statement, [v for _, v in given]).rowcount  # type: ignore[arg-type]
        except (psycopg.DataError, psycopg.IntegrityError):
            continue  # a value Nexus's table refuses: the analysis stays in reference_analyses
    dst.commit()
    return copied, left


@dataclass(slots=True)
class SecretsLeft:
    """What holds secrets in the reference and was not copied (counts and names only)."""

    credential_accounts: list[str] = field(default_factory=list)
    client_keys: int = 0
    project_keys: int = 0
    slack_webhooks: int = 0


def secrets_left(src: psycopg.Connection[Any], lay: Layout) -> SecretsLeft:
    left = SecretsLeft(credential_accounts=source.credential_accounts(src, lay))
    left.client_keys = source.count_table(src, lay, "project_api_keys")
    for row in source.table_rows(src, lay, "projects", ("api_key", "slack_webhook_url")):
        left.project_keys += 1 if row.get("api_key") else 0
        left.slack_webhooks += 1 if row.get("slack_webhook_url") else 0
    return left
