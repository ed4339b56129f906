"""mutmut's hook, copied into each area's copy as `mutmut_config.py` with CONFIG filled in.

For every mutant it runs only the tests that guard the mutated file (a mutant of the path rules
does not need the conversation tests); it skips lines inside logging calls (their text is for
people; no behaviour depends on it), mutants inside type annotations (with
`from __future__ import annotations` they are never evaluated, so every such mutant is equivalent)
and inside `typing.Protocol` classes (type declarations: their bodies never run).
"""

import itertools
from typing import Any

# mutmut imports this module while `mutmut` itself is half imported: its names are imported late,
# inside the hooks (an ImportError here would make mutmut run silently without the hook)
CONFIG: dict[str, Any] = {}


def pre_mutation(context):  # type: ignore[no-untyped-def]  # mutmut's hook signature
    if context.current_line_index + 1 in CONFIG["skip_lines"].get(context.filename, ()):
        context.skip = True
        return
    context.config.test_command = CONFIG["tests"][context.filename]


def pre_mutation_ast(context):  # type: ignore[no-untyped-def]
    """Called for each candidate while mutmut walks the tree: refuse the chosen one in an annotation."""
    from mutmut import ALL, SkipException

    if context.mutation_id == ALL or context.mutation_id != context.mutation_id_of_current_index:
        return
    if _in_annotation(context.stack) or _in_protocol(context.stack):
        raise SkipException


def _in_protocol(stack: list[Any]) -> bool:
    """A `typing.Protocol` class is a type declaration: never instantiated, its members never called."""
    for node in stack:
        if node.type == "classdef":
            bases = node.children[2:-2]  # between the name and the ':' (with the parentheses)
            if any(getattr(leaf, "value", None) == "Protocol" for b in bases for leaf in _leaves(b)):
                return True
    return False


def _leaves(node: Any) -> list[Any]:
    return [node] if not hasattr(node, "children") else [x for c in node.children for x in _leaves(c)]


def _in_annotation(stack: list[Any]) -> bool:
    for parent, child in itertools.pairwise(stack):
        if parent.type == "annassign" and len(parent.children) > 1 and child is parent.children[1]:
            return True
        if parent.type in ("param", "tfpdef"):
            kids = parent.children
            for i, kid in enumerate(kids[:-1]):
                if kid.type == "operator" and kid.value == ":" and child is kids[i + 1]:
                    return True
    return False
