"""The header filter that keeps client keys from Anthropic, fast path and full path alike."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.auth.client_keys import carries_client_key
from nexus.auth.service import _CALLER_AUTH, holds_secret, without_client_keys

KEY = "cnp_live_" + "A" * 43
NAMES = st.sampled_from(
    ["x-api-key", "authorization", "cookie", "user-agent", "x-custom", "anthropic-beta", "cnp_live_x"]
)
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            KEY,
            KEY.upper(),
            "Bearer " + KEY,
            "Basic " + base64.b64encode(f"user:{KEY}".encode()).decode(),
            "a=b; session=" + base64.b64encode(KEY.encode()).decode(),
            "cnp_live%5F" + "A" * 10,
            "%63np_live_xyz",
            "Bearer sk-ant-api03-" + "x" * 40,
            "claude-cli/2.1.3 (external, cli)",
        ]
    ),
)


def full_path(upstream: list[tuple[str, str]], secret: str | None = None) -> list[tuple[str, str]]:
    """Every header judged on its own (the rule before the fast path)."""
    return [
        (k, v)
        for k, v in upstream
        if not carries_client_key(v, deep=k in _CALLER_AUTH or k == "cookie")
        and not carries_client_key(k)
        and not (secret and (holds_secret(v, secret) or holds_secret(k, secret)))
    ]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=8), st.sampled_from([None, "", "s3cret"]))
def test_the_fast_path_keeps_and_drops_what_judging_each_header_does(
    upstream: list[tuple[str, str]], secret: str | None
) -> None:
    assert without_client_keys(upstream, secret) == full_path(upstream, secret)


def test_a_key_in_base64_in_a_credential_header_is_still_dropped_on_the_fast_path() -> None:
    basic = "Basic " + base64.b64encode(f"user:{KEY}".encode()).decode()
    headers = [("authorization", basic), ("user-agent", "claude-cli/2.1.3"), ("x-api-key", "sk-ant-api03-abc")]
    assert without_client_keys(headers) == headers[1:]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text(alphabet="ABCDEFabcdef0123456789+/-_=", max_size=60)))
def test_the_base64_look_decodes_as_the_standard_library_does(token: str) -> None:
    """`_unbase64` skips `base64.urlsafe_b64decode`'s Python layers, never its answer."""
    from nexus.auth.client_keys import _unbase64

    try:
        expected = base64.urlsafe_b64decode(token + "==")
    except ValueError:  # binascii.Error is one
        expected = b""
    assert _unbase64(token) == expected
