"""The MCP messages this server answers, as JSON-RPC 2.0: pure functions from a request body to a reply.

Wire format as the Model Context Protocol specifies it (revisions 2024-11-05 to 2025-11-25) and the
official SDK (`mcp` on PyPI) speaks it; the SDK's own types are not imported here because `mcp_types`
builds hundreds of pydantic models at import (about a second per worker, measured), for a server that
answers four methods. The tests check every answer with the SDK's client, which validates it.

- `initialize`: the client's `protocolVersion` when this server supports it, else the newest one it
  does (the client then decides whether it can go on); capabilities: prompts only.
- `ping`, `prompts/list`, `prompts/get` (`name`, or the reference system's `promptId` / `id`;
  `arguments` a mapping of strings). Missing required arguments, unknown arguments of a prompt that
  declares its arguments, and unknown prompts are `-32602` (invalid params), as the specification
  says; an unknown method is `-32601` (so the SDK's `server/discover` probe falls back to
  `initialize`).
- A body that is not JSON is `-32700`, one that is not a JSON-RPC 2.0 request `-32600` (both with
  HTTP 400, as the SDK's server does); batches (JSON arrays, dropped from MCP in 2025-06-18) are refused.
- Notifications and responses from the client need no answer: HTTP 202.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from nexus import __version__
from nexus.mcp.prompts import Prompt, PromptRegistry
from nexus.mcp.templates import MAX_ARGUMENT_CHARS, TemplateError

log = logging.getLogger("nexus.mcp")

#: Protocol revisions reachable through `initialize`, oldest to newest (the SDK's handshake versions).
PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_VERSION = PROTOCOL_VERSIONS[-1]
#: What a request without an `MCP-Protocol-Version` header is taken to speak (the specification's rule).
DEFAULT_VERSION = "2025-03-26"
SERVER_INFO = {"name": "claude-nexus-mcp-server", "title": "Nexus prompts", "version": __version__}
INSTRUCTIONS = "Prompt templates shared by this team through the Nexus gateway."

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

MAX_ID_CHARS = 256


class RpcError(Exception):
    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True, slots=True)
class Reply:
    """What goes back over HTTP: a status and, unless 202, one JSON-RPC message."""

    status: int
    message: dict[str, Any] | None
    #: The protocol revision agreed by an `initialize` (echoed as a header).
    version: str | None = None


def error_message(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def handle(body: bytes, registry: PromptRegistry, header_version: str | None = None) -> Reply:
    """One POSTed body to its reply; never raises for anything a client sends. `header_version` is
    the request's `MCP-Protocol-Version` header: after `initialize`, one this server does not speak
    is refused with 400, as the specification asks."""
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Reply(400, error_message(None, PARSE_ERROR, "Parse error: the body is not JSON."))
    if isinstance(msg, list):
        return Reply(400, error_message(None, INVALID_REQUEST, "Invalid Request: batches are not supported."))
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        return Reply(400, error_message(None, INVALID_REQUEST, "Invalid Request: expected a JSON-RPC 2.0 object."))
    method = msg.get("method")
    has_id = "id" in msg
    if method is None and has_id and ("result" in msg or "error" in msg):
        return Reply(202, None)  # a response to a server request: this server sends none, nothing to do
    if not isinstance(method, str) or not method:
        return Reply(400, error_message(_safe_id(msg), INVALID_REQUEST, "Invalid Request: `method` must be a string."))
    if not has_id:
        return Reply(202, None)  # a notification (`notifications/initialized`, `.../cancelled`): accepted
    request_id = msg["id"]
    if not _valid_id(request_id):
        return Reply(400, error_message(None, INVALID_REQUEST, "Invalid Request: `id` must be a string or an integer."))
    if method != "initialize" and header_version is not None and header_version not in PROTOCOL_VERSIONS:
        shown = ", ".join(PROTOCOL_VERSIONS)
        message = f"Bad Request: unsupported MCP-Protocol-Version {header_version[:40]!r} (supported: {shown})."
        return Reply(400, error_message(request_id, INVALID_REQUEST, message))
    params = msg.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return Reply(200, error_message(request_id, INVALID_PARAMS, "Invalid params: `params` must be an object."))
    try:
        result, version = _dispatch(method, params, registry)
    except RpcError as exc:
        return Reply(exc.status, error_message(request_id, exc.code, exc.message))
    except Exception:  # a bug must not take the worker's other requests with it
        log.exception("mcp: %s failed", method[:64])
        return Reply(200, error_message(request_id, INTERNAL_ERROR, "Internal error."))
    return Reply(200, {"jsonrpc": "2.0", "id": request_id, "result": result}, version)


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**53) < value < 2**53
    return isinstance(value, str) and len(value) <= MAX_ID_CHARS


def _safe_id(msg: dict[str, Any]) -> Any:
    value = msg.get("id")
    return value if _valid_id(value) else None


def _dispatch(method: str, params: dict[str, Any], registry: PromptRegistry) -> tuple[dict[str, Any], str | None]:
    if method == "initialize":
        return _initialize(params)
    if method == "ping":
        return {}, None
    if method == "prompts/list":
        return {"prompts": [p.wire() for p in registry.prompts().values()]}, None
    if method == "prompts/get":
        return _get(params, registry), None
    raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method[:100]}")


def _initialize(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    asked = params.get("protocolVersion")
    if not isinstance(asked, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: `protocolVersion` must be a string.")
    version = asked if asked in PROTOCOL_VERSIONS else LATEST_VERSION
    result = {
        "protocolVersion": version,
        "capabilities": {"prompts": {"listChanged": False}},
        "serverInfo": SERVER_INFO if version >= "2025-06-18" else {k: SERVER_INFO[k] for k in ("name", "version")},
        "instructions": INSTRUCTIONS,
    }
    return result, version


def _get(params: dict[str, Any], registry: PromptRegistry) -> dict[str, Any]:
    name = next((params[k] for k in ("name", "promptId", "id") if k in params), None)
    if not isinstance(name, str) or not name:
        raise RpcError(INVALID_PARAMS, "Invalid params: `name` (the prompt's name) is required.")
    prompt = registry.prompts().get(name)
    if prompt is None:
        raise RpcError(INVALID_PARAMS, f"Invalid params: no prompt named {name[:128]!r}.")
    arguments = _arguments(params.get("arguments"), prompt)
    try:
        text = prompt.template.render(arguments)
    except TemplateError as exc:
        raise RpcError(INTERNAL_ERROR, f"Internal error: prompt {name!r}: {exc}") from None
    result: dict[str, Any] = {"messages": [{"role": "user", "content": {"type": "text", "text": text}}]}
    if prompt.description:
        result["description"] = prompt.description
    return result


def _arguments(raw: Any, prompt: Prompt) -> dict[str, str]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: `arguments` must be an object of strings.")
    known = {a.name for a in prompt.arguments}
    out: dict[str, str] = {}
    for key, value in raw.items():
        if prompt.declared and key not in known:
            shown = ", ".join(sorted(known)) or "none"
            raise RpcError(INVALID_PARAMS, f"Invalid params: unknown argument {key[:64]!r} (declared: {shown}).")
        if not isinstance(value, str):
            raise RpcError(INVALID_PARAMS, f"Invalid params: argument {key[:64]!r} must be a string.")
        if len(value) > MAX_ARGUMENT_CHARS:
            raise RpcError(
                INVALID_PARAMS, f"Invalid params: argument {key[:64]!r} is longer than {MAX_ARGUMENT_CHARS} characters."
            )
        if key in known:  # an undeclared name is never seen by the template
            out[key] = value
    missing = [a.name for a in prompt.arguments if a.required and not out.get(a.name)]
    if missing:
        raise RpcError(INVALID_PARAMS, f"Invalid params: missing required argument(s): {', '.join(missing)}.")
    return out


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)
