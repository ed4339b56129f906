"""Reference implementation for tests only, not used in production: PostgreSQL COPY BINARY encoding.

Written from the PostgreSQL documentation ("COPY", binary format, and each type's send function) so
that the Rust encoder (`nexus._core.encode_copy_binary`) can be checked against it byte for byte.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
PG_EPOCH_OFFSET_US = 946_684_800_000_000
ELEMENT = {"text[]": ("text", 25), "varchar[]": ("text", 25), "bytea[]": ("bytea", 17), "uuid[]": ("uuid", 2950)}
ELEMENT |= {"int8[]": ("int8", 20), "bigint[]": ("int8", 20)}
ALIASES = {"varchar": "text", "smallint": "int2", "int": "int4", "integer": "int4", "bigint": "int8", "boolean": "bool"}


def _scalar(ty: str, v: object) -> bytes:
    ty = ALIASES.get(ty, ty)
    if ty == "jsonb":
        return b"\x01" + (v.encode() if isinstance(v, str) else bytes(v))  # type: ignore[arg-type]
    if ty in ("json", "bytea", "text"):
        if isinstance(v, str) and ty != "bytea":
            return v.encode()
        if isinstance(v, bytes):
            if ty == "text":
                v.decode()
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
        if ty == "timestamptz":
            return struct.pack(">q", v - PG_EPOCH_OFFSET_US)
        fmt = {"int2": ">h", "int4": ">i", "int8": ">q", "float8": ">d"}.get(ty)
        if fmt:
            return struct.pack(fmt, float(v) if ty == "float8" else v)
    elif isinstance(v, float) and ty == "float8":
        return struct.pack(">d", v)
    raise ValueError(f"a {type(v).__name__} value does not fit a {ty} column")


def _field(ty: str, v: object) -> bytes:
    if v is None:
        return struct.pack(">i", -1)
    if ty in ELEMENT:
        elem, oid = ELEMENT[ty]
        items = list(v)  # type: ignore[call-overload]
        if not items:
            data = struct.pack(">iii", 0, 0, oid)
        else:
            has_null = int(any(i is None for i in items))
            data = struct.pack(">iiiii", 1, has_null, oid, len(items), 1) + b"".join(_field(elem, i) for i in items)
    else:
        data = _scalar(ty, v)
    return struct.pack(">i", len(data)) + data


def encode_copy_binary(types: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    out = [SIGNATURE, struct.pack(">ii", 0, 0)]
    for r, row in enumerate(rows):
        if len(row) != len(types):
            raise ValueError(f"row {r} has {len(row)} values for {len(types)} columns")
        out.append(struct.pack(">h", len(types)))
        for c, (ty, v) in enumerate(zip(types, row, strict=True)):
            try:
                out.append(_field(ty, v))
            except (ValueError, struct.error, UnicodeDecodeError) as exc:
                raise ValueError(f"row {r}, column {c} ({ty}): {exc}") from None
    out.append(struct.pack(">h", -1))
    return b"".join(out)
