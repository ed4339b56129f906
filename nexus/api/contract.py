"""The `/api/*` contract: each operation's path, parameters and answer type, declared once.

The same declaration checks a request (`read_args`: an unknown, repeated or conflicting parameter is a
400, never ignored), registers the route, and writes `/openapi.json` (`nexus.api.openapi`), so the
document cannot promise a parameter the code does not read or a field it does not write. Parameter
names are the reference system's (`projectId`, `accountId`, `limit`, `offset`, `dateFrom`...) with
their older spellings and Nexus's snake_case ones as aliases (`domain`, `trainId`, `project_id`).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

import msgspec
from psycopg_pool import AsyncConnectionPool

from nexus.api.params import MAX_VALUE, Query, bool_param, cursor_param, int_param, path_uuid, uuid_param
from nexus.errors import ProxyError

if TYPE_CHECKING:
    from nexus.api.table import RouteTable

Kind = Literal["int", "bool", "uuid", "text", "datetime", "cursor"]
#: Parsed parameters by their canonical name (path parameters too).
Args = dict[str, Any]
#: (pool, parsed parameters) -> an answer type of `nexus.api.schemas`
OpHandler = Callable[[AsyncConnectionPool, Args], Awaitable[Any]]

#: What a text parameter may hold: `check_query`'s rule (no control character, at most MAX_VALUE).
TEXT_PATTERN = "^[^\\u0000-\\u001f\\u007f]*$"
_CURSOR = re.compile(r"[0-9]{1,17}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,30})?)?([Zz]|[+-]\d{2}:\d{2})?)?", re.ASCII)
_PAST_MICROSECONDS = re.compile(r"(\.\d{6})\d+", re.ASCII)


@dataclass(frozen=True, slots=True)
class Param:
    """One query (or path) parameter: its name, accepted aliases, type and bounds."""

    name: str
    kind: Kind
    description: str
    aliases: tuple[str, ...] = ()
    default: int | None = None
    low: int = 0
    high: int = 0
    required: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def read(self, query: Query) -> Any:
        """The parsed value (None when absent and without default); 400 when malformed or when two
        spellings disagree."""
        given = {name: query[name] for name in self.names if query.get(name)}
        if self.kind == "text":  # an empty text filter is no filter, as the reference read it
            given = {name: [v for v in values if v] for name, values in given.items()}
            given = {name: values for name, values in given.items() if values}
        for name, values in given.items():
            if len(values) > 1:
                raise ProxyError(400, f"{name} was given more than once.")
        if len({values[0] for values in given.values()}) > 1:
            raise ProxyError(400, f"{' and '.join(given)} name the same parameter with different values.")
        if not given:
            if self.required:
                raise ProxyError(400, f"{self.name} is required.")
            return False if self.kind == "bool" else self.default
        raw = next(iter(given.values()))[0]
        return self.parse(raw)

    def parse(self, raw: str) -> Any:
        one = {self.name: [raw]}
        if self.kind == "int":
            return int_param(one, self.name, self.default or 0, self.low, self.high)
        if self.kind == "bool":
            return bool_param(one, self.name)
        if self.kind == "uuid":
            return uuid_param(one, self.name)
        if self.kind == "cursor":
            if not _CURSOR.fullmatch(raw):
                raise ProxyError(400, "before must be a cursor returned as next_cursor.")
            return cursor_param({"before": [raw]})
        if self.kind == "datetime":
            return parse_datetime(self.name, raw)
        return raw  # text: check_query already refused control characters and overlong values

    def schema(self) -> dict[str, Any]:
        if self.kind == "int":
            return {"type": "integer", "minimum": self.low, "maximum": self.high, "default": self.default}
        if self.kind == "bool":
            return {"type": "boolean", "default": False}
        if self.kind == "uuid":
            return {"type": "string", "format": "uuid"}
        if self.kind == "cursor":
            return {"type": "string", "pattern": f"^{_CURSOR.pattern}$"}
        if self.kind == "datetime":
            return {"type": "string", "format": "date-time"}
        return {"type": "string", "minLength": int(self.required), "maxLength": MAX_VALUE, "pattern": TEXT_PATTERN}


def parse_datetime(name: str, raw: str) -> datetime:
    """An ISO 8601 date or date-time; one without an offset is UTC (as the reference's database read it)."""
    try:
        if not _DATETIME.fullmatch(raw):
            raise ValueError(raw)
        # RFC 3339 allows any number of fraction digits; microseconds are what is kept
        at = datetime.fromisoformat(_PAST_MICROSECONDS.sub(r"\1", raw.upper()))
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        return at.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ProxyError(400, f"{name} must be an ISO 8601 date-time, got {raw[:40]!r}.") from None


# --- the parameters the reference's clients send, with every spelling they used ---------------------------
PROJECT = Param(
    "projectId",
    "text",
    "Only this project (the reference's `projectId`; `domain` in its older version, `trainId` briefly).",
    aliases=("project_id", "domain", "trainId", "train_id"),
)
ACCOUNT = Param("accountId", "text", "Only this account.", aliases=("account_id",))
MODEL = Param("model", "text", "Only this model.")
OFFSET = Param("offset", "int", "Rows to skip (the reference's pagination).", default=0, low=0, high=1_000_000)
BEFORE = Param("before", "cursor", "Keyset cursor: the `next_cursor` of the previous page (Nexus's pagination).")


def limit(default: int = 50, most: int = 500) -> Param:
    return Param("limit", "int", "Rows per page.", default=default, low=1, high=most)


@dataclass(frozen=True, slots=True)
class Operation:
    """One `GET` of the API: what it answers, what it reads, and what the reference called it."""

    path: str
    operation_id: str
    summary: str
    response: Any
    params: tuple[Param, ...] = ()
    path_params: tuple[Param, ...] = ()
    reference: str = ""
    description: str = ""
    #: Served by the proxy itself rather than by `nexus.api.routes` (`/token-stats`).
    proxy_route: bool = False
    #: The answer's schema when it is not one type (built by `nexus.api.openapi` from `schema_types`).
    response_schema: Callable[[Callable[[Any], dict[str, Any]]], dict[str, Any]] | None = None
    schema_types: tuple[Any, ...] = field(default_factory=tuple)

    def read_args(self, query: Query) -> Args:
        """Every parameter parsed; a name the operation does not know is a 400."""
        known = {name for p in self.params for name in p.names}
        unknown = sorted(name for name in query if name not in known)
        if unknown:
            accepted = ", ".join(p.name for p in self.params) or "none"
            raise ProxyError(
                400, f"Unknown query parameter {unknown[0][:40]!r} for GET {self.path}; accepted: {accepted}."
            )
        return {p.name: p.read(query) for p in self.params}


#: Every operation, in the order the document lists them (modules append theirs at import).
OPERATIONS: list[Operation] = []


def declare(op: Operation) -> Operation:
    OPERATIONS.append(op)
    return op


def to_wire(payload: Any) -> Any:
    """An answer type as JSON-ready builtins; datetimes and UUIDs are left for `dump_json` (orjson) to
    write as it always has."""
    return msgspec.to_builtins(payload, builtin_types=(datetime, date, UUID))


def serve(api: RouteTable, op: Operation, handler: OpHandler) -> None:
    """Route `op` to `handler`: parameters checked and parsed first, the answer typed."""
    if "{" not in op.path:

        async def exact(pool: AsyncConnectionPool, _: str, query: Query) -> Any:
            return to_wire(await handler(pool, op.read_args(query)))

        api.route(op.path, exact)
        return
    prefix = op.path[: op.path.index("{")]
    tables = _templates.setdefault(api, {})
    if prefix not in tables:
        tables[prefix] = []
        api.route(prefix, _dispatcher(tables[prefix]))
    tables[prefix].append((op, handler))


#: Per route table, the templated operations under each prefix (one prefix route dispatches them).
_templates: weakref.WeakKeyDictionary[RouteTable, dict[str, list[tuple[Operation, OpHandler]]]] = (
    weakref.WeakKeyDictionary()
)


def _dispatcher(table: list[tuple[Operation, OpHandler]]) -> Callable[..., Awaitable[Any]]:
    async def dispatch(pool: AsyncConnectionPool, rest: str, query: Query) -> Any:
        parts = rest.split("/")
        for op, handler in table:
            template = op.path[op.path.index("{") :].split("/")
            if len(template) != len(parts):
                continue
            if any(not t.startswith("{") and t != p for t, p in zip(template, parts, strict=True)):
                continue
            args = op.read_args(query)
            for t, p in zip(template, parts, strict=True):
                if t.startswith("{"):
                    spec = next(pp for pp in op.path_params if pp.name == t[1:-1])
                    args[spec.name] = path_value(spec, p)
            return to_wire(await handler(pool, args))
        raise ProxyError(404, f"No route for GET {table[0][0].path.split('{')[0]}{rest[:200]}.", "not_found_error")

    return dispatch


def path_value(spec: Param, raw: str) -> Any:
    if spec.kind == "uuid":
        return path_uuid(raw, spec.name.removesuffix("Id").removesuffix("_id") or spec.name)
    if not raw or len(raw) > MAX_VALUE or any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise ProxyError(400, f"{spec.name} is empty, has a control character or is too long.")
    return raw
