"""Hand-written test doubles (no mocks): a scripted upstream transport and canned responses."""

from __future__ import annotations

import io
import json
import typing as t
from dataclasses import dataclass, field

import urllib3


def response(status: int = 200, body: bytes | dict | str = b"", headers: dict[str, str] | None = None,
             stream: bool = False) -> urllib3.HTTPResponse:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    return urllib3.HTTPResponse(body=io.BytesIO(body), status=status, headers=headers or {},
                                preload_content=not stream)


class ChunkedBody(io.RawIOBase):
    """A body whose reads return the given pieces one at a time, then EOF or an error."""

    def __init__(self, pieces: list[bytes], error: BaseException | None = None) -> None:
        self.pieces = list(pieces)
        self.error = error
        self.closed_by_client = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: t.Any) -> int:
        if not self.pieces:
            if self.error is not None:
                raise self.error
            return 0
        piece = self.pieces.pop(0)
        buffer[: len(piece)] = piece
        return len(piece)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def close(self) -> None:
        self.closed_by_client = True
        super().close()


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
                connect_timeout: float, read_timeout: float, stream: bool) -> urllib3.BaseHTTPResponse:
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
