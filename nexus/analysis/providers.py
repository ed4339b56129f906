"""The models an analysis can ask: Claude through this gateway (the default), or Gemini.

Each provider sends one request and returns the reply's text and token counts; what the text says is
`schema`'s business. Replies are read with a size cap (a hostile or broken server cannot make the
worker hold megabytes) and within `AI_ANALYSIS_REQUEST_TIMEOUT_MS`. Any failure is a `ProviderError`
with a short reason that is safe to store: it never contains a key (Gemini's key travels in a header,
not in the URL, so no error text or log line that names the URL can show it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import orjson
from pyreqwest.client import Client, ClientBuilder

from nexus.analysis import marker
from nexus.settings import Settings

#: Largest response body read from a provider.
MAX_BODY_BYTES = 1024 * 1024
ANTHROPIC_VERSION = "2023-06-01"


class ProviderError(Exception):
    """A failed call (retried by the worker); `raw` is the reply text when there was one."""

    def __init__(self, message: str, raw: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw


@dataclass(slots=True)
class ModelReply:
    text: str
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    request_id: str | None = None


class Provider(Protocol):
    name: str
    model: str

    async def ask(self, system: str, user: str, job_id: int, token: str) -> ModelReply: ...

    async def close(self) -> None: ...


def _client(timeout_ms: int) -> Client:
    return (
        ClientBuilder()
        .timeout(timedelta(milliseconds=timeout_ms))
        .connect_timeout(timedelta(milliseconds=min(timeout_ms, 10_000)))
        .follow_redirects(False)
        .build()
    )


async def _post(client: Client, url: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes, Any]:
    """POST, reading at most MAX_BODY_BYTES of the answer; (status, body, response headers)."""
    try:
        request = client.post(url).headers(headers).body_bytes(body).streamed_read_buffer_limit(0).build_streamed()
        async with request as response:
            status, got, size = response.status, [], 0
            reader = response.body_reader
            while (chunk := await reader.read_chunk()) is not None:
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ProviderError(f"the answer is larger than {MAX_BODY_BYTES} bytes")
                got.append(bytes(chunk))
            return status, b"".join(got), response.headers
    except ProviderError:
        raise
    except TimeoutError:
        raise ProviderError("the model did not answer in time") from None
    except Exception as exc:  # pyreqwest's connection, timeout and protocol errors
        name = exc.__class__.__name__
        raise ProviderError(f"the model could not be reached ({'timeout' if 'Timeout' in name else name})") from None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None


def _error_text(status: int, body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
        message = parsed.get("error", {}).get("message") if isinstance(parsed, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    detail = f": {str(message)[:200]}" if isinstance(message, str) else ""
    return f"the model answered HTTP {status}{detail}"


class ClaudeThroughGateway:
    """`POST {AI_ANALYSIS_PROXY_URL}/v1/messages` as project AI_ANALYSIS_PROJECT_ID, marked as an analysis."""

    name = "claude"

    def __init__(self, settings: Settings) -> None:
        self.url = settings.analysis_proxy_url.rstrip("/") + "/v1/messages"
        self.model = settings.anthropic_analysis_model
        self.project = settings.ai_analysis_project_id or "default"
        self.api_key = settings.ai_analysis_api_key
        self.max_tokens = settings.ai_analysis_max_output_tokens
        self.client = _client(settings.ai_analysis_request_timeout_ms)

    async def ask(self, system: str, user: str, job_id: int, token: str) -> ModelReply:
        body = orjson.dumps(
            {
                "model": self.model,
                "max_tokens": self.max_tokens,
                "system": system,
                "messages": [{"role": "user", "content": user}],
            }
        )
        headers = [
            ("content-type", "application/json"),
            ("anthropic-version", ANTHROPIC_VERSION),
            ("msl-project-id", self.project),
            (marker.HEADER, marker.header_value(job_id, token)),
        ]
        if self.api_key:
            headers.append(("x-api-key", self.api_key))
        status, raw, response_headers = await _post(self.client, self.url, headers, body)
        request_id = response_headers.get("x-request-id")
        if status != 200:
            raise ProviderError(_error_text(status, raw))
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProviderError("the gateway's answer is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise ProviderError("the gateway's answer is not a message")
        text = "".join(
            str(b.get("text", "")) for b in message["content"] if isinstance(b, dict) and b.get("type") == "text"
        )
        usage: dict[str, Any] = message["usage"] if isinstance(message.get("usage"), dict) else {}
        model = message.get("model") if isinstance(message.get("model"), str) else self.model
        return ModelReply(
            text, str(model)[:100], _int(usage.get("input_tokens")), _int(usage.get("output_tokens")), request_id
        )

    async def close(self) -> None:
        await self.client.close()


class Gemini:
    """`POST {GEMINI_API_URL}/{model}:generateContent` with the key in `x-goog-api-key`."""

    name = "gemini"

    def __init__(self, settings: Settings) -> None:
        self.model = settings.gemini_model_name
        self.url = f"{settings.gemini_api_url.rstrip('/')}/{self.model}:generateContent"
        self.api_key = settings.gemini_api_key or ""
        self.max_tokens = settings.ai_analysis_max_output_tokens
        self.client = _client(settings.ai_analysis_request_timeout_ms)

    async def ask(self, system: str, user: str, job_id: int, token: str) -> ModelReply:
        body = orjson.dumps(
            {
                "systemInstruction": {"parts": [{"text": system}]},
                "contents": [{"role": "user", "parts": [{"text": user}]}],
                "generationConfig": {
                    "maxOutputTokens": self.max_tokens,
                    "temperature": 0.1,
                    "responseMimeType": "application/json",
                },
            }
        )
        headers = [("content-type", "application/json"), ("x-goog-api-key", self.api_key)]
        status, raw, _ = await _post(self.client, self.url, headers, body)
        if status != 200:
            raise ProviderError(_error_text(status, raw))
        try:
            answer = orjson.loads(raw)
            candidate = answer["candidates"][0]
            parts = candidate["content"]["parts"]
            text = "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            raise ProviderError("Gemini's answer has no candidate text") from None
        usage: dict[str, Any] = answer["usageMetadata"] if isinstance(answer.get("usageMetadata"), dict) else {}
        return ModelReply(
            text, self.model, _int(usage.get("promptTokenCount")), _int(usage.get("candidatesTokenCount"))
        )

    async def close(self) -> None:
        await self.client.close()


def build_provider(settings: Settings) -> Provider:
    if settings.ai_analysis_provider == "gemini":
        return Gemini(settings)
    return ClaudeThroughGateway(settings)
