"""`GET /openapi.json`: the API contract as an OpenAPI 3.1 document, generated from the declarations.

Paths and parameters come from the `Operation`s the handlers are served through, answer schemas from
the `msgspec` types the handlers build (`msgspec.json.schema_components`), so the document is what the
code does. `tests/test_api_contract.py` runs schemathesis against a real proxy with it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
import orjson

from nexus import __version__
from nexus.api import conversations, reference, requests, schemas, token_stats, usage
from nexus.api.contract import OPERATIONS, Operation

REF = "#/components/schemas/{name}"
#: Imported for their declarations (each module declares its operations when imported).
_DECLARING = (requests, conversations, usage, reference, token_stats)

ERRORS = {
    "400": "A parameter is unknown, repeated, malformed or out of range",
    "401": "`DASHBOARD_API_KEY` is set and no key was sent",
    "403": "Not this machine, or a wrong key",
    "404": "Nothing stored under that id",
    "429": "Too many failed key checks from this address",
    "500": "The proxy failed; the cause is in its log",
    "503": "Storage is unavailable (retry after `retry-after` seconds)",
}
SECURITY_SCHEMES = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "dashboardKey": {"type": "apiKey", "in": "header", "name": "X-Dashboard-Key"},
    "bearer": {"type": "http", "scheme": "bearer"},
}
DESCRIPTION = (
    "Read-only views of what Nexus stores, at the paths, parameters and field names of the reference "
    "system's API (camelCase fields beside Nexus's snake_case ones). With `DASHBOARD_API_KEY` set, every "
    "operation needs the key (`X-API-Key`, `X-Dashboard-Key` or `Authorization: Bearer`); without it only "
    "loopback clients without forwarding headers are served. Unknown query parameters are refused (400)."
)


def _parameter(p: Any, where: str, required: bool) -> dict[str, Any]:
    schema = {k: v for k, v in p.schema().items() if v is not None}
    out: dict[str, Any] = {"name": p.name, "in": where, "required": required, "schema": schema}
    out["description"] = p.description
    return out


def _operation(op: Operation, response: dict[str, Any]) -> dict[str, Any]:
    params = [_parameter(p, "path", True) for p in op.path_params]
    for p in op.params:
        param = _parameter(p, "query", p.required)
        if p.aliases:  # other spellings of the same parameter: given together, they must agree
            param["description"] += " Also accepted as " + ", ".join(f"`{a}`" for a in p.aliases) + "."
            param["x-aliases"] = list(p.aliases)
        params.append(param)
    error = {"content": {"application/json": {"schema": {"$ref": REF.format(name="Error")}}}}
    ok = {"description": op.summary, "content": {"application/json": {"schema": response}}}
    responses: dict[str, Any] = {"200": ok}
    for status, text in ERRORS.items():
        if status == "404" and not op.path_params:
            continue
        responses[status] = {"description": text, **error}
    description = op.description or op.summary
    if op.reference:
        description += f"\n\nReference system: `{op.reference}`."
    return {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": description,
        "parameters": params,
        "responses": responses,
    }


@cache
def document() -> dict[str, Any]:
    extra = [t for op in OPERATIONS for t in op.schema_types]
    types = [op.response for op in OPERATIONS if op.response_schema is None] + extra + [schemas.Error]
    generated, components = msgspec.json.schema_components(types, ref_template=REF)
    by_type = dict(zip(types, generated, strict=True))
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        response = op.response_schema(by_type.__getitem__) if op.response_schema else by_type[op.response]
        paths.setdefault(op.path, {})["get"] = _operation(op, response)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Nexus data API", "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
        "security": [{"apiKey": []}, {"dashboardKey": []}, {"bearer": []}, {}],
    }


@cache
def document_bytes() -> bytes:
    return orjson.dumps(document())
