"""Handlebars prompt templates: compiled once when a prompt file loads, rendered per `prompts/get`.

The engine is `dotpromptz-handlebars` (Google's pure-Python Handlebars, used by Genkit's Dotprompt):
an interpreter over a parsed tree, not a code generator, that reads values only from mappings and
lists (never Python attributes, so `{{__class__}}` is just a missing name), bounds nesting depth,
and has no partials unless registered. As in the reference system, nothing is HTML-escaped and a
missing variable renders as nothing. Argument values are inserted once, as text: a value that
itself looks like `{{x}}` is never rendered again. The `log` helper (it prints to stdout) is removed.

A template's cost is bounded where it is loaded. Its size is capped (`MAX_TEMPLATE_CHARS`); only
`{{#each}}` repeats anything (over the arguments mapping: they are strings, so nothing else is a
list), and at most `MAX_EACH` of them are allowed; two trial renders, with every argument one and two
characters long, count how often argument values are printed, which bounds the output of the
largest allowed arguments without rendering it. Each real render's output is checked again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from dotpromptz_handlebars import Handlebars
from dotpromptz_handlebars._render import compile_template
from dotpromptz_handlebars._types import Block, ElseNode, InlinePartial, Node, Partial, PartialBlock

#: Longest template accepted, characters.
MAX_TEMPLATE_CHARS = 256 * 1024
#: Longest value of one argument, characters.
MAX_ARGUMENT_CHARS = 64 * 1024
#: Most arguments one prompt may declare.
MAX_ARGUMENTS = 32
#: Longest rendered prompt, characters.
MAX_OUTPUT_CHARS = 4 * 1024 * 1024
#: Deepest nesting of blocks.
MAX_DEPTH = 32
#: Most `{{#each}}` blocks in one template (nested, they multiply).
MAX_EACH = 2

_ENGINE = Handlebars(escape_html=False, max_depth=MAX_DEPTH)
_ENGINE.unregister_helper("log")

#: `{{name}}`, `{{{name}}}`, `{{#if name}}`, `{{#unless name}}`, `{{#with name}}`: the names a template
#: reads from its arguments at the top level (used when a prompt file declares no arguments).
_VARIABLE = re.compile(r"\{\{\{?~?\s*(?:#(?:if|unless|with)\s+)?([A-Za-z_][A-Za-z0-9_-]*)\s*~?\}?\}\}")
_NOT_VARIABLES = frozenset({"else", "this", "lookup"})


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered; the message names the cause, not the values."""


class Template:
    """One compiled template."""

    __slots__ = ("_render", "source")

    def __init__(self, source: str) -> None:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"the template is {len(source)} characters; the limit is {MAX_TEMPLATE_CHARS}")
        self.source = source
        try:
            # the engine's own parse, so the limits see what it will run (`{{ #each}}`, `{{# each}}`...)
            _check_tree(compile_template(source, max_depth=MAX_DEPTH))
            self._render: Callable[..., str] = _ENGINE.compile(source)
        except (ValueError, RecursionError) as exc:
            raise TemplateError(f"the template does not compile: {exc}") from None

    def render(self, arguments: Mapping[str, str]) -> str:
        """The template with `arguments` filled in (strings only, as MCP sends them)."""
        try:
            text = self._render(dict(arguments))
        except (ValueError, RecursionError, TypeError, KeyError, IndexError) as exc:
            raise TemplateError(f"the template failed to render: {exc}") from None
        if len(text) > MAX_OUTPUT_CHARS:
            raise TemplateError(f"the rendered prompt exceeds {MAX_OUTPUT_CHARS} characters")
        return text

    def check(self, names: list[str]) -> None:
        """Trial renders when the file loads: with no argument, and with every argument 1 and 2
        characters long. The difference is how many argument values one render prints, so the
        largest output real arguments can produce is known without producing it; a template that
        could pass `MAX_OUTPUT_CHARS` is refused up front."""
        self.render({})
        one = len(self.render(dict.fromkeys(names, "x")))
        two = len(self.render(dict.fromkeys(names, "xx")))
        worst = one + (two - one) * (MAX_ARGUMENT_CHARS - 1)
        if worst > MAX_OUTPUT_CHARS:
            raise TemplateError(
                f"with arguments of {MAX_ARGUMENT_CHARS} characters the prompt could reach {worst} characters; "
                f"the limit is {MAX_OUTPUT_CHARS}"
            )


def _check_tree(nodes: list[Node]) -> None:
    """Refuse partials (inline ones too: a partial that includes another twice doubles the output per
    level, with no argument at all) and more than `MAX_EACH` `{{#each}}` blocks, counted in the parsed
    tree, however the tags are spaced."""
    each = 0
    stack: list[Node] = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, (Partial, PartialBlock, InlinePartial)):
            raise TemplateError("partials are not supported")
        if isinstance(node, Block):
            if node.call.get("name") == "each":
                each += 1
                if each > MAX_EACH:
                    raise TemplateError(f"the template has more than {MAX_EACH} {{{{#each}}}} blocks")
            stack.extend(node.body)
            stack.extend(node.inverse)
        elif isinstance(node, ElseNode):
            stack.extend(node.body)


def variables(source: str) -> list[str]:
    """Names the template reads at the top level, in order of first use."""
    seen: dict[str, None] = {}
    for match in _VARIABLE.finditer(source):
        name = match.group(1)
        if name not in _NOT_VARIABLES:
            seen.setdefault(name, None)
    return list(seen)
