"""The official Anthropic SDK, unmodified, through the proxy: it must not notice the proxy is there."""

from __future__ import annotations

import anthropic
import pytest

from tests.harness.control import FakeControl

MODEL = "claude-sonnet-4-6"


def client(base_url: str, **kw: object) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key="sk-ant-api03-test-key", max_retries=0, **kw)


def test_create_matches_direct(proxy_url: str, upstream_url: str, fake: FakeControl) -> None:
    kwargs = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello there"}]}
    direct = client(upstream_url).messages.with_raw_response.create(**kwargs)
    proxied = client(proxy_url).messages.with_raw_response.create(**kwargs)
    d, p = direct.parse(), proxied.parse()
    assert p.content == d.content
    assert p.usage == d.usage
    assert p.stop_reason == d.stop_reason == "end_turn"
    assert proxied.headers["x-request-id"]
    assert proxied.headers["request-id"].startswith("req_")
    assert proxied.headers["anthropic-ratelimit-requests-limit"]
    sent = fake.requests()
    assert len(sent) == 2
    assert sent[0]["body"] == sent[1]["body"]  # the proxy forwarded exactly what the SDK sent


def test_stream_matches_direct(proxy_url: str, upstream_url: str) -> None:
    kwargs = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Stream please"}]}
    results = []
    for url in (upstream_url, proxy_url):
        with client(url).messages.stream(**kwargs) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        results.append((text, final.usage, final.stop_reason))
    assert results[0] == results[1]
    assert results[1][0]  # some text actually streamed


def test_tool_use_round_trip(proxy_url: str) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
    c = client(proxy_url)
    first = c.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=tools,
        messages=[{"role": "user", "content": 'Weather? [[use_tool:get_weather {"city": "Paris"}]]'}],
    )
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    with c.messages.stream(
        model=MODEL,
        max_tokens=64,
        tools=tools,
        messages=[{"role": "user", "content": 'Again [[use_tool:get_weather {"city": "Oslo"}]]'}],
    ) as stream:
        final = stream.get_final_message()
    streamed_call = next(b for b in final.content if b.type == "tool_use")
    assert streamed_call.input == {"city": "Oslo"}
    follow = c.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=tools,
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}]},
        ],
    )
    assert follow.stop_reason == "end_turn"


def test_count_tokens_and_models(proxy_url: str, upstream_url: str, fake: FakeControl) -> None:
    msgs = [{"role": "user", "content": "How many tokens is this?"}]
    direct = client(upstream_url).messages.count_tokens(model=MODEL, messages=msgs)
    proxied = client(proxy_url).messages.count_tokens(model=MODEL, messages=msgs)
    assert proxied.input_tokens == direct.input_tokens > 0
    page = client(proxy_url).models.list(limit=1)
    assert len(page.data) == 1
    seen = fake.requests()
    assert seen[-1]["path"] == "/v1/models" and "limit=1" in seen[-1]["query"]


@pytest.mark.parametrize(
    ("scenario", "exc"),
    [
        ("error:400", anthropic.BadRequestError),
        ("error:401", anthropic.AuthenticationError),
        ("error:403", anthropic.PermissionDeniedError),
        ("error:404", anthropic.NotFoundError),
        ("error:413", anthropic.APIStatusError),
        ("error:429", anthropic.RateLimitError),
        ("error:500", anthropic.InternalServerError),
        ("error:529", anthropic.APIStatusError),
    ],
)
def test_errors_surface_as_the_same_sdk_exception(
    scenario: str, exc: type[Exception], proxy_url: str, upstream_url: str, fake: FakeControl
) -> None:
    kwargs = {
        "model": MODEL,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "x"}],
        "extra_headers": {"x-fake-scenario": scenario},
    }
    outcomes = []
    for url in (upstream_url, proxy_url):
        with pytest.raises(exc) as info:
            client(url).messages.create(**kwargs)
        err = info.value
        assert isinstance(err, anthropic.APIStatusError)
        outcomes.append((type(err), err.status_code, err.body))
    assert outcomes[0][0] is outcomes[1][0]
    assert outcomes[0][1] == outcomes[1][1]
    assert outcomes[0][2]["error"]["type"] == outcomes[1][2]["error"]["type"]  # type: ignore[index]
    status = outcomes[1][1]
    upstream_calls = len(fake.requests()) - 1  # minus the direct call
    assert upstream_calls == (3 if status >= 500 else 1)  # 5xx/529 retried up to the limit, 4xx never
