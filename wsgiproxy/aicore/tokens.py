"""OAuth client-credentials tokens for SAP AI Core, cached per subaccount.

A token is reused until ``margin`` seconds before it expires; then exactly one caller fetches a
new one while the others wait for it (single flight), so a burst of N requests costs one token
request. An upstream 401 invalidates the token it was sent with, and only that one.
"""

from __future__ import annotations

import json
import threading
import time
import typing as t
from dataclasses import dataclass
from urllib.parse import urlencode

from ..errors import TokenError, UpstreamError

if t.TYPE_CHECKING:
    from ..config import Credentials
    from .transport import Transport


@dataclass(frozen=True)
class Token:
    value: str = ""
    refresh_at: float = 0.0  # monotonic time after which the token must be refreshed


def fetch_token(transport: Transport, credentials: Credentials, timeout: float) -> tuple[str, float]:
    """Ask XSUAA for a token; returns ``(access_token, expires_in_seconds)``."""
    body = urlencode({
        "grant_type": "client_credentials",
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
    }).encode()
    # Credentials in the form body, as SAP's own SDK sends them (one method only, per RFC 6749).
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    try:
        response = transport.request("POST", credentials.auth_url, headers=headers, body=body,
                                     connect_timeout=timeout, read_timeout=timeout, stream=False)
    except UpstreamError as exc:
        raise TokenError(f"token request to {credentials.auth_url} failed: {exc}") from exc
    if response.status != 200:
        raise TokenError(f"token request to {credentials.auth_url} answered {response.status}: "
                         f"{_describe(response.data)}")
    try:
        payload = json.loads(response.data)
        token = payload["access_token"]
        expires_in = float(payload.get("expires_in", 3600))
    except (ValueError, KeyError, TypeError):
        raise TokenError(f"token response from {credentials.auth_url} has no access_token") from None
    if not isinstance(token, str) or not token:
        raise TokenError(f"token response from {credentials.auth_url} has an empty access_token")
    return token, expires_in


def _describe(body: bytes) -> str:
    try:
        payload = json.loads(body)
        if isinstance(payload, dict):
            return str(payload.get("error_description") or payload.get("error") or payload)[:200]
    except ValueError:
        pass
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


class TokenCache:
    """The current token of one subaccount, refreshed single-flight.

    :param fetch: called with no arguments, returns ``(token, expires_in)``; raises TokenError.
    :param margin: refresh this many seconds before expiry (at most half the lifetime).
    """

    def __init__(self, fetch: t.Callable[[], tuple[str, float]], margin: float,
                 clock: t.Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._margin = margin
        self._clock = clock
        self._token = Token()
        self._lock = threading.Lock()
        self.fetches = 0

    def get(self) -> str:
        token = self._token
        if token.value and self._clock() < token.refresh_at:
            return token.value
        with self._lock:
            token = self._token
            if token.value and self._clock() < token.refresh_at:
                return token.value  # another caller refreshed it while we waited
            value, expires_in = self._fetch()
            self.fetches += 1
            lifetime = max(expires_in - min(self._margin, expires_in / 2), 0.0)
            self._token = Token(value, self._clock() + lifetime)
            return value

    def invalidate(self, value: str) -> None:
        """Forget ``value`` if it is still the current token (upstream said it is expired)."""
        with self._lock:
            if self._token.value == value:
                self._token = Token()
