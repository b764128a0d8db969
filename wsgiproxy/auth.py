"""Client authentication: exact, constant-time comparison against the configured keys.

A key may come as ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (Anthropic clients).
No key, and no part of one, is ever logged: logs carry :func:`key_id`, a short hash.
"""

from __future__ import annotations

import hashlib
import hmac
import typing as t

from .errors import ApiError

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


def presented_keys(environ: WSGIEnvironment) -> list[str]:
    keys = []
    authorization = environ.get("HTTP_AUTHORIZATION", "").strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            keys.append(value.strip())
    api_key = environ.get("HTTP_X_API_KEY", "").strip()
    if api_key:
        keys.append(api_key)
    return keys


class KeyChecker:
    """Knows the configured keys; ``check`` returns the caller's key id or raises 401.

    Each key's id is computed once, here, not hashed again on every request.
    """

    def __init__(self, keys: t.Iterable[str]) -> None:
        self._keys = tuple((key.encode(), key_id(key)) for key in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, environ: WSGIEnvironment) -> str:
        if not self._keys:
            return "anonymous"
        presented = presented_keys(environ)
        if not presented:
            raise ApiError(401, "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                           code="invalid_api_key")
        for candidate in presented:
            found = self._match(candidate.encode())
            if found is not None:
                return found
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def _match(self, candidate: bytes) -> str | None:
        """The id of the key equal to ``candidate``; compared with every key, so timing says nothing about which."""
        found = None
        for key, ident in self._keys:
            if hmac.compare_digest(candidate, key):
                found = ident
        return found


def key_id(key: str) -> str:
    """A stable, non-reversible id for logs: never the key, nor a prefix of it."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]
