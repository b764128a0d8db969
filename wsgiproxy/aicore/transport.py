"""The one place wsgiproxy does HTTP to SAP AI Core: a urllib3 pool per process.

The PoolManager is created on first use in the process that uses it, so a preloaded app can be
forked safely. Low-level urllib3 errors are mapped here, and only here, to
:class:`~wsgiproxy.errors.UpstreamUnreachable` and :class:`~wsgiproxy.errors.UpstreamTimeout`.

Streamed responses are read with ``read1`` (the only read that hands over each event of a
close-delimited body as it arrives) and must be finished with :func:`release` or :func:`discard`.
"""

from __future__ import annotations

import os
import typing as t

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from ..errors import UpstreamTimeout, UpstreamUnreachable

# Connection failures are retried once (the request never left); anything after the request was
# sent is not, since a POST to a model may already be running.
_RETRIES = urllib3.Retry(total=None, connect=1, read=False, redirect=False, status=False, other=0)

READ_SIZE = 65536


class Transport:
    """A lazily created, per-process ``urllib3.PoolManager`` with upstream errors mapped.

    :param maxsize: connections kept per upstream host (like gunicorn's worker_connections).
    :param pool_timeout: seconds to wait for a free connection before giving up.
    """

    def __init__(self, maxsize: int = 1000, pool_timeout: float = 30.0, ca_certs: str | None = None) -> None:
        self._maxsize = maxsize
        self._pool_timeout = pool_timeout
        self._ca_certs = ca_certs
        self._pid = -1
        self._manager: urllib3.PoolManager | None = None
        # Per process, with the manager: origin → its pool, (connect, read) → Timeout. Looking them
        # up here skips urllib3's URL parsing and pool-key normalising on every request.
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}
        self._timeouts: dict[tuple[float, float], urllib3.Timeout] = {}

    @property
    def manager(self) -> urllib3.PoolManager:
        if self._manager is None or self._pid != os.getpid():
            self._pools = {}
            self._timeouts = {}
            kwargs: dict[str, t.Any] = {}
            if self._ca_certs:
                kwargs["ca_certs"] = self._ca_certs
            self._manager = urllib3.PoolManager(
                num_pools=32, maxsize=self._maxsize, block=True, timeout=None, retries=_RETRIES, **kwargs
            )
            self._pid = os.getpid()
        return self._manager

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: t.Mapping[str, str],
        body: bytes | None,
        connect_timeout: float,
        read_timeout: float,
        stream: bool,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request; with ``stream`` the body is left unread for the caller."""
        manager = self.manager
        scheme, _, rest = url.partition("://")
        host, _, path = rest.partition("/")
        origin = f"{scheme}://{host}"
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = manager.connection_from_url(origin)
        timeout = self._timeouts.get((connect_timeout, read_timeout))
        if timeout is None:
            timeout = self._timeouts[(connect_timeout, read_timeout)] = urllib3.Timeout(
                connect=connect_timeout, read=read_timeout)
        try:
            return pool.urlopen(
                method,
                "/" + path,
                body=body,
                headers=headers,
                timeout=timeout,
                pool_timeout=self._pool_timeout,  # type: ignore[arg-type]  # a float works; the stub says int
                preload_content=not stream,
                decode_content=True,
                redirect=False,
                retries=_RETRIES,
                assert_same_host=False,
            )
        except MaxRetryError as exc:
            raise _mapped(exc.reason or exc, url) from exc
        except HTTPError as exc:
            raise _mapped(exc, url) from exc

    def clear(self) -> None:
        if self._manager is not None:
            self._manager.clear()


def _mapped(exc: BaseException, url: str) -> Exception:
    host = urllib3.util.parse_url(url).host
    if isinstance(exc, NewConnectionError):  # a subclass of ConnectTimeoutError: test it first
        return UpstreamUnreachable(f"cannot connect to {host}")
    if isinstance(exc, ConnectTimeoutError):
        return UpstreamTimeout(f"connecting to {host} timed out")
    if isinstance(exc, ReadTimeoutError):
        return UpstreamTimeout(f"{host} did not answer in time")
    if isinstance(exc, EmptyPoolError):
        return UpstreamUnreachable(f"no free connection to {host} (pool exhausted)")
    if isinstance(exc, SSLError):
        return UpstreamUnreachable(f"TLS error talking to {host}: {exc}")
    if isinstance(exc, ProtocolError):
        return UpstreamUnreachable(f"connection to {host} broke: {_short(exc)}")
    return UpstreamUnreachable(f"request to {host} failed: {_short(exc)}")


def _short(exc: BaseException) -> str:
    text = str(exc.args[0] if exc.args else exc)
    return text[:160]


def read_error(exc: BaseException) -> Exception:
    """Map an error raised while streaming a body (``read1``) like a request error."""
    if isinstance(exc, (UpstreamTimeout, UpstreamUnreachable)):
        return exc
    if isinstance(exc, ReadTimeoutError):
        return UpstreamTimeout("upstream stopped sending (read timeout)")
    return UpstreamUnreachable(f"upstream stream broke: {_short(exc)}")


STREAM_ERRORS: tuple[type[BaseException], ...] = (HTTPError, OSError)


def release(response: urllib3.BaseHTTPResponse) -> None:
    """Return a fully read response's connection to the pool."""
    response.release_conn()


def discard(response: urllib3.BaseHTTPResponse) -> None:
    """Close a partly read response so its connection is never reused half-read."""
    try:
        response.close()
    finally:
        response.release_conn()
