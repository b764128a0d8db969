"""The one place wsgiproxy does HTTP to SAP AI Core: a keep-alive pool per process.

The pool (:mod:`wsgiproxy.aicore.http11`, a minimal HTTP/1.1 client) is created on first use in
the process that uses it, so a preloaded app can be forked safely. Connection and protocol
failures become :class:`~wsgiproxy.errors.UpstreamUnreachable` and
:class:`~wsgiproxy.errors.UpstreamTimeout` there, and only there.

Streamed responses are read with ``read1`` (each read hands over what arrived, so every event of
a stream is relayed as it comes) and must be finished with :func:`release` or :func:`discard`.
The functions here take any :class:`UpstreamResponse` (the tests' fake transport returns its own).
"""

from __future__ import annotations

import typing as t

from .. import process
from ..errors import UpstreamTimeout, UpstreamUnreachable
from .http11 import READ_SIZE, Pool, Response, short_reason

__all__ = ["READ_SIZE", "STREAM_ERRORS", "Transport", "UpstreamResponse", "discard", "read_error", "release"]


class _Headers(t.Protocol):
    def get(self, name: str, default: t.Any = ..., /) -> t.Any: ...


class UpstreamResponse(t.Protocol):
    """What callers may use of an upstream response (:class:`~.http11.Response`, or a test double)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> _Headers: ...

    @property
    def data(self) -> bytes: ...

    def read1(self, amt: int = ..., /) -> bytes: ...

    def release_conn(self) -> None: ...

    def close(self) -> None: ...


class _Closable(t.Protocol):
    def release_conn(self) -> None: ...

    def close(self) -> None: ...


class Transport:
    """A lazily created, per-process connection pool with upstream errors mapped.

    :param maxsize: connections in use at once per upstream origin (like gunicorn's worker_connections).
    :param pool_timeout: seconds to wait for a free connection before giving up.
    :param ca_certs: CA bundle for HTTPS upstreams (else the system's).
    """

    def __init__(self, maxsize: int = 1000, pool_timeout: float = 30.0, ca_certs: str | None = None) -> None:
        self._maxsize = maxsize
        self._pool_timeout = pool_timeout
        self._ca_certs = ca_certs
        self._pool: Pool | None = None

    @property
    def pool(self) -> Pool:
        """This process's pool (a new one after a fork)."""
        pool = self._pool
        if pool is None or pool.pid != process.pid():
            pool = self._pool = Pool(self._maxsize, self._pool_timeout, self._ca_certs)
        return pool

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
    ) -> Response:
        """Send one request; with ``stream`` the body is left unread for the caller."""
        return self.pool.request(method, url, headers, body, connect_timeout, read_timeout, stream)

    def clear(self) -> None:
        if self._pool is not None:
            self._pool.clear()


def read_error(exc: BaseException) -> Exception:
    """Map an error raised while streaming a body (``read1``) like a request error."""
    if isinstance(exc, (UpstreamTimeout, UpstreamUnreachable)):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("upstream stopped sending (read timeout)")
    return UpstreamUnreachable(f"upstream stream broke: {short_reason(exc)}")


# What ``read1`` raises: OSError (TimeoutError, ssl.SSLError and http11.ResponseBroken included).
STREAM_ERRORS: tuple[type[BaseException], ...] = (OSError,)


def release(response: _Closable) -> None:
    """Finish a fully read response: its connection is already back in the pool (a no-op then);
    a response that was not read to its end is closed instead."""
    response.release_conn()


def discard(response: _Closable) -> None:
    """Close a partly read response so its connection is never reused half-read."""
    try:
        response.close()
    finally:
        response.release_conn()
