"""MCP prompt server, in process: templates, prompt files, the registry's reloads, and JSON-RPC answers."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.mcp import protocol
from nexus.mcp.prompts import MAX_FILE_BYTES, NAME, PromptFileError, PromptRegistry, parse_prompt, prompt_name
from nexus.mcp.templates import MAX_ARGUMENT_CHARS, MAX_TEMPLATE_CHARS, Template, TemplateError, variables

REVIEW = b"""
name: Code review
description: Review a file
template: |
  Review {{file}}{{#if focus}} for {{focus}}{{else}} in general{{/if}}.
arguments:
  - name: file
    description: The file to review
    required: true
  - name: focus
"""


# --- templates ---------------------------------------------------------------------------------


def test_values_are_inserted_once_as_text_without_html_escaping() -> None:
    t = Template("A {{a}} B {{{b}}} C {{missing}}.")
    assert t.render({"a": "{{b}} <x> & 'q'", "b": '"y"'}) == "A {{b}} <x> & 'q' B \"y\" C ."


def test_blocks_choose_on_presence() -> None:
    t = Template("{{#if x}}yes {{x}}{{else}}no{{/if}}{{#unless y}} and no y{{/unless}}")
    assert t.render({"x": "1"}) == "yes 1 and no y"
    assert t.render({"y": "2"}) == "no"


def test_python_attributes_are_not_reachable() -> None:
    t = Template("[{{__class__}}][{{a.__class__}}][{{a.upper}}][{{lookup a '__len__'}}]")
    assert t.render({"a": "text"}) == "[][][][]"


@pytest.mark.parametrize(
    "source",
    [
        "{{#if a}}never closed",
        "{{> partial}}",
        "{{log a}}",
        "{{unknownhelper a}}",
        "{{#each this}}{{/each}}{{#each this}}{{/each}}{{#each this}}{{/each}}",
        "{{#if a}}" * 40 + "x" + "{{/if}}" * 40,
        "x" * (MAX_TEMPLATE_CHARS + 1),
    ],
)
def test_templates_that_cannot_be_served_are_refused_with_a_reason(source: str) -> None:
    with pytest.raises(TemplateError):
        Template(source).check(["a"])


def test_a_template_whose_output_would_explode_is_refused_at_load() -> None:
    Template("{{a}}" * 60).check(["a"])  # 60 x 64 KiB fits in 4 MiB
    with pytest.raises(TemplateError, match="could reach"):
        Template("{{a}}" * 70).check(["a"])
    # two nested loops over the arguments, each printing every value: refused without rendering it
    nested = "{{#each this}}{{#each ../this}}{{this}}{{/each}}{{/each}}"
    with pytest.raises(TemplateError, match="could reach"):
        Template(nested).check([f"a{i}" for i in range(32)])


@pytest.mark.parametrize(
    "source",
    [
        # an inline partial that includes the previous one twice: 2^40 characters with no argument at all
        '{{#*inline "p0"}}xx{{/inline}}'
        + "".join(f'{{{{#*inline "p{i}"}}}}{{{{> p{i - 1}}}}}{{{{> p{i - 1}}}}}{{{{/inline}}}}' for i in range(1, 41))
        + "{{> p40}}",
        # `{{#each}}` spelled with spaces: the engine runs it, the limit must count it
        "{{ #each @root}}" * 30 + "{{this}}" + "{{/each}}" * 30,
        "{{# each @root}}" * 30 + "{{this}}" + "{{/each}}" * 30,
        "{{~ #each @root}}" * 30 + "{{this}}" + "{{/each}}" * 30,
    ],
)
def test_template_bombs_are_refused_before_any_trial_render(source: str) -> None:
    """Before the fix these compiled and the load-time trial render ran for hours (or filled memory),
    blocking the proxy worker that loaded the prompt file."""
    with pytest.raises(TemplateError, match=r"partials|#each"):
        Template(source)


def test_variables_are_read_off_the_template() -> None:
    assert variables("{{a}} {{{b}}} {{#if c}}{{a}}{{else}}{{/if}} {{this}} {{d.e}} {{~f~}}") == ["a", "b", "c", "f"]


# --- prompt files ------------------------------------------------------------------------------


def test_a_prompt_file_declares_its_arguments() -> None:
    p = parse_prompt("review", REVIEW)
    assert (p.name, p.title, p.description) == ("review", "Code review", "Review a file")
    assert [(a.name, a.required) for a in p.arguments] == [("file", True), ("focus", False)]
    assert p.wire()["arguments"][0] == {"name": "file", "description": "The file to review", "required": True}


def test_undeclared_arguments_are_inferred_as_optional() -> None:
    p = parse_prompt("hello", b"template: 'Hello {{who}} from {{place}}'")
    assert [(a.name, a.required) for a in p.arguments] == [("who", False), ("place", False)]
    assert p.declared is False


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"template: [unclosed", "not valid YAML"),
        (b"- a list", "mapping"),
        (b"description: no template", "`template`"),
        (b"template: 42", "`template`"),
        (b"template: x\ndescription: [1]", "`description` must be a string"),
        (b"template: x\narguments: {name: a}", "must be a list"),
        (b"template: x\narguments: [{name: 'bad name'}]", "`name` must match"),
        (b"template: x\narguments: [{name: a}, {name: a}]", "declared twice"),
        (b"template: x\narguments: [{name: a, required: 'yes'}]", "true or false"),
        (b"template: !!python/object/apply:os.system ['echo pwned']", "not valid YAML"),
        (b"template: x\nother: !!python/name:os.system", "not valid YAML"),
        (b"[" * 100_000, "not valid YAML|nested too deeply"),
        (b"template: '{{#if a}}'", "does not compile"),
    ],
)
def test_bad_prompt_files_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(PromptFileError, match=reason):
        parse_prompt("p", data)


def test_a_yaml_alias_bomb_costs_nothing() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    bomb = ("\n".join(lines) + "\ntemplate: 'fine {{a}}'\n").encode()
    started = time.monotonic()
    p = parse_prompt("bomb", bomb)  # aliases are shared, never expanded: 10^9 strings never exist
    assert p.template.render({"a": "1"}) == "fine 1"
    assert time.monotonic() - started < 5


def test_prompt_names_are_file_names_without_tricks() -> None:
    assert prompt_name("code-review.yaml") == "code-review"
    assert prompt_name("x_1.yml") == "x_1"
    for bad in (".hidden.yaml", "a b.yaml", "a.b.yaml", "../x.yaml", "x.json", "x\n.yaml", "-x.yaml", ".yaml"):
        assert prompt_name(bad) is None, bad


# --- the registry ------------------------------------------------------------------------------


def test_the_registry_sees_added_changed_and_removed_files(tmp_path: Path) -> None:
    (tmp_path / "review.yaml").write_bytes(REVIEW)
    reg = PromptRegistry(tmp_path, watch=True, check_interval_s=0)
    assert list(reg.prompts()) == ["review"]
    (tmp_path / "hello.yml").write_text("template: Hello {{who}}")
    assert sorted(reg.prompts()) == ["hello", "review"]
    (tmp_path / "hello.yml").write_text("template: Bonjour {{who}}!")
    os.utime(tmp_path / "hello.yml", ns=(1, 1))  # a new mtime even on a coarse clock
    assert reg.prompts()["hello"].template.render({"who": "A"}) == "Bonjour A!"
    (tmp_path / "review.yaml").unlink()
    assert list(reg.prompts()) == ["hello"]


def test_without_watching_the_folder_is_read_once(tmp_path: Path) -> None:
    reg = PromptRegistry(tmp_path, watch=False)
    assert reg.prompts() == {}
    (tmp_path / "late.yaml").write_text("template: x")
    assert reg.prompts() == {}
    assert reg.refresh() is True and list(reg.prompts()) == ["late"]


def test_bad_files_are_skipped_and_named_without_hiding_the_good_ones(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_bytes(REVIEW)
    (tmp_path / "broken.yaml").write_text("template: [")
    (tmp_path / "huge.yaml").write_bytes(b"template: '" + b"x" * MAX_FILE_BYTES + b"'")
    (tmp_path / "twice.yml").write_text("template: a")
    (tmp_path / "twice.yaml").write_text("template: b")
    outside = tmp_path.parent / f"{tmp_path.name}-secret.yaml"
    outside.write_text("template: secret")
    (tmp_path / "link.yaml").symlink_to(outside)
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / ".hidden.yaml").write_text("template: hidden")
    reg = PromptRegistry(tmp_path)
    assert sorted(reg.prompts()) == ["good", "twice"]
    assert reg.prompts()["twice"].template.render({}) == "b"  # `.yaml` sorts before `.yml`
    problems = reg.problems()
    assert set(problems) == {"broken.yaml", "huge.yaml", "twice.yml", "link.yaml", "dir.yaml"}
    assert "cannot be opened" in problems["link.yaml"]  # a symbolic link is never followed
    assert "not a regular file" in problems["dir.yaml"]


def test_a_missing_folder_serves_no_prompts(tmp_path: Path) -> None:
    assert PromptRegistry(tmp_path / "absent").prompts() == {}


# --- JSON-RPC ----------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> PromptRegistry:
    (tmp_path / "review.yaml").write_bytes(REVIEW)
    (tmp_path / "hello.yaml").write_text("template: Hello {{who}}")
    return PromptRegistry(tmp_path)


def call(registry: PromptRegistry, msg: Any, version: str | None = None) -> tuple[int, Any]:
    body = msg if isinstance(msg, bytes) else orjson.dumps(msg)
    reply = protocol.handle(body, registry, version)
    return reply.status, reply.message


def rpc(method: str, params: Any = None, id_: Any = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def test_initialize_negotiates_the_protocol_version(registry: PromptRegistry) -> None:
    for asked, agreed in [("2025-06-18", "2025-06-18"), ("2024-11-05", "2024-11-05"), ("1999-01-01", "2025-11-25")]:
        status, msg = call(registry, rpc("initialize", {"protocolVersion": asked, "capabilities": {}}))
        assert status == 200
        assert msg["result"]["protocolVersion"] == agreed
        assert msg["result"]["capabilities"] == {"prompts": {"listChanged": False}}
        assert msg["result"]["serverInfo"]["name"] == "claude-nexus-mcp-server"
    status, msg = call(registry, rpc("initialize", {}))
    assert msg["error"]["code"] == protocol.INVALID_PARAMS


def test_the_versions_are_the_sdks_handshake_versions() -> None:
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

    assert set(protocol.PROTOCOL_VERSIONS) <= set(HANDSHAKE_PROTOCOL_VERSIONS)
    assert protocol.LATEST_VERSION == HANDSHAKE_PROTOCOL_VERSIONS[-1]


def test_list_and_get(registry: PromptRegistry) -> None:
    status, msg = call(registry, rpc("prompts/list"))
    assert status == 200 and [p["name"] for p in msg["result"]["prompts"]] == ["hello", "review"]
    status, msg = call(registry, rpc("prompts/get", {"name": "review", "arguments": {"file": "a.py"}}, "req-7"))
    assert msg["id"] == "req-7"
    assert msg["result"] == {
        "description": "Review a file",
        "messages": [{"role": "user", "content": {"type": "text", "text": "Review a.py in general.\n"}}],
    }
    # the reference system's parameter names
    status, msg = call(registry, rpc("prompts/get", {"promptId": "hello", "arguments": {"who": "B"}}))
    assert msg["result"]["messages"][0]["content"]["text"] == "Hello B"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({}, "`name`"),
        ({"name": "nope"}, "no prompt named 'nope'"),
        ({"name": "review"}, "missing required argument(s): file"),
        ({"name": "review", "arguments": {"file": ""}}, "missing required argument(s): file"),
        ({"name": "review", "arguments": {"file": "a", "extra": "x"}}, "unknown argument 'extra'"),
        ({"name": "review", "arguments": {"file": 3}}, "must be a string"),
        ({"name": "review", "arguments": ["file"]}, "must be an object"),
        ({"name": "review", "arguments": {"file": "x" * (MAX_ARGUMENT_CHARS + 1)}}, "longer than"),
    ],
)
def test_bad_prompt_requests_are_invalid_params(registry: PromptRegistry, params: Any, needle: str) -> None:
    status, msg = call(registry, rpc("prompts/get", params))
    assert status == 200
    assert msg["error"]["code"] == protocol.INVALID_PARAMS
    assert needle in msg["error"]["message"]


def test_an_inferred_prompt_ignores_names_its_template_does_not_read(registry: PromptRegistry) -> None:
    _, msg = call(registry, rpc("prompts/get", {"name": "hello", "arguments": {"who": "C", "other": "{{who}}"}}))
    assert msg["result"]["messages"][0]["content"]["text"] == "Hello C"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, protocol.PARSE_ERROR),
        (b"", 400, protocol.PARSE_ERROR),
        (b"[]", 400, protocol.INVALID_REQUEST),
        (orjson.dumps([rpc("ping")]), 400, protocol.INVALID_REQUEST),
        (b'"text"', 400, protocol.INVALID_REQUEST),
        (orjson.dumps({"jsonrpc": "1.0", "id": 1, "method": "ping"}), 400, protocol.INVALID_REQUEST),
        (orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": 5}), 400, protocol.INVALID_REQUEST),
        (orjson.dumps({"jsonrpc": "2.0", "id": None, "method": "ping"}), 400, protocol.INVALID_REQUEST),
        (orjson.dumps({"jsonrpc": "2.0", "id": True, "method": "ping"}), 400, protocol.INVALID_REQUEST),
        (orjson.dumps({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}), 400, protocol.INVALID_REQUEST),
        (orjson.dumps({"jsonrpc": "2.0", "id": "x" * 300, "method": "ping"}), 400, protocol.INVALID_REQUEST),
        (orjson.dumps(rpc("tools/list")), 200, protocol.METHOD_NOT_FOUND),
        (orjson.dumps(rpc("server/discover")), 200, protocol.METHOD_NOT_FOUND),
        (orjson.dumps(rpc("prompts/list", [1])), 200, protocol.INVALID_PARAMS),
    ],
)
def test_malformed_messages_get_json_rpc_errors(registry: PromptRegistry, body: bytes, status: int, code: int) -> None:
    got_status, msg = call(registry, body)
    assert (got_status, msg["error"]["code"], msg["jsonrpc"]) == (status, code, "2.0")


def test_notifications_and_responses_need_no_answer(registry: PromptRegistry) -> None:
    assert call(registry, {"jsonrpc": "2.0", "method": "notifications/initialized"}) == (202, None)
    assert call(registry, {"jsonrpc": "2.0", "id": 4, "result": {}}) == (202, None)


def test_an_unsupported_protocol_version_header_is_refused_after_initialize(registry: PromptRegistry) -> None:
    status, msg = call(registry, rpc("prompts/list"), "2099-01-01")
    assert status == 400 and "2099-01-01" in msg["error"]["message"]
    assert call(registry, rpc("prompts/list"), "2025-06-18")[0] == 200
    assert call(registry, rpc("initialize", {"protocolVersion": "2025-06-18"}), "2099-01-01")[0] == 200


def test_a_file_with_a_bad_name_is_named_once_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "code review.yaml").write_text("template: x")
    (tmp_path / "notes.txt").write_text("not a prompt")
    reg = PromptRegistry(tmp_path, check_interval_s=0)
    with caplog.at_level("WARNING", logger="nexus.mcp"):
        assert reg.prompts() == {} and reg.prompts() == {}
    assert [r.getMessage() for r in caplog.records].count(
        f"mcp: prompt file 'code review.yaml' skipped: a name must match {NAME.pattern}"
    ) == 1
    assert "notes.txt" not in caplog.text


# --- anything at all ------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_messages = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0"]) | _json,
        "id": _json,
        "method": st.sampled_from(["initialize", "ping", "prompts/list", "prompts/get", "x"]) | _json,
        "params": st.fixed_dictionaries(
            {}, optional={"name": st.sampled_from(["review", "hello"]) | _json, "arguments": _json}
        )
        | _json,
    },
)


@settings(max_examples=200, deadline=None)
@given(message=_messages | _json)
def test_any_json_gets_an_answer_never_an_exception(tmp_path_factory: pytest.TempPathFactory, message: Any) -> None:
    folder = tmp_path_factory.getbasetemp() / "hypothesis-prompts"
    if not folder.exists():
        folder.mkdir()
        (folder / "review.yaml").write_bytes(REVIEW)
        (folder / "hello.yaml").write_text("template: Hello {{who}}")
    reply = protocol.handle(orjson.dumps(message), PromptRegistry(folder))
    assert reply.status in (200, 202, 400)
    if reply.message is not None:
        assert reply.message["jsonrpc"] == "2.0"
        assert ("result" in reply.message) != ("error" in reply.message)


@settings(max_examples=200, deadline=None)
@given(source=st.text(alphabet=st.sampled_from(list("{}#/^!>&~ .\\'\"=|()@axelsifh")), max_size=60))
def test_any_template_text_compiles_or_is_refused_with_a_reason(source: str) -> None:
    try:
        template = Template(source)
        template.check(["a"])
    except TemplateError:
        return
    assert isinstance(template.render({"a": "v"}), str)
