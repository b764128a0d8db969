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
    """Knows the configured keys; ``check`` returns the caller's key id or raises 401."""

    def __init__(self, keys: t.Iterable[str]) -> None:
        self._keys = tuple(key.encode() for key in keys)

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
            if self._matches(candidate.encode()):
                return key_id(candidate)
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def _matches(self, candidate: bytes) -> bool:
        matched = False
        for key in self._keys:  # compare with every key, so timing says nothing about which
            matched |= hmac.compare_digest(candidate, key)
        return matched


def key_id(key: str) -> str:
    """A stable, non-reversible id for logs: never the key, nor a prefix of it."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]
