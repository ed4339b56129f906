"""Masking secrets in text that leaves the gateway for somewhere else (Slack, telemetry, sample files).

Prompts and replies are hostile text: a user pastes an API key into a prompt, a tool result prints an
environment, a model repeats a token it saw. Anything shaped like a credential is replaced before such
text is sent on. The log formatter's masks (`nexus.observability.logs.redact`: Anthropic keys and OAuth
tokens, Nexus client keys, bearer and basic credentials) and the storage's client-key redaction
(`nexus.auth.client_keys.redact_client_keys`, which also sees percent-encoded keys) are applied, plus the
common shapes of other providers' keys, JWTs, private key blocks, passwords in URLs and `name=value`
assignments whose name says secret. A false positive costs a few masked characters of an excerpt; a miss
leaks a credential to a chat channel, so the patterns are broad.
"""

from __future__ import annotations

import re
import string
from typing import Any

from nexus.auth.client_keys import redact_client_keys
from nexus.observability.logs import redact

MASK = "[redacted]"

_SHAPES = re.compile(
    r"sk-[A-Za-z0-9][A-Za-z0-9_\-]{15,}"  # OpenAI-style and any other `sk-` key
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub tokens
    r"|xox[abprse]-[A-Za-z0-9\-]{10,}"  # Slack tokens
    r"|hooks\.slack\.com/services/[A-Za-z0-9/_\-]+"  # Slack webhook URLs (the path is the secret)
    r"|AIza[0-9A-Za-z_\-]{30,}"  # Google API keys
    r"|glpat-[A-Za-z0-9_\-]{16,}"  # GitLab tokens
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"  # JWTs
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",  # PEM keys
    re.DOTALL,
)
#: `password: x`, `"api_key": "x"`, `export DB_PASS=x`, `x-api-key: x`, `--token x`: the value after a name
#: that says secret (the match starts at the word, so `DB_PASS` and `x-api-key` are found by `PASS` and `key`).
_ASSIGNED = re.compile(
    r"((?:key|secret|token|pass(?:word|wd|phrase)?|pwd|credential|auth)"
    r"[A-Za-z0-9_\-]{0,40}[\"']?(?:\s*[:=]\s*|\s+(?:is|was)\s+|\s+(?=\S*[0-9]))[\"']?)([^\s\"',;&}]+)",
    re.IGNORECASE,
)
#: Where `_ASSIGNED` may start, found in ASCII-lowered text (one case-sensitive scan is ~10x faster than
#: a case-insensitive one; lowering only ASCII keeps every position where it was).
_KEYWORD = re.compile(r"key|secret|token|pass|pwd|credential|auth")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
#: Authorization schemes: after `Authorization: Negotiate` the secret is the next word, not the scheme.
_SCHEMES = frozenset({"bearer", "basic", "token", "negotiate", "digest", "ntlm", "dpop", "apikey", "oauth", "key"})
_AFTER_SCHEME = re.compile(r"[ \t]+([^\s\"',;&}]+)")
#: Shorter values after a secret-sounding name are left alone ("the key is blue").
MIN_VALUE = 6
#: `scheme://user:password@host`
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)([^@\s/]+)(@)")


def mask_secrets(text: str) -> str:
    """`text` with everything that looks like a credential replaced by `[redacted]` (a recognisable
    prefix of a known key shape is kept, never more than the log formatter keeps)."""
    if not text:
        return text
    text = redact_client_keys(redact(text))
    text = _SHAPES.sub(MASK, text)
    text = _mask_assigned(text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)


def _mask_assigned(text: str) -> str:
    """`_ASSIGNED` replaced, tried only where a keyword starts."""
    out: list[str] = []
    last = 0
    for hit in _KEYWORD.finditer(text.translate(_ASCII_LOWER)):
        if hit.start() < last:
            continue
        m = _ASSIGNED.match(text, hit.start())
        if m is None:
            continue
        start, end = m.span(2)
        if m.group(2).lower() in _SCHEMES:  # `Authorization: Token abc…`: the word after the scheme
            after = _AFTER_SCHEME.match(text, end)
            if after is None:
                continue
            start, end = after.span(1)
        value = text[start:end]
        if MASK in value or len(value) < MIN_VALUE:  # masked already (`Bearer [redacted]`), or too short
            continue
        out.append(text[last:start])
        out.append(MASK)
        last = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def mask_value(value: Any, depth: int = 0) -> Any:
    """A parsed JSON value with every string in it (keys included) masked; nesting past 200 levels is
    cut (a hostile body cannot exhaust the stack)."""
    if depth > 200:
        return MASK
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {mask_secrets(str(k)): mask_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(v, depth + 1) for v in value]
    return value
