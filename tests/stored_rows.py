"""Reading back a row the Rust builder encoded (`records.build_batch`), for tests that check a cell."""

from __future__ import annotations

import struct

from nexus._core import copy_row_field, copy_rows
from nexus.storage.records import REQUEST_COLUMNS, ExchangeRecord, build_batch


def _text_array(data: bytes) -> list[str]:
    dims = struct.unpack_from(">i", data, 0)[0]
    if dims == 0:
        return []
    count = struct.unpack_from(">i", data, 12)[0]
    at, out = 20, []
    for _ in range(count):
        size = struct.unpack_from(">i", data, at)[0]
        out.append(data[at + 4 : at + 4 + size].decode())
        at += 4 + size
    return out


def decode(ty: str, data: bytes | None) -> object:
    """A cell as Python sees it: ints, text, repair names; jsonb as its JSON text; others as bytes."""
    if data is None:
        return None
    if ty in ("int2", "int4", "int8"):
        return int.from_bytes(data, "big", signed=True)
    if ty == "bool":
        return data == b"\x01"
    if ty == "text":
        return data.decode()
    if ty == "jsonb":
        return data[1:]
    if ty in ("repairs", "text[]"):
        return _text_array(data)
    return data


def stored_cells(rec: ExchangeRecord) -> dict[str, object]:
    """The `api_requests` cells the writer stores for `rec`, by column name."""
    (row,) = copy_rows(build_batch([rec]).requests)
    return {name: decode(ty, copy_row_field(row, i)) for i, (name, ty) in enumerate(REQUEST_COLUMNS)}
