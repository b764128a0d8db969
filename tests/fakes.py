"""Hand-written test doubles (no mocks): a scripted upstream transport and canned responses."""

from __future__ import annotations

import json
import socket
import typing as t
from dataclasses import dataclass, field

from wsgiproxy.aicore.http11 import Headers


class FakeResponse:
    """An upstream response that behaves as :class:`wsgiproxy.aicore.http11.Response`, from prepared pieces.

    ``read1`` hands out one piece per call (at most ``amt`` bytes of it), then ``b""``; with
    ``error`` given, that error is raised where the end would be, as the real client raises
    ``TimeoutError`` on a read timeout and :class:`~wsgiproxy.aicore.http11.ResponseBroken` when
    the stream breaks. ``headers`` has lowercase names and a ``get`` that also finds mixed-case
    ones, like the real one's. ``discarded`` tells that the response was closed before its end
    (its connection would never be reused); ``done`` that it was read to its end.
    """

    def __init__(self, status: int = 200, pieces: t.Iterable[bytes] = (), headers: t.Mapping[str, str] | None = None,
                 error: BaseException | None = None) -> None:
        self.status = status
        self.headers = Headers({name.lower(): value for name, value in (headers or {}).items()})
        self.pieces = [piece for piece in pieces if piece]  # b"" would read as the end
        self.error = error
        self.done = False
        self.discarded = False
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        """The whole body (read on first use, then kept)."""
        if self._data is None:
            parts = []
            while chunk := self.read1():
                parts.append(chunk)
            self._data = b"".join(parts)
        return self._data

    def read1(self, amt: int = 65536, /) -> bytes:
        if self.done or self.discarded:
            return b""
        if self.pieces:
            piece = self.pieces[0]
            if len(piece) <= amt:
                return self.pieces.pop(0)
            self.pieces[0] = piece[amt:]
            return piece[:amt]
        if self.error is not None:
            try:
                raise self.error  # not through a local: the traceback's frame would hold it (a cycle)
            finally:
                self.error = None
        self.done = True
        return b""

    def release_conn(self) -> None:
        """A no-op once read to the end; a partly read response is closed, as the real one is."""
        if not self.done:
            self.close()

    def close(self) -> None:
        if not self.done:
            self.discarded = True


