"""Every error the auth layer answers to a client, in one place, in Anthropic's shape.

Messages name files, fields, projects and accounts so an operator can fix the cause from the client's
error alone, and never contain a key or a token: they are returned to clients and stored with the
request.
"""

from __future__ import annotations

from nexus.auth.credentials import Credential, CredentialError
from nexus.errors import ProxyError

WWW_AUTHENTICATE = [("www-authenticate", 'Bearer realm="nexus"')]
#: On the gateway's own 401s, whose cause no retry can remove (a wrong key, a missing credential, an
#: account waiting for an operator's login). Claude Code retries every 401 up to ten times, minutes of
#: backoff, unless the answer carries this header; with it, `claude -p` stops at once with "Invalid API
#: key" (measured with claude 2.1.197), and the failed-key throttle is not run into by the retries.
NO_RETRY = [("x-should-retry", "false")]


def login_command(cred: Credential) -> str:
    return f"nexus oauth login --{'account' if cred.is_account else 'project'} {cred.name}"


def configuration_error(exc: CredentialError) -> ProxyError:
    return ProxyError(500, f"Credential configuration error: {exc}", "api_error")


def bad_selector(header: str, exc: CredentialError) -> ProxyError:
    return ProxyError(400, f"Invalid {header} header: {exc}", "invalid_request_error")


def unknown_account(account: str) -> ProxyError:
    return ProxyError(
        400,
        f"Unknown account {account!r}: no accounts/{account}.credentials.json in the credentials directory "
        "(nor in the database, when credentials are kept there).",
        "invalid_request_error",
    )


def needs_login(cred: Credential) -> ProxyError:
    return ProxyError(
        401,
        f"OAuth account {cred.name!r} needs a new login: its refresh token was refused. "
        f"An operator must run `{login_command(cred)}`.",
        "authentication_error",
        headers=NO_RETRY,
    )


def refresh_failed(cred: Credential, reason: str) -> ProxyError:
    return ProxyError(502, f"OAuth token refresh for {cred.name!r} failed: {reason}.", "api_error")


class ClientKeyError(ProxyError):
    """A missing or refused client key: counted against the client's address (`nexus.security.throttle`)."""


def client_key_required(reason: str, *, presented: bool = True) -> ProxyError:
    """401 for a missing key, or (`presented`) a refused one, which counts as a guess."""
    return (ClientKeyError if presented else ProxyError)(
        401,
        f"{reason} This gateway requires a client key issued by `nexus keys create`, "
        "sent as x-api-key or Authorization: Bearer.",
        "authentication_error",
        headers=[*WWW_AUTHENTICATE, *NO_RETRY],
    )


def no_upstream_credential(project: str) -> ProxyError:
    return ProxyError(
        401,
        f"No upstream credential for project {project!r}: add {project}.credentials.json to the credentials "
        "directory, or send your own Anthropic key (x-api-key or Authorization: Bearer) besides the client key.",
        "authentication_error",
        headers=NO_RETRY,
    )
