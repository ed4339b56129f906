"""Log lines: readable text by default, one JSON object per line with `LOG_FORMAT=json`.

While a request is served, every line carries its id (the `X-Request-ID` the client got), wherever
it is logged from: the proxy sets `request_id` (a context variable) when the request arrives, and
asyncio copies the context into every task the request starts, so a line from a background link
lookup is tagged too. Lines from other threads (the storage writer) have no request.

Secrets never reach a log line: the code never logs one, and as a second line of defence the
formatter masks anything shaped like an Anthropic key or token, a Nexus client key, or a bearer
credential before the line is written.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

#: The id of the request being served in this context (None outside a request).
request_id: ContextVar[str | None] = ContextVar("nexus_request_id", default=None)

_SECRETS = re.compile(
    r"(sk-ant-[a-z0-9]{2,8}-)[A-Za-z0-9_\-]{8,}"  # Anthropic API keys and OAuth tokens
    r"|(cnp_[a-z]+_)[A-Za-z0-9_\-]{8,}"  # Nexus client keys
    r"|((?:bearer|basic)\s+)[A-Za-z0-9._~+/=\-]{8,}",  # any Authorization credential
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Keep the recognisable prefix of a secret, never the secret."""
    if "sk-ant-" not in text and "cnp_" not in text and "earer" not in text and "asic" not in text:
        return text
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + "[redacted]", text)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "request_id", "service", "pid", ...}` per line."""

    def __init__(self, *args: Any, service: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.service = service or os.environ.get("NEXUS_SERVICE", "nexus")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "service": self.service,
            "pid": record.process,
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    """`[level] logger: message (request <id>)`, secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"[{record.levelname.lower()}] {record.name}: {record.getMessage()}"
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid is not None:
            line += f" (request {rid})"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def formatter(log_format: str, service: str) -> logging.Formatter:
    return JsonFormatter(service=service) if log_format == "json" else TextFormatter()


def configure(log_format: str, service: str, *, debug: bool = False, level: str | None = None) -> None:
    """Route every log line of this process through one stderr handler of the chosen format; `level`
    (LOG_LEVEL) sets the lowest level shown, `debug` (DEBUG) overrides it."""
    os.environ["NEXUS_SERVICE"] = service  # worker processes name themselves the same way
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_nexus", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, service))
    handler._nexus = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.getLevelName((level or "warning").upper()))


def granian_config(log_format: str) -> dict[str, Any] | None:
    """Granian's own log configuration for its workers in JSON mode (None: its default text)."""
    if log_format != "json":
        return None
    json_formatter = {"()": "nexus.observability.logs.JsonFormatter"}
    return {
        "formatters": {"generic": json_formatter, "access": json_formatter},
        "handlers": {
            "console": {"formatter": "generic", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        },
    }


def emit(message: str, log_format: str, service: str, level: str = "info") -> None:
    """A start-up line from a command (before any logging is set up): plain text, or JSON."""
    if log_format != "json":
        print(message, file=sys.stderr, flush=True)
        return
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": "nexus",
        "message": redact(message),
        "service": service,
        "pid": os.getpid(),
    }
    print(orjson.dumps(entry).decode(), file=sys.stderr, flush=True)