class PushableResponse(FakeResponse):
    """A :class:`FakeResponse` that can also be read without waiting, as the real one with a gevent
    socket: ``read_nowait`` gives ``None`` for a ``None`` piece (nothing arrived yet), and ``sock``
    is a (never connected) socket until the body ended."""

    def __init__(self, pieces: t.Iterable[bytes | None], error: BaseException | None = None) -> None:
        super().__init__(200, [], {"content-type": "text/event-stream"}, error)
        self.pieces = list(pieces)  # type: ignore[arg-type]  # None included
        self.read_timeout = 60.0
        self._sock: socket.socket | None = socket.socket()

    @property
    def sock(self) -> socket.socket | None:
        return None if self.done or self.discarded else self._sock

    def read_nowait(self, amt: int = 65536, /) -> bytes | None:
        if self.pieces and self.pieces[0] is None:
            self.pieces.pop(0)
            return None
        data = self.read1(amt)
        if not self.pieces and self.error is None:
            self.done = True  # the last bytes end the body, as the real response sees its framing end
            self.close()
        return data

    def close(self) -> None:
        super().close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def response(status: int = 200, body: bytes | dict | str = b"", headers: dict[str, str] | None = None) -> FakeResponse:
    """A response whose body (a dict is sent as JSON) comes in one piece."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    return FakeResponse(status, [body] if body else [], headers)


def stream_response(pieces: t.Iterable[bytes], content_type: str = "text/event-stream",
                    error: BaseException | None = None, status: int = 200) -> FakeResponse:
    """A streamed response: one ``read1`` per piece, then the end or ``error``."""
    return FakeResponse(status, pieces, {"content-type": content_type}, error)


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    stream: bool


@dataclass
class FakeTransport:
    """Answers each request with the next scripted response (or a callable's result)."""

    script: list[t.Any] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    token_answer: t.Any = None

    def request(self, method: str, url: str, *, headers: t.Mapping[str, str], body: bytes | None,
                connect_timeout: float, read_timeout: float, stream: bool) -> FakeResponse:
        self.sent.append(Sent(method, url, dict(headers), body, stream))
        if url.endswith("/oauth/token"):
            answer = self.token_answer or response(200, {"access_token": f"tok-{len(self.tokens())}",
                                                         "expires_in": 3600})
        else:
            answer = self.script.pop(0)
        if callable(answer):
            answer = answer()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def tokens(self) -> list[Sent]:
        return [s for s in self.sent if s.url.endswith("/oauth/token")]

    def calls(self) -> list[Sent]:
        return [s for s in self.sent if not s.url.endswith("/oauth/token")]


# --------------------------------------------------------------------------------------------
# A WSGI app for the HTTP server tests (tests/test_gevent_worker.py); gunicorn imports it as
# ``tests.fakes:wsgi_app``. Any other path echoes the request: JSON of ECHO_KEYS, the HTTP_*
# variables and the body it read.

ECHO_KEYS = ("REQUEST_METHOD", "PATH_INFO", "RAW_URI", "QUERY_STRING", "SERVER_PROTOCOL", "SERVER_NAME",
             "SERVER_PORT", "REMOTE_ADDR", "CONTENT_LENGTH", "CONTENT_TYPE", "wsgi.url_scheme")
STREAM_CHUNKS = (b"first\n", b"second\n", b"third\n")


def wsgi_app(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/pushed":  # a Pushable body fed by a greenlet: ?n=events&gap=seconds&size=bytes&timeout=seconds
        query = dict(pair.partition("=")[::2] for pair in environ["QUERY_STRING"].split("&") if pair)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return PushedBody.fed(int(query.get("n", "3")), float(query.get("gap", "0")), int(query.get("size", "8")),
                              float(query.get("timeout", "10")))
    if path == "/pushed-closes":  # how the PushedBody objects of this worker ended, in order
        data = json.dumps(PushedBody.ends).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]
    if path == "/stream":  # no Content-Length: chunked for HTTP/1.1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter(STREAM_CHUNKS)
    if path == "/no-content":  # never reads the request body
        start_response("204 No Content", [("X-Route", "no-content")])
        return []
    if path == "/fail-before":
        raise RuntimeError("the app failed before start_response")
    if path == "/fail-after":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _fail_after_first_chunk()
    body = environ["wsgi.input"].read()
    payload = {key: environ.get(key) for key in ECHO_KEYS}
    payload["headers"] = {key: value for key, value in environ.items() if key.startswith("HTTP_")}
    payload["body"] = body.decode("latin-1")
    data = json.dumps(payload).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _fail_after_first_chunk() -> t.Iterator[bytes]:
    yield STREAM_CHUNKS[0]
    raise RuntimeError("the app failed after its first chunk")


def pushed_event(number: int, size: int) -> bytes:
    """The ``number``-th event a :class:`PushedBody` gets: ``size`` bytes (at least its number), ``\n``-terminated."""
    return (b"%d:" % number).ljust(size - 1, b"x") + b"\n"


class PushedBody:
    """A :class:`wsgiproxy.streaming.Pushable` body that relays what arrives on a socket, as is.

    ``step`` reads without waiting; the socket's end is the body's end; ``expire`` ends it with
    ``b"expired\n"``. Iterated (by a server that cannot push) it waits for the socket instead.
    How each one ended (``"complete"``, ``"expired"``, ``"iterated"`` or ``"cut"``) is appended to
    :attr:`ends` when it is closed.
    """

    ends: t.ClassVar[list[str]] = []

    def __init__(self, sock: t.Any, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.over = False
        self.steps = 0
        self.how = "open"

    @classmethod
    def fed(cls, events: int, gap: float, size: int, timeout: float) -> PushedBody:
        """A body whose socket gets ``events`` events of ``size`` bytes, ``gap`` seconds apart, from a greenlet."""
        import gevent
        from gevent import socket

        ours, theirs = socket.socketpair()

        def feed() -> None:
            try:
                for number in range(events):
                    if gap:
                        gevent.sleep(gap)
                    theirs.sendall(pushed_event(number, size))
                if timeout < 1:  # stay silent past the body's timeout: it must expire
                    gevent.sleep(timeout * 3)
            except OSError:
                pass
            finally:
                theirs.close()

        gevent.spawn(feed)
        return cls(ours, timeout)

    def upstream(self) -> tuple[t.Any, float] | None:
        return None if self.over else (self.sock, self.timeout)

    def step(self) -> bytes:
        self.steps += 1
        self.sock.settimeout(0.0)
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return b""
        if not data:
            self.over = True
            self.how = "complete"
        return data

    def expire(self) -> bytes:
        self.over = True
        self.how = "expired"
        return b"expired\n"

    def __iter__(self) -> t.Iterator[bytes]:
        while data := self.sock.recv(65536):
            yield data
        self.over = True
        self.how = "iterated"

    def close(self) -> None:
        PushedBody.ends.append(self.how if self.over else "cut")
        self.sock.close()
