"""Prompt files: what a YAML file in `MCP_PROMPTS_DIR` must hold, and the registry that serves them.

A prompt is one file `<name>.yaml` (or `.yml`) directly in the folder (no sub-folders, as in the
reference system):

    description: Review a change            # optional
    name: Code review                       # optional display title (the prompt's name is the file's)
    template: |                             # required, Handlebars
      Review {{file}} for {{focus}}.
    arguments:                              # optional
      - name: file
        description: The file to review
        required: true
      - name: focus

The prompt's name is the file name without its extension, as in the reference system, so it is
unique and safe in a slash command (`/mcp__nexus__code-review`). A file that declares no arguments
gets the names its template reads, all optional, so a client can still offer them.

Every file is hostile until checked: names outside `NAME` are skipped, symbolic links and anything
but regular files are not opened, files over `MAX_FILE_BYTES` are not read, YAML is read with the
safe loader only (no Python objects; aliases are shared, not copied, and every value read is
type- and size-checked), and a bad file is skipped with one warning naming the file and the reason,
never taking the other prompts down.

With `MCP_WATCH_FILES` the registry compares the folder's listing (names, sizes, mtimes) at most
every `CHECK_INTERVAL_S` when asked for prompts: a new, changed or removed file is seen on the next
request after it, by every worker, without a watcher thread. Unchanged files are not parsed again.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nexus.mcp.templates import MAX_ARGUMENTS, Template, TemplateError, variables

log = logging.getLogger("nexus.mcp")

#: A prompt (file) name: what a slash command and a file system both take without quoting.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
ARGUMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 512 * 1024
MAX_FILES = 1000
MAX_DESCRIPTION_CHARS = 4096
CHECK_INTERVAL_S = 0.5

try:  # the C loader when libyaml is there: same safety, faster
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover (depends on how PyYAML was built)
    _Loader = yaml.SafeLoader


class PromptFileError(ValueError):
    """Why one prompt file is not served."""


@dataclass(frozen=True, slots=True)
class Argument:
    name: str
    description: str | None = None
    required: bool = False


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    title: str | None
    description: str | None
    template: Template
    arguments: tuple[Argument, ...]
    #: False when the arguments were read off the template (the file declared none).
    declared: bool = True

    def wire(self) -> dict[str, Any]:
        """The prompt as `prompts/list` shows it (plus `id`, the reference system's field)."""
        out: dict[str, Any] = {"name": self.name, "id": self.name}
        if self.title:
            out["title"] = self.title
        if self.description:
            out["description"] = self.description
        out["arguments"] = [
            {"name": a.name, **({"description": a.description} if a.description else {}), "required": a.required}
            for a in self.arguments
        ]
        return out


def parse_prompt(name: str, data: bytes) -> Prompt:
    """One file's bytes as a prompt, or `PromptFileError` saying what is wrong."""
    try:
        doc = yaml.load(data, Loader=_Loader)  # noqa: S506 (a safe loader: CSafeLoader or SafeLoader)
    except yaml.YAMLError as exc:
        raise PromptFileError(f"not valid YAML ({_first_line(exc)})") from None
    except RecursionError:
        raise PromptFileError("YAML nested too deeply") from None
    if not isinstance(doc, dict):
        raise PromptFileError("the file must hold a mapping with a `template`")
    template_source = doc.get("template")
    if not isinstance(template_source, str) or not template_source.strip():
        raise PromptFileError("`template` must be a non-empty string")
    description = _optional_text(doc, "description")
    title = _optional_text(doc, "name")
    try:
        template = Template(template_source)
    except TemplateError as exc:
        raise PromptFileError(str(exc)) from None
    raw_arguments = doc.get("arguments")
    if raw_arguments is None:
        arguments = tuple(Argument(n) for n in variables(template_source) if ARGUMENT_NAME.fullmatch(n))[:MAX_ARGUMENTS]
        declared = False
    else:
        arguments, declared = _arguments(raw_arguments), True
    try:
        template.check([a.name for a in arguments])
    except TemplateError as exc:
        raise PromptFileError(str(exc)) from None
    return Prompt(name, title if title != name else None, description, template, arguments, declared)


def _arguments(raw: object) -> tuple[Argument, ...]:
    if not isinstance(raw, list):
        raise PromptFileError("`arguments` must be a list")
    if len(raw) > MAX_ARGUMENTS:
        raise PromptFileError(f"more than {MAX_ARGUMENTS} arguments")
    out: list[Argument] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise PromptFileError(f"argument {i + 1} must be a mapping with a `name`")
        name = item.get("name")
        if not isinstance(name, str) or not ARGUMENT_NAME.fullmatch(name):
            raise PromptFileError(f"argument {i + 1}: `name` must match {ARGUMENT_NAME.pattern}")
        if any(a.name == name for a in out):
            raise PromptFileError(f"argument {name!r} is declared twice")
        required = item.get("required", False)
        if not isinstance(required, bool):
            raise PromptFileError(f"argument {name!r}: `required` must be true or false")
        out.append(Argument(name, _optional_text(item, "description"), required))
    return tuple(out)


def _optional_text(doc: dict[Any, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PromptFileError(f"`{key}` must be a string")
    if len(value) > MAX_DESCRIPTION_CHARS:
        raise PromptFileError(f"`{key}` is longer than {MAX_DESCRIPTION_CHARS} characters")
    return value.strip() or None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__


def prompt_name(filename: str) -> str | None:
    """The prompt name of a file name, or None when the file is not a prompt file."""
    for suffix in SUFFIXES:
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            return stem if NAME.fullmatch(stem) else None
    return None


def read_regular_file(path: str | Path, limit: int) -> bytes:
    """The bytes of a regular file that is not a symbolic link, at most `limit` of them."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise PromptFileError(f"cannot be opened ({exc.strerror or exc.__class__.__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PromptFileError("not a regular file")
        if info.st_size > limit:
            raise PromptFileError(f"{info.st_size} bytes; the limit is {limit}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise PromptFileError(f"over {limit} bytes")
    return data


@dataclass(slots=True)
class _Loaded:
    key: tuple[int, int, int]
    prompt: Prompt | None
    problem: str | None


@dataclass(slots=True)
class PromptRegistry:
    """The prompts of one folder, re-read when it changes (with `watch`)."""

    directory: Path
    watch: bool = True
    check_interval_s: float = CHECK_INTERVAL_S
    _files: dict[str, _Loaded] = field(default_factory=dict)
    _prompts: dict[str, Prompt] = field(default_factory=dict)
    _fingerprint: tuple[Any, ...] | None = None
    _checked_at: float = float("-inf")
    _missing_logged: bool = False
    _bad_names: set[str] = field(default_factory=set)

    def prompts(self) -> dict[str, Prompt]:
        """The current prompts by name (the folder is looked at again when a check is due)."""
        now = time.monotonic()
        if self._fingerprint is None or (self.watch and now - self._checked_at >= self.check_interval_s):
            self._checked_at = now
            self.refresh()
        return self._prompts

    def problems(self) -> dict[str, str]:
        """File name -> why it is not served."""
        return {name: f.problem for name, f in self._files.items() if f.problem}

    def refresh(self, force: bool = False) -> bool:
        """Look at the folder now; reload what changed. True when the prompts changed."""
        entries = self._listing()
        fingerprint = tuple(sorted((name, key) for name, (_, key) in entries.items()))
        if not force and fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        files: dict[str, _Loaded] = {}
        for filename, (path, key) in sorted(entries.items()):
            old = self._files.get(filename)
            if old is not None and old.key == key and not force:
                files[filename] = old
                continue
            files[filename] = self._load(filename, path, key)
        prompts: dict[str, Prompt] = {}
        for filename, loaded in files.items():
            if loaded.prompt is None:
                continue
            if loaded.prompt.name in prompts:  # `x.yaml` and `x.yml`: the first in name order wins
                loaded.problem = f"a prompt named {loaded.prompt.name!r} is already served from another file"
                log.warning("mcp: prompt file %s skipped: %s", filename, loaded.problem)
                continue
            prompts[loaded.prompt.name] = loaded.prompt
        self._files, self._prompts = files, prompts  # swapped whole: a request sees one version or the other
        return True

    def _listing(self) -> dict[str, tuple[str, tuple[int, int, int]]]:
        out: dict[str, tuple[str, tuple[int, int, int]]] = {}
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    if entry.name.startswith(".") or not entry.name.endswith(SUFFIXES):
                        continue
                    if prompt_name(entry.name) is None:
                        if entry.name not in self._bad_names:  # once per name, not on every check
                            self._bad_names.add(entry.name)
                            log.warning("mcp: prompt file %r skipped: a name must match %s", entry.name, NAME.pattern)
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    out[entry.name] = (entry.path, (info.st_mtime_ns, info.st_size, info.st_ino))
                    if len(out) >= MAX_FILES:
                        log.warning(
                            "mcp: more than %d prompt files in %s; the rest are ignored", MAX_FILES, self.directory
                        )
                        break
        except OSError as exc:
            if not self._missing_logged:
                log.warning("mcp: prompts folder %s cannot be read (%s): no prompts", self.directory, exc.strerror)
                self._missing_logged = True
            return {}
        self._missing_logged = False
        return out

    @staticmethod
    def _load(filename: str, path: str, key: tuple[int, int, int]) -> _Loaded:
        name = prompt_name(filename)
        assert name is not None
        try:
            prompt = parse_prompt(name, read_regular_file(path, MAX_FILE_BYTES))
        except PromptFileError as exc:
            log.warning("mcp: prompt file %s skipped: %s", filename, exc)
            return _Loaded(key, None, str(exc))
        return _Loaded(key, prompt, None)
