"""Calling a SAP AI Core deployment: token, headers, one retry after a 401.

This module knows nothing about client formats: it sends bytes to ``{deployment URL}{suffix}``
and hands back the upstream response, status and body untouched.
"""

from __future__ import annotations

import logging
import time
import typing as t
from functools import lru_cache, partial
from urllib.parse import urlencode

from ..errors import UpstreamError
from ..metrics import Metrics
from .http11 import PreparedHeaders
from .tokens import TokenCache, fetch_token
from .transport import Transport, UpstreamResponse, discard

if t.TYPE_CHECKING:
    from ..config import Settings, SubAccount
    from .catalog import Deployment

log = logging.getLogger("wsgiproxy.aicore")


class AICoreClient:
    """Per-process access to every configured subaccount."""

    def __init__(self, settings: Settings, transport: Transport | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.transport = transport or Transport(settings.pool_maxsize, settings.pool_timeout, settings.ca_bundle)
        self.metrics = metrics or Metrics.for_settings(settings)
        self.tokens: dict[str, TokenCache] = {
            sub.name: TokenCache(
                partial(self._counted_fetch, sub.name,
                        partial(fetch_token, self.transport, sub.credentials, settings.token_timeout)),
                settings.token_refresh_margin,
            )
            for sub in settings.subaccounts
        }
        # Per subaccount and Accept value: the token they were built with and the request headers.
        self._headers_for: dict[tuple[str, str], tuple[str, PreparedHeaders]] = {}

    def _counted_fetch(self, subaccount: str, fetch: t.Callable[[], tuple[str, float]]) -> tuple[str, float]:
        try:
            result = fetch()
        except Exception:
            self.metrics.token_refreshed(subaccount, ok=False)
            raise
        self.metrics.token_refreshed(subaccount, ok=True)
        return result

    def post(
        self,
        deployment: Deployment,
        suffix: str,
        body: bytes,
        *,
        query: t.Mapping[str, str] | None = None,
        stream: bool = False,
        accept: str = "application/json",
    ) -> UpstreamResponse:
        """POST ``body`` to the deployment; a 401 (expired token) is retried once with a new token."""
        url = deployment.url + suffix
        if query:
            url += "?" + _query_string(tuple(query.items()))
        sub = deployment.subaccount
        cache = self.tokens[sub.name]
        for attempt in (1, 2):
            token = cache.get()
            prepared = self._headers_for.get((sub.name, accept))
            if prepared is None or prepared[0] != token:  # a new token: the lines are built again
                prepared = self._headers_for[(sub.name, accept)] = (
                    token, PreparedHeaders(self._headers(sub, token, accept)))
            headers = prepared[1]
            started = time.perf_counter()
            try:
                response = self.transport.request(
                    "POST",
                    url,
                    headers=headers,
                    body=body,
                    connect_timeout=self.settings.connect_timeout,
                    read_timeout=self.settings.read_timeout,
                    stream=stream,
                )
            except UpstreamError:
                self.metrics.upstream_done(sub.name, deployment.id, None, time.perf_counter() - started)
                raise
            self.metrics.upstream_done(sub.name, deployment.id, response.status, time.perf_counter() - started)
            if response.status != 401 or attempt == 2:
                return response
            log.info("SAP AI Core answered 401 for subaccount %s; fetching a new token and retrying once", sub.name)
            discard(response)
            cache.invalidate(token)
        raise AssertionError("unreachable")

    @staticmethod
    def _headers(sub: SubAccount, token: str, accept: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "AI-Resource-Group": sub.resource_group,
            "Content-Type": "application/json",
            "Accept": accept,
            # Streams are parsed event by event: a compressed body would only add work.
            "Accept-Encoding": "identity",
            "AI-Client-Type": "wsgiproxy",
        }


@lru_cache(maxsize=64)
def _query_string(items: tuple[tuple[str, str], ...]) -> str:
    """The same few query strings (``api-version``) on every request: encoded once."""
    return urlencode(items)
