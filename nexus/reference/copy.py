"""Reference implementation for tests only, not used in production: PostgreSQL COPY BINARY encoding.

Written from the PostgreSQL documentation ("COPY", binary format, and each type's send function) so
that the Rust encoder (`nexus._core.encode_copy_binary`) can be checked against it byte for byte,
including its safety rules: jsonb/json cells through `safe_json`, text through `safe_text`
(`nexus.reference.safe`), integers clamped to their column, and the `repairs` and `raw` pseudo columns.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence

from nexus.reference.safe import names, safe_json, safe_text

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
PG_EPOCH_OFFSET_US = 946_684_800_000_000
ELEMENT = {"text[]": ("text", 25), "varchar[]": ("text", 25), "bytea[]": ("bytea", 17), "uuid[]": ("uuid", 2950)}
ELEMENT |= {"int8[]": ("int8", 20), "bigint[]": ("int8", 20)}
ALIASES = {"varchar": "text", "smallint": "int2", "int": "int4", "integer": "int4", "bigint": "int8", "boolean": "bool"}
INT_RANGE = {"int2": (-(2**15), 2**15 - 1), "int4": (-(2**31), 2**31 - 1), "int8": (-(2**63), 2**63 - 1)}
NULL = struct.pack(">i", -1)


def _raw_bytes(v: str | bytes) -> bytes:
    """A cell's bytes as given; a str with lone surrogates as `surrogatepass` encodes it."""
    return v.encode("utf-8", "surrogatepass") if isinstance(v, str) else bytes(v)


def _scalar(ty: str, v: object, flags: set[str]) -> bytes:
    ty = ALIASES.get(ty, ty)
    if ty in ("jsonb", "json") and isinstance(v, str | bytes):
        out, repairs = safe_json(_raw_bytes(v))
        flags.update(repairs)
        return b"\x01" + out if ty == "jsonb" else out
    if ty == "text" and isinstance(v, str | bytes):
        out, repairs = safe_text(_raw_bytes(v))
        flags.update(repairs)
        return out
    if ty == "bytea" and isinstance(v, bytes):
        return v
    if ty == "uuid":
        if isinstance(v, str):
            return uuid.UUID(v).bytes
        if isinstance(v, bytes) and len(v) == 16:
            return v
    if isinstance(v, bool):
        if ty == "bool":
            return b"\x01" if v else b"\x00"
    elif isinstance(v, int):
        if ty in INT_RANGE:
            low, high = INT_RANGE[ty]
            if not low <= v <= high:
                flags.add("int_clamped")
            return struct.pack(">" + {"int2": "h", "int4": "i", "int8": "q"}[ty], min(max(v, low), high))
        if not -(2**63) <= v < 2**63:
            raise ValueError("integer out of the int8 range")
        if ty == "timestamptz":
            return struct.pack(">q", v - PG_EPOCH_OFFSET_US)
        if ty == "float8":
            return struct.pack(">d", float(v))
    elif isinstance(v, float) and ty == "float8":
        return struct.pack(">d", v)
    raise ValueError(f"a {type(v).__name__} value does not fit a {ty} column")


def _array(oid: int, fields: list[bytes], has_null: bool) -> bytes:
    if not fields:
        return struct.pack(">iii", 0, 0, oid)
    return struct.pack(">iiiii", 1, int(has_null), oid, len(fields), 1) + b"".join(fields)


def _with_length(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def _field(ty: str, v: object, flags: set[str]) -> bytes:
    if v is None:
        return NULL
    if ty in ELEMENT:
        elem, oid = ELEMENT[ty]
        items = list(v)  # type: ignore[call-overload]
        data = _array(oid, [_field(elem, i, flags) for i in items], any(i is None for i in items))
    else:
        data = _scalar(ty, v, flags)
    return _with_length(data)


def _repairs(given: object, flags: set[str]) -> bytes:
    """The `repairs` column: Python's names, then the row's, each once; NULL when there are none."""
    texts: list[bytes] = []
    for item in given or []:  # type: ignore[attr-defined]
        if not isinstance(item, str | bytes):
            raise ValueError("repair names must be str")
        texts.append(safe_text(_raw_bytes(item))[0])
    unique: list[bytes] = []
    for name in [*texts, *(n.encode() for n in names(flags))]:
        if name not in unique:
            unique.append(name)
    if not unique:
        return NULL
    return _with_length(_array(25, [_with_length(n) for n in unique], False))


def check_layout(types: Sequence[str]) -> None:
    for i, ty in enumerate(types):
        if ty == "repairs" and i != len(types) - 1:
            raise ValueError("a repairs column must be the last column (and there is at most one)")
        if ty == "raw" and (i == 0 or ALIASES.get(types[i - 1], types[i - 1]) not in ("jsonb", "json", "text")):
            raise ValueError("a raw column must follow a jsonb, json or text column")


def encode_copy_binary(types: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    check_layout(types)
    out = [SIGNATURE, struct.pack(">ii", 0, 0)]
    for r, row in enumerate(rows):
        if len(row) != len(types):
            raise ValueError(f"row {r} has {len(row)} values for {len(types)} columns")
        out.append(struct.pack(">h", len(types)))
        flags: set[str] = set()
        changed: bytes | None = None  # the previous cell's original when it was repaired
        for c, (ty, v) in enumerate(zip(types, row, strict=True)):
            try:
                if ty == "repairs":
                    out.append(_repairs(v, flags))
                elif ty == "raw":
                    if isinstance(v, bytes):
                        out.append(_with_length(v))  # given by Python: written as it is
                    elif v is not None:
                        raise ValueError("a raw column takes bytes or None (None: the encoder fills it)")
                    else:
                        out.append(NULL if changed is None else _with_length(changed))
                else:
                    cell: set[str] = set()
                    out.append(_field(ty, v, cell))
                    changed = _raw_bytes(v) if cell and isinstance(v, str | bytes) else None
                    flags |= cell
            except (ValueError, struct.error, UnicodeDecodeError) as exc:
                raise ValueError(f"row {r}, column {c} ({ty}): {exc}") from None
    out.append(struct.pack(">h", -1))
    return b"".join(out)
