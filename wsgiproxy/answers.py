"""Plain WSGI answers: chat, messages and embeddings, streamed or not, and the small endpoints.

werkzeug's ``Response`` builds a ``Headers`` object, checks and rewrites headers and wraps the body
on every call; an answer the proxy relays needs none of that, and importing werkzeug would cost
every worker megabytes it only needs for the rare request outside the exact-route table
(:mod:`wsgiproxy.proxy`). The GET endpoints (``/health``, ``/metrics``, ``/v1/models``, ``/``) answer
with :class:`Reply`, which sends no body to ``HEAD`` as werkzeug did; errors are
:class:`~wsgiproxy.errors.ApiError`, which renders itself the same way.
"""

from __future__ import annotations

import typing as t
from http import HTTPStatus

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
SSE_HEADERS = (("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
               ("X-Accel-Buffering", "no"))


def status_line(status: int) -> str:
    """``"404 Not Found"``: the status line a WSGI app passes to ``start_response``."""
    return _STATUS_LINES.get(status) or f"{status} Unknown"


class Answer:
    """A WSGI app answering one prepared response: a complete body or an iterable (a stream)."""

    __slots__ = ("_status", "_headers", "_body")

    def __init__(self, status: int, headers: t.Iterable[tuple[str, str]], body: bytes | t.Iterable[bytes]) -> None:
        self._status = status_line(status)
        if isinstance(body, bytes):
            self._headers = [*headers, ("Content-Length", str(len(body)))]
            self._body: t.Iterable[bytes] = (body,)
        else:
            self._headers = list(headers)
            self._body = body

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        start_response(self._status, self._headers.copy())
        return self._body


class Reply(Answer):
    """An :class:`Answer` for a route that also answers ``HEAD``: the same status and headers
    (``Content-Length`` included), no body."""

    __slots__ = ()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        start_response(self._status, self._headers.copy())
        return () if environ.get("REQUEST_METHOD") == "HEAD" else self._body


def json_answer(body: bytes, status: int = 200, content_type: str = "application/json") -> Answer:
    return Answer(status, (("Content-Type", content_type),), body)


def sse_answer(events: t.Iterable[bytes]) -> Answer:
    """A stream of server-sent events; ``events`` is closed by the server when the client goes away."""
    return Answer(200, SSE_HEADERS, events)
