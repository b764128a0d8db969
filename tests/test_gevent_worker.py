"""The lean gevent worker (servers/gevent_worker.py): its request body reader, then its HTTP/1.1 on the wire.

Unit tests drive ``_Input`` (``wsgi.input``) with a fake socket that hands out prepared pieces,
so every split of a body over ``recv`` calls is covered, and what is left after the body (the
next pipelined request) is checked to the byte. Integration tests start the real gunicorn with
``conf/gunicorn.conf.py`` and the test app ``tests.fakes:wsgi_app`` on a free 127.0.0.1 port
(one worker, once per module) and talk to it over raw sockets, so framing is checked as sent.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _stack import GUNICORN_CONF, ROOT, TLS, Server, Stack, base_env, free_port, make_tls, spawn, tool, wait_ready
from gunicorn.config import Config
from gunicorn.glogging import Logger
from hypothesis import given, settings
from hypothesis import strategies as st

from servers.gevent_worker import _DRAIN_LIMIT, _MAX_TRAILERS, BadRequest, LeanGeventWorker, _ClientGone, _Input
from tests.fakes import STREAM_CHUNKS, pushed_event

integration = pytest.mark.integration

NEXT = b"GET /next HTTP/1.1\r\nHost: test\r\n\r\n"  # the pipelined request after a body
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


# --------------------------------------------------------------------------------------------
# the request head parser, in process


@pytest.fixture
def parser() -> t.Iterator[LeanGeventWorker]:
    cfg = Config()
    worker = LeanGeventWorker(0, os.getpid(), [], None, 30, cfg, Logger(cfg))
    worker._configure()
    yield worker
    worker.tmp.close()


def parse(worker: LeanGeventWorker, line: bytes, *headers: bytes) -> dict[str, t.Any]:
    head = line + b"\r\n" + b"".join(header + b"\r\n" for header in headers)
    return worker._parse(head, b"", {}, None, "http", True)[0]  # type: ignore[arg-type]


def test_a_repeated_request_line_is_parsed_once_and_the_cache_is_bounded(parser: LeanGeventWorker) -> None:
    first = parse(parser, b"POST /v1/a%20b?x=1#f HTTP/1.1", b"Host: h")
    again = parse(parser, b"POST /v1/a%20b?x=1#f HTTP/1.1", b"Host: h")
    assert first["PATH_INFO"] == again["PATH_INFO"] == "/v1/a b" and again["QUERY_STRING"] == "x=1"
    assert first["RAW_URI"] == "/v1/a%20b?x=1#f" and again["REQUEST_METHOD"] == "POST"
    assert len(parser._request_lines) == 1
    for number in range(600):
        environ = parse(parser, b"GET /n/%d HTTP/1.0" % number)
        assert environ["PATH_INFO"] == f"/n/{number}" and environ["SERVER_PROTOCOL"] == "HTTP/1.0"
        assert len(parser._request_lines) <= 256


@pytest.mark.parametrize(("line", "status"), [
    (b"GET / HTTP/2.0", 505), (b"GET /  HTTP/1.1", 400), (b"get / HTTP/1.1", 400), (b"GET x HTTP/1.1", 400),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1", 414)])
def test_a_bad_request_line_is_refused_every_time_it_comes(parser: LeanGeventWorker, line: bytes,
                                                           status: int) -> None:
    parse(parser, b"GET / HTTP/1.1")
    for _ in range(2):
        with pytest.raises(BadRequest) as refused:
            parse(parser, line)
        assert refused.value.status == status
    assert list(parser._request_lines) == [b"GET / HTTP/1.1"]


def test_headers_the_parser_acts_on_keep_their_meaning_when_cached(parser: LeanGeventWorker) -> None:
    for _ in range(2):
        environ = parse(parser, b"GET / HTTP/1.1", b"Connection: close", b"X_Dropped: 1", b"X-A: 1", b"x-a: 2",
                        b"Content-Length: 4", b"Content-Type: text/plain")
        assert "HTTP_X_DROPPED" not in environ and environ["HTTP_X_A"] == "1,2"
        assert environ["CONTENT_LENGTH"] == "4" and environ["CONTENT_TYPE"] == "text/plain"
        with pytest.raises(BadRequest):
            parse(parser, b"GET / HTTP/1.1", b"Content-Length: 4", b"Content-Length: 4")
        with pytest.raises(BadRequest):
            parse(parser, b"GET / HTTP/1.1", b"Expect: nothing")


HEADER_PIECES = [b"Host: h\r\n", b"Content-Length: 4\r\n", b"Content-Length: x\r\n", b"Transfer-Encoding: gzip\r\n",
                 b"Expect: later\r\n", b"X-A:\tb c\r\n", b"X_B: 1\r\n", b"Bad Name: 1\r\n", b" folded\r\n",
                 b"no colon\r\n", b"X: a\rb\r\n", b"X: a\nb\r\n", b"X: 1\n", b":\r\n", b"\r\n", b"X-\x00: 1\r\n",
                 b"X: \x7f\r\n", b"X: \xff\r\n", b"Y:", b"\r", b"\n", b"Z: 1\r\n"]


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(st.sampled_from(HEADER_PIECES), max_size=6))
def test_a_header_block_is_refused_as_malformed_exactly_when_it_is_not_only_header_lines(pieces: list[bytes]) -> None:
    cfg = Config()
    worker = LeanGeventWorker(0, os.getpid(), [], None, 30, cfg, Logger(cfg))
    worker._configure()
    block = b"".join(pieces)
    try:
        worker._parse(b"GET / HTTP/1.1\r\n" + block, b"", {}, None, "http", True)  # type: ignore[arg-type]
        outcome = None
    except BadRequest as refused:
        outcome = (refused.status, refused.reason)
    finally:
        worker.tmp.close()
    well_formed = re.fullmatch(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*", block) is not None
    assert (outcome == (400, "Invalid header line")) == (not well_formed), (block, outcome)


@pytest.mark.parametrize("line", [b"a" * 60_000 + b"\r\n", b"X: " + b"a" * 60_000 + b"\rb\r\n",
                                  b"Host: h\r\n" * 50 + b"a" * 60_000 + b"\r\n"])
def test_a_long_malformed_header_line_is_refused_at_once(parser: LeanGeventWorker, line: bytes) -> None:
    # Scanning for header lines anywhere in a malformed block retries at every offset of a long run
    # of name characters: 60 KB would take tens of seconds. The block is matched whole first.
    parser._limit_field_size = sys.maxsize
    started = time.monotonic()
    with pytest.raises(BadRequest) as refused:
        parse(parser, b"GET / HTTP/1.1", line[:-2])
    assert refused.value.status == 400 and time.monotonic() - started < 2.0


# --------------------------------------------------------------------------------------------
# _Input with a fake socket


class FakeSocket:
    """What ``_Input`` uses of a socket: ``recv`` hands out the pieces in order (then ``b""``), ``sendall`` records."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = [piece for piece in pieces if piece]
        self.sent: list[bytes] = []
        self.recv_calls = 0
        self.eof_reads = 0  # recv calls after the last piece: on a real socket, a wait for bytes that never come

    def recv(self, size: int) -> bytes:
        self.recv_calls += 1
        if not self.pieces:
            self.eof_reads += 1
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > size:
            piece, rest = piece[:size], piece[size:]
            self.pieces.insert(0, rest)
        return piece

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def unread(self) -> bytes:
        return b"".join(self.pieces)


def split(data: bytes, cuts: t.Iterable[int]) -> list[bytes]:
    """``data`` cut at the given positions (any order, duplicates and out-of-range ones ignored); no empty piece."""
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < len(data)}), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds) if end > start]


def one_byte_pieces(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def reading(body: _Input, how: str) -> bytes:
    """The whole body, read the way a WSGI app might."""
    if how == "read":
        return body.read()
    if how == "read(None)":
        return body.read(None)
    if how == "read(3)":
        return b"".join(iter(lambda: body.read(3), b""))
    if how == "readline":
        return b"".join(iter(body.readline, b""))
    if how == "readline(5)":
        return b"".join(iter(lambda: body.readline(5), b""))
    if how == "readlines":
        return b"".join(body.readlines())
    if how == "iter":
        return b"".join(body)
    raise AssertionError(how)


HOW = ["read", "read(None)", "read(3)", "readline", "readline(5)", "readlines", "iter"]


def check_body(body: _Input, sock: FakeSocket, how: str, expected: bytes, after: bytes, where: object) -> None:
    assert reading(body, how) == expected, where
    assert body.read() == b"" and body.readline() == b"" and body.read(10) == b"", where  # the end stays the end
    rest = body.finish()
    assert rest is not None and rest + sock.unread() == after, where
    assert sock.eof_reads == 0, f"{where}: read past the body"
    assert sock.sent == [], where


BODY = b"line one\nline two\r\nend"


@pytest.mark.parametrize("how", HOW)
def test_content_length_body_split_at_every_position(how: str) -> None:
    stream = BODY + NEXT
    for at in range(len(stream) + 1):
        sock = FakeSocket(stream[at:])  # the head's recv left stream[:at]
        check_body(_Input(sock, stream[:at], len(BODY), False), sock, how, BODY, NEXT, ("buffered", at))
        sock = FakeSocket(*split(stream, [at]))  # nothing buffered, two recv pieces
        check_body(_Input(sock, b"", len(BODY), False), sock, how, BODY, NEXT, ("pieces", at))


@pytest.mark.parametrize("how", HOW)
def test_content_length_body_in_one_byte_pieces_is_never_read_past(how: str) -> None:
    sock = FakeSocket(*one_byte_pieces(BODY))  # no next request: one recv too many would wait forever
    check_body(_Input(sock, b"", len(BODY), False), sock, how, BODY, b"", "one-byte")
    sock = FakeSocket(*one_byte_pieces(BODY + NEXT))
    check_body(_Input(sock, b"", len(BODY), False), sock, how, BODY, NEXT, "one-byte + next")


def test_no_body_leaves_the_buffer_to_the_next_request() -> None:
    sock = FakeSocket(b"more")
    body = _Input(sock, NEXT, 0, False)
    assert body.read() == b"" and body.readline() == b""
    assert body.finish() == NEXT and sock.recv_calls == 0


def test_content_length_body_cut_short_by_the_client() -> None:
    body = _Input(FakeSocket(b"abc"), b"de", 10, False)
    with pytest.raises(_ClientGone):
        body.read()


# A chunked body with chunk extensions (one quoted, with a ';' inside) and a trailer section.
CHUNKED = (b"5;name=value\r\nhello\r\n"
           b"1 ; quoted=\"a;b\"\r\n,\r\n"
           b"a\r\n world, 10\r\n"
           b"0;last\r\nX-Trailer: 1\r\nChecksum: abc\r\n\r\n")
CHUNKED_BODY = b"hello, world, 10"


@pytest.mark.parametrize("how", HOW)
def test_chunked_body_split_at_every_position(how: str) -> None:
    stream = CHUNKED + NEXT
    for at in range(len(stream) + 1):
        sock = FakeSocket(stream[at:])
        check_body(_Input(sock, stream[:at], -1, False), sock, how, CHUNKED_BODY, NEXT, ("buffered", at))
        sock = FakeSocket(*split(stream, [at]))
        check_body(_Input(sock, b"", -1, False), sock, how, CHUNKED_BODY, NEXT, ("pieces", at))


@pytest.mark.parametrize("how", HOW)
def test_chunked_body_in_one_byte_pieces(how: str) -> None:
    sock = FakeSocket(*one_byte_pieces(CHUNKED))
    check_body(_Input(sock, b"", -1, False), sock, how, CHUNKED_BODY, b"", "one-byte")
    sock = FakeSocket(*one_byte_pieces(CHUNKED + NEXT))
    check_body(_Input(sock, b"", -1, False), sock, how, CHUNKED_BODY, NEXT, "one-byte + next")


def test_empty_chunked_body() -> None:
    sock = FakeSocket()
    body = _Input(sock, b"0\r\n\r\n" + NEXT, -1, False)
    assert body.read() == b""
    assert body.finish() == NEXT and sock.recv_calls == 0


@st.composite
def chunked_streams(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A body and its chunked encoding: random chunk sizes, hex spellings, extensions and trailers."""
    body = draw(st.binary(max_size=300) | st.text(alphabet="ab\r\n", max_size=60).map(str.encode))
    chunks = split(body, draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=10)))
    extension = st.sampled_from([b"", b";a=1", b" ; name=\"v;w\"", b"\t;x", b";" + b"e" * 100])
    encoded = []
    for chunk in chunks:
        size = format(len(chunk), draw(st.sampled_from(["x", "X", "04x"]))).encode()
        encoded.append(size + draw(extension) + b"\r\n" + chunk + b"\r\n")
    trailers = draw(st.lists(st.sampled_from([b"X-Trailer: 1\r\n", b"Checksum: sha=abc\r\n", b"Empty:\r\n"]),
                             max_size=3))
    encoded.append(b"0" + draw(extension) + b"\r\n" + b"".join(trailers) + b"\r\n")
    return body, b"".join(encoded)


@settings(max_examples=300, deadline=None)
@given(chunked_streams(), st.sampled_from([NEXT, b""]), st.data())
def test_chunked_body_random_chunkings_and_recv_splits(encoded: tuple[bytes, bytes], after: bytes,
                                                      data: st.DataObject) -> None:
    body, wire = encoded
    stream = wire + after
    buffered = data.draw(st.integers(0, len(stream)), label="buffered")
    cuts = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12), label="recv cuts")
    how = data.draw(st.sampled_from(HOW), label="how")
    sock = FakeSocket(*split(stream[buffered:], cuts))
    check_body(_Input(sock, stream[:buffered], -1, False), sock, how, body, after, "random")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_content_length_random_recv_splits(body: bytes, data: st.DataObject) -> None:
    stream = body + NEXT
    buffered = data.draw(st.integers(0, len(stream)), label="buffered")
    cuts = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12), label="recv cuts")
    how = data.draw(st.sampled_from(HOW), label="how")
    sock = FakeSocket(*split(stream[buffered:], cuts))
    check_body(_Input(sock, stream[:buffered], len(body), False), sock, how, body, NEXT, "random")


LINES = [b"alpha\n", b"beta gamma\n", b"\n", b"delta without newline"]


def lines_chunked() -> bytes:
    """LINES as chunks that cut every line somewhere other than at its newline."""
    body = b"".join(LINES)
    return b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in split(body, [3, 10, 11, 19, 25])) + b"0\r\n\r\n"


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_readline_readlines_and_iteration_across_chunk_boundaries(chunked: bool) -> None:
    body = b"".join(LINES)
    stream = (lines_chunked() if chunked else body) + NEXT

    def fresh() -> tuple[_Input, FakeSocket]:
        sock = FakeSocket(*one_byte_pieces(stream[7:]))
        return _Input(sock, stream[:7], -1 if chunked else len(body), False), sock

    reader, sock = fresh()
    assert [reader.readline() for _ in range(5)] == [*LINES, b""]
    assert reader.finish() + sock.unread() == NEXT
    reader, sock = fresh()
    assert reader.readlines() == LINES
    assert reader.finish() + sock.unread() == NEXT
    reader, sock = fresh()
    assert list(reader) == LINES
    assert reader.finish() + sock.unread() == NEXT

    reader, sock = fresh()
    assert reader.readlines(8) == LINES[:2]  # stops once the hint is reached
    assert reader.read() == b"".join(LINES[2:])

    reader, sock = fresh()
    assert reader.readline(4) == b"alph"  # a size limit cuts a line
    assert reader.readline() == b"a\n"
    assert reader.read(4) == b"beta"  # read() continues after what readline() held back
    assert reader.readline(100) == b" gamma\n"
    assert reader.readline(0) == b""
    assert list(reader) == LINES[2:]
    assert reader.finish() + sock.unread() == NEXT
    assert sock.eof_reads == 0


TOO_LONG = b"x" * (_MAX_TRAILERS + 10)
MALFORMED = {
    "not-hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "empty-size": b"\r\nhello\r\n0\r\n\r\n",
    "negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "0x-prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "space-without-extension": b"5 \r\nhello\r\n0\r\n\r\n",
    "17-hex-digits": b"00000000000000005\r\nhello\r\n0\r\n\r\n",
    "data-not-followed-by-crlf": b"5\r\nhelloX\r\n0\r\n\r\n",
    "data-longer-than-size": b"5\r\nhello, world\r\n0\r\n\r\n",
    "size-line-too-long": b"5;" + TOO_LONG + b"\r\nhello\r\n0\r\n\r\n",
    "size-line-without-end": b"5;" + TOO_LONG,
    "trailers-too-large": b"0\r\n" + (b"X-T: " + b"t" * 200 + b"\r\n") * 50 + b"\r\n",
    "trailer-line-too-long": b"0\r\nX-T: " + TOO_LONG + b"\r\n\r\n",
}


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("arrival", ["buffered", "one-recv", "one-byte-pieces"])
def test_malformed_chunked_framing_is_a_bad_request(wire: bytes, arrival: str) -> None:
    """Refused with 400 however the bytes arrive (a limit must not depend on the recv split)."""
    if arrival == "buffered":
        body = _Input(FakeSocket(), wire, -1, False)
    elif arrival == "one-recv":
        body = _Input(FakeSocket(wire), b"", -1, False)
    else:
        body = _Input(FakeSocket(*one_byte_pieces(wire)), b"", -1, False)
    with pytest.raises(BadRequest) as refused:
        body.read()
    assert refused.value.status == 400
    assert isinstance(refused.value, ValueError)  # what an app reading wsgi.input can expect
    assert body.finish() is None  # where the next request would start is unknown: close


@pytest.mark.parametrize("arrival", ["buffered", "one-recv", "one-byte-pieces"])
def test_framing_lines_at_the_length_limit_are_served(arrival: str) -> None:
    size_line = b"5;" + b"e" * (_MAX_TRAILERS - 2)
    trailer = b"X-T: " + b"t" * (_MAX_TRAILERS - 5)
    assert len(size_line) == len(trailer) == _MAX_TRAILERS
    wire = size_line + b"\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n" + NEXT
    if arrival == "buffered":
        sock = FakeSocket()
        body = _Input(sock, wire, -1, False)
    else:
        sock = FakeSocket(wire) if arrival == "one-recv" else FakeSocket(*one_byte_pieces(wire))
        body = _Input(sock, b"", -1, False)
    assert body.read() == b"hello"
    assert body.finish() + sock.unread() == NEXT


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_100_continue_is_sent_once_when_the_app_first_reads_from_the_socket(chunked: bool) -> None:
    wire = b"5\r\nhello\r\n0\r\n\r\n" if chunked else b"hello"
    sock = FakeSocket(*split(wire + NEXT, [2, 4, 9]))
    body = _Input(sock, b"", -1 if chunked else 5, True)
    assert sock.sent == [] and sock.recv_calls == 0  # nothing before the app reads
    assert body.read(0) == b"" and sock.sent == []
    assert body.read(2) == b"he"
    assert sock.sent == [CONTINUE]
    assert body.readline() == b"llo" and body.read() == b""
    assert sock.sent == [CONTINUE]  # once
    assert body.finish() + sock.unread() == NEXT
    assert sock.sent == [CONTINUE]


def test_100_continue_not_sent_while_the_body_comes_from_the_buffer() -> None:
    sock = FakeSocket(b"lo" + NEXT)
    body = _Input(sock, b"hel", 5, True)  # the client sent part of the body without waiting
    assert body.read(3) == b"hel" and sock.sent == []
    assert body.read() == b"lo" and sock.sent == [CONTINUE]  # the first read from the socket

    sock = FakeSocket()
    body = _Input(sock, b"hello" + NEXT, 5, True)
    assert body.read() == b"hello" and sock.sent == []
    assert body.finish() == NEXT

    sock = FakeSocket()
    body = _Input(sock, NEXT, 0, True)  # no body: nothing to continue
    assert body.read() == b"" and body.finish() == NEXT and sock.sent == []


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_finish_refuses_to_keep_a_connection_whose_expected_body_was_never_read(chunked: bool) -> None:
    sock = FakeSocket(b"5\r\nhello\r\n0\r\n\r\n" if chunked else b"hello")
    body = _Input(sock, b"", -1 if chunked else 5, True)
    assert body.finish() is None  # the client still waits for 100 Continue: the body will never come
    assert sock.sent == [] and sock.recv_calls == 0


def test_finish_drains_an_unread_body_and_returns_the_next_request() -> None:
    sock = FakeSocket(*split(b"hello" + NEXT, [3]))
    body = _Input(sock, b"", 5, False)
    assert body.finish() + sock.unread() == NEXT

    sock = FakeSocket(*split(CHUNKED + NEXT, [11, 40]))
    body = _Input(sock, b"", -1, False)
    assert body.read(3) == b"hel"
    assert body.finish() + sock.unread() == NEXT

    sock = FakeSocket(NEXT)
    body = _Input(sock, b"line one\nline two", 17, False)
    assert body.readline() == b"line one\n"  # what readline held back is drained too
    assert body.finish() + sock.unread() == NEXT


def test_finish_closes_when_the_unread_body_exceeds_the_drain_limit() -> None:
    sock = FakeSocket(b"x" * _DRAIN_LIMIT + NEXT)
    assert _Input(sock, b"", _DRAIN_LIMIT, False).finish() + sock.unread() == NEXT  # at the limit: drained

    sock = FakeSocket(b"x" * (_DRAIN_LIMIT + 1) + NEXT)
    assert _Input(sock, b"", _DRAIN_LIMIT + 1, False).finish() is None

    chunk = b"x" * 65536
    chunked = b"%x\r\n%b\r\n" % (len(chunk), chunk) * 17 + b"0\r\n\r\n"
    sock = FakeSocket(chunked + NEXT)
    assert _Input(sock, b"", -1, False).finish() is None


# --------------------------------------------------------------------------------------------
# On the wire: real gunicorn with conf/gunicorn.conf.py and tests.fakes:wsgi_app

APP = "tests.fakes:wsgi_app"
# The conf's on_starting hook loads the proxy's settings: one subaccount from these variables
# (never contacted) and an empty config file keep any config.json in the checkout out of it.
AICORE_ENV = {"AICORE_CLIENT_ID": "id", "AICORE_CLIENT_SECRET": "secret", "AICORE_AUTH_URL": "http://127.0.0.1:9",
              "AICORE_BASE_URL": "http://127.0.0.1:9", "AICORE_DEPLOYMENTS": "gpt-4o=d1"}


def serve(stack: Stack, name: str, extra_env: t.Mapping[str, str] | None = None, conf: Path = GUNICORN_CONF,
          tls: TLS | None = None) -> Server:
    """``gunicorn -c conf/gunicorn.conf.py tests.fakes:wsgi_app``: one worker on a free 127.0.0.1 port."""
    directory = stack.tmp_path / name
    directory.mkdir()
    config = directory / "config.json"
    config.write_text("{}")
    port = free_port()
    env = {"WSGIPROXY_BIND": f"127.0.0.1:{port}", "WSGIPROXY_WORKERS": "1", "WSGIPROXY_GRACEFUL_TIMEOUT": "2",
           "WSGIPROXY_ACCESSLOG": "off", "WSGIPROXY_CONFIG": str(config), **AICORE_ENV, **(extra_env or {})}
    log = directory / "gunicorn.log"
    tls_args = ["--certfile", str(tls.cert_file), "--keyfile", str(tls.key_file)] if tls else []
    process = spawn(tool("gunicorn") + ["-c", str(conf), *tls_args, APP], log, base_env(env), name)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    return stack.track(wait_ready(Server(process, log, name, url), 30, ca_file=tls.ca_file if tls else None))


@pytest.fixture(scope="module")
def access_log(stack_m: Stack) -> Path:
    return stack_m.tmp_path / "access.log"


@pytest.fixture(scope="module")
def lean(stack_m: Stack, access_log: Path) -> Server:
    """The shipped default: the lean worker, trusting X-Forwarded-* from 127.0.0.1, keep-alive 5 s."""
    return serve(stack_m, "lean", {"WSGIPROXY_ACCESSLOG": str(access_log)})


@pytest.fixture(scope="module")
def lean_untrusting(stack_m: Stack) -> Server:
    """The lean worker trusting another address only, with a 1 s keep-alive."""
    return serve(stack_m, "lean-untrusting", {"WSGIPROXY_FORWARDED_ALLOW_IPS": "10.0.0.1", "WSGIPROXY_KEEPALIVE": "1"})


@pytest.fixture(scope="module", params=["0.1", "0"], ids=["paced-hard", "unpaced"])
def lean_pacing(request: pytest.FixtureRequest, stack_m: Stack) -> Server:
    """The lean worker pacing its relays after 0.1 ms of them per loop turn, or not at all."""
    return serve(stack_m, f"lean-slice-{request.param}", {"WSGIPROXY_RELAY_SLICE_MS": request.param})


@pytest.fixture(scope="module")
def stock(stack_m: Stack) -> Server:
    return serve(stack_m, "stock", {"WSGIPROXY_WORKER_CLASS": "gevent"})


@dataclass
class Reply:
    version: str
    status: int
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytes = b""
    raw: bytes = b""  # head and body as sent, framing included
    trailer: bytes = field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return ",".join(values) if values else None

    def json(self) -> t.Any:
        return json.loads(self.body)


class Wire:
    """A raw client connection to a server: bytes out, each response read and parsed by hand."""

    def __init__(self, server: Server, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"the server closed the connection; unparsed: {self.buf[:300]!r}")
        self.buf += data

    def until(self, marker: bytes) -> bytes:
        """The bytes up to and including ``marker``."""
        while (end := self.buf.find(marker)) < 0:
            self._fill()
        end += len(marker)
        data, self.buf = self.buf[:end], self.buf[end:]
        return data

    def take(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def rest(self) -> bytes:
        """Everything until the server closes the connection (a reset counts as a close)."""
        data, self.buf = self.buf, b""
        while True:
            try:
                piece = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not piece:
                return data
            data += piece

    def closed(self, wait: float | None = None) -> bool:
        """Whether the server closes the connection within ``wait`` seconds, sending nothing more."""
        if self.buf:
            return False
        self.sock.settimeout(self.timeout if wait is None else wait)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        self.buf += data
        return not data

    def response(self, method: str = "GET") -> Reply:
        head = self.until(b"\r\n\r\n")
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, _ = (status_line + " ").split(" ", 2)
        headers = []
        for line in lines:
            name, colon, value = line.partition(":")
            assert colon and name == name.strip(), f"malformed response header line {line!r}"
            headers.append((name.lower(), value.strip()))
        reply = Reply(version, int(status), headers, raw=head)
        if method == "HEAD" or reply.status < 200 or reply.status in (204, 304):
            return reply
        if (reply.header("transfer-encoding") or "").lower() == "chunked":
            while True:
                line = self.until(b"\r\n")
                reply.raw += line
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while (line := self.until(b"\r\n")) != b"\r\n":
                        reply.trailer += line
                    reply.raw += reply.trailer + line
                    return reply
                data = self.take(size + 2)
                assert data.endswith(b"\r\n"), f"chunk data not followed by CRLF: {data[-20:]!r}"
                reply.raw += data
                reply.body += data[:-2]
        length = reply.header("content-length")
        reply.body = self.take(int(length)) if length is not None else self.rest()
        reply.raw += reply.body
        return reply

    def exchange(self, data: bytes, method: str = "GET") -> Reply:
        self.send(data)
        return self.response(method)


def request(method: str = "GET", path: str = "/", *headers: str, body: bytes = b"", version: str = "HTTP/1.1",
            length: bool = True) -> bytes:
    """A request's bytes; ``Content-Length`` is added for a body unless ``length`` is false."""
    lines = [f"{method} {path} {version}", "Host: test", *headers]
    if body and length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def assert_kept(wire: Wire, reply: Reply) -> None:
    assert reply.header("connection") in (None, "keep-alive"), reply
    assert not wire.closed(0.2), "the server closed a connection it should keep"


def assert_closed(wire: Wire, reply: Reply) -> None:
    assert reply.header("connection") == "close", reply
    assert wire.closed(), "the server kept a connection it should close"


@integration
def test_startup_log_names_the_lean_worker(lean: Server) -> None:
    log = lean.output()
    assert "Using worker: servers.gevent_worker.LeanGeventWorker" in log, log[-2000:]
    port = lean.url.rsplit(":", 1)[1]
    assert re.search(rf"listening on http://127\.0\.0\.1:{port}; 1 gevent \(lean HTTP/1\.1\) worker", log), log[-2000:]


@integration
def test_keep_alive_serves_three_requests_on_one_connection(lean: Server) -> None:
    with Wire(lean) as wire:
        for i in range(3):
            reply = wire.exchange(request("POST", f"/keep/{i}", body=b"n=%d" % i))
            assert reply.status == 200 and reply.version == "HTTP/1.1"
            assert reply.json()["PATH_INFO"] == f"/keep/{i}" and reply.json()["body"] == f"n={i}"
            assert reply.header("date") and reply.header("content-length") == str(len(reply.body))
            assert_kept(wire, reply)
        reply = wire.exchange(request("GET", "/last", "Connection: close"))  # the client ends it
        assert reply.status == 200
        assert_closed(wire, reply)


@integration
def test_pipelined_requests_are_answered_in_order(lean: Server) -> None:
    with Wire(lean) as wire:
        wire.send(request("GET", "/p1") + request("POST", "/p2", body=b"two") + b"\r\n"  # an empty line: ignored
                  + request("GET", "/stream")
                  + request("POST", "/p4", "Transfer-Encoding: chunked", body=chunked(b"fo", b"ur"), length=False)
                  + request("HEAD", "/p5") + request("GET", "/p6"))
        replies = [wire.response(), wire.response(), wire.response(), wire.response(), wire.response("HEAD"),
                   wire.response()]
        assert [reply.status for reply in replies] == [200] * 6
        assert replies[0].json()["PATH_INFO"] == "/p1"
        assert replies[1].json()["PATH_INFO"] == "/p2" and replies[1].json()["body"] == "two"
        assert replies[2].body == b"".join(STREAM_CHUNKS)
        assert replies[3].json()["PATH_INFO"] == "/p4" and replies[3].json()["body"] == "four"
        assert replies[4].body == b"" and int(replies[4].header("content-length") or 0) > 0
        assert replies[5].json()["PATH_INFO"] == "/p6"
        assert_kept(wire, replies[5])


@integration
def test_chunked_request_body_in_pieces(lean: Server) -> None:
    with Wire(lean) as wire:
        wire.send(request("POST", "/chunked", "Transfer-Encoding: chunked", "Content-Type: text/plain"))
        for piece in (b"5;ext=1\r\nhel", b"lo\r\n", b"7\r\n, world\r\n0\r\nX-Trailer: yes\r\n", b"\r\n"):
            wire.send(piece)
            time.sleep(0.02)
        reply = wire.response()
        echoed = reply.json()
        assert reply.status == 200 and echoed["body"] == "hello, world"
        assert echoed["CONTENT_LENGTH"] is None and echoed["headers"]["HTTP_TRANSFER_ENCODING"] == "chunked"
        assert echoed["CONTENT_TYPE"] == "text/plain"
        assert_kept(wire, reply)
        assert wire.exchange(request("GET", "/after-chunked")).json()["PATH_INFO"] == "/after-chunked"


@integration
def test_malformed_chunked_body_is_answered_400_and_closed(lean: Server) -> None:
    with Wire(lean) as wire:
        reply = wire.exchange(request("POST", "/", "Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n",
                                      length=False))
        assert reply.status == 400
        assert_closed(wire, reply)


@integration
def test_expect_100_continue_gets_100_before_the_final_response(lean: Server) -> None:
    with Wire(lean) as wire:
        wire.send(request("POST", "/continue", "Content-Length: 5", "Expect: 100-continue"))
        assert wire.until(b"\r\n\r\n") == CONTINUE  # sent before the body, when the app reads
        assert wire.buf == b""
        wire.send(b"hello")
        reply = wire.response()
        assert reply.status == 200 and reply.json()["body"] == "hello"
        assert reply.json()["headers"]["HTTP_EXPECT"] == "100-continue"
        assert_kept(wire, reply)


@integration
def test_expect_100_continue_body_never_read_gets_no_100_and_closes(lean: Server) -> None:
    with Wire(lean) as wire:
        reply = wire.exchange(request("POST", "/no-content", "Content-Length: 5", "Expect: 100-continue"))
        assert reply.status == 204 and reply.header("x-route") == "no-content"  # no 100 in front of it
        assert wire.closed(), "the server waits for a body the client will never send"


@integration
def test_unread_body_is_drained_and_the_connection_kept(lean: Server) -> None:
    with Wire(lean) as wire:
        reply = wire.exchange(request("POST", "/no-content", body=b"x" * 5000))
        assert reply.status == 204
        assert_kept(wire, reply)
        assert wire.exchange(request("GET", "/after-drain")).json()["PATH_INFO"] == "/after-drain"


@integration
def test_http10_without_keep_alive_is_closed_after_the_response(lean: Server) -> None:
    with Wire(lean) as wire:
        reply = wire.exchange(request("GET", "/old", version="HTTP/1.0"))
        assert reply.status == 200 and reply.json()["SERVER_PROTOCOL"] == "HTTP/1.0"
        assert_closed(wire, reply)


@integration
def test_http10_with_keep_alive_is_kept(lean: Server) -> None:
    with Wire(lean) as wire:
        for i in range(2):
            reply = wire.exchange(request("GET", f"/old/{i}", "Connection: keep-alive", version="HTTP/1.0"))
            assert reply.status == 200 and reply.json()["PATH_INFO"] == f"/old/{i}"
            assert reply.header("connection") == "keep-alive" and reply.header("content-length")
            assert not wire.closed(0.2)
        # a body without a length can only end with the connection
        reply = wire.exchange(request("GET", "/stream", "Connection: keep-alive", version="HTTP/1.0"))
        assert reply.header("transfer-encoding") is None and reply.header("connection") == "close"
        assert reply.body == b"".join(STREAM_CHUNKS)


@integration
def test_response_without_content_length_is_chunked_for_http11(lean: Server) -> None:
    with Wire(lean) as wire:
        reply = wire.exchange(request("GET", "/stream"))
        assert reply.status == 200 and reply.header("transfer-encoding") == "chunked"
        assert reply.header("content-length") is None
        assert reply.body == b"".join(STREAM_CHUNKS)
        framed = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in STREAM_CHUNKS) + b"0\r\n\r\n"
        assert reply.raw.endswith(b"\r\n\r\n" + framed)
        assert_kept(wire, reply)


@integration
def test_head_has_no_body(lean: Server) -> None:
    with Wire(lean) as wire:
        get = wire.exchange(request("GET", "/head"))
        head = wire.exchange(request("HEAD", "/head"), "HEAD")
        assert head.status == 200 and head.body == b""
        # the length GET would have: the echo differs only by the method's name
        assert head.header("content-length") == str(len(get.body) + len("HEAD") - len("GET"))
        stream = wire.exchange(request("HEAD", "/stream"), "HEAD")
        assert stream.status == 200 and stream.header("transfer-encoding") is None
        # no stray body bytes: the next response on the connection starts right away
        after = wire.exchange(request("GET", "/after-head"))
        assert after.status == 200 and after.json()["PATH_INFO"] == "/after-head"
        assert_kept(wire, after)


@integration
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_204_has_no_body_and_no_framing(lean: Server, version: str) -> None:
    with Wire(lean) as wire:
        keep = ("Connection: keep-alive",) if version == "HTTP/1.0" else ()
        reply = wire.exchange(request("GET", "/no-content", *keep, version=version))
        assert reply.status == 204
        # RFC 9110 §8.6: no Content-Length in a 204; RFC 9112 §6.1: no Transfer-Encoding either
        assert reply.header("content-length") is None and reply.header("transfer-encoding") is None, reply
        after = wire.exchange(request("GET", "/after-204", *keep, version=version))
        assert after.status == 200 and after.json()["PATH_INFO"] == "/after-204"


REFUSALS = {
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: test\r\nX-Folded: one\r\n  two\r\n\r\n", 400),
    "te-and-cl": (b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
    "cl-and-te": (b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    "two-content-lengths": (b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", 400),
    "bad-content-length": (b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: +5\r\n\r\n", 400),
    "te-gzip": (b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "te-gzip-chunked": (b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    "chunked-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    "http2": (b"GET / HTTP/2.0\r\nHost: test\r\n\r\n", 505),
    "garbage-request-line": (b"\x16\x03\x01 hello there\r\n\r\n", 400),
    "two-part-request-line": (b"GET /\r\nHost: test\r\n\r\n", 400),
    "lowercase-method": (b"get / HTTP/1.1\r\nHost: test\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : test\r\n\r\n", 400),
    "no-colon": (b"GET / HTTP/1.1\r\nHost test\r\n\r\n", 400),
    "request-line-too-long": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", 414),
    "too-many-headers": (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    "header-too-large": (b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    "expect-other": (b"POST / HTTP/1.1\r\nHost: test\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n", 417),
    "bare-lf-line-ends": (b"GET / HTTP/1.1\nHost: test\n\n", 400),
    "contradictory-scheme-headers": (
        b"GET / HTTP/1.1\r\nHost: test\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n\r\n", 400),
}


@integration
@pytest.mark.parametrize("data,status", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_are_answered_and_closed(lean: Server, data: bytes, status: int) -> None:
    with Wire(lean) as wire:
        reply = wire.exchange(data)
        assert reply.status == status, reply
        assert reply.body and (reply.header("content-type") or "").startswith("text/plain")  # a short reason
        assert_closed(wire, reply)


@integration
def test_refused_connection_does_not_stop_the_server(lean: Server) -> None:
    with Wire(lean) as wire:
        assert wire.exchange(REFUSALS["obs-fold"][0]).status == 400
    with Wire(lean) as wire:
        assert wire.exchange(request("GET", "/after-refusal")).status == 200


@integration
def test_header_names_with_underscore_are_dropped(lean: Server) -> None:
    with Wire(lean) as wire:
        echoed = wire.exchange(request("GET", "/", "X-Auth-User: alice", "X_Auth_User: mallory",
                                       "X_Only_Underscore: 1")).json()
    assert echoed["headers"]["HTTP_X_AUTH_USER"] == "alice"  # not "alice,mallory", not "mallory"
    assert "HTTP_X_ONLY_UNDERSCORE" not in echoed["headers"]


@integration
def test_duplicate_headers_are_joined_with_commas(lean: Server) -> None:
    with Wire(lean) as wire:
        echoed = wire.exchange(request("GET", "/", "Accept: text/plain", "X-Dup: a", "accept: application/json",
                                       "X-Dup:  b ")).json()
    assert echoed["headers"]["HTTP_ACCEPT"] == "text/plain,application/json"
    assert echoed["headers"]["HTTP_X_DUP"] == "a,b"


@integration
def test_path_query_and_raw_uri(lean: Server) -> None:
    target = "/caf%C3%A9/a%2Fb%20c?q=%20x&y=1"
    with Wire(lean) as wire:
        reply = wire.exchange(("GET " + target + " HTTP/1.1\r\nHost: example.com:8080\r\n\r\n").encode())
    echoed = reply.json()
    assert echoed["PATH_INFO"] == "/café/a/b c".encode().decode("latin-1")  # PEP 3333: bytes as latin-1
    assert echoed["RAW_URI"] == target
    assert echoed["QUERY_STRING"] == "q=%20x&y=1"
    assert echoed["REQUEST_METHOD"] == "GET" and echoed["REMOTE_ADDR"] == "127.0.0.1"
    assert (echoed["SERVER_NAME"], echoed["SERVER_PORT"]) == ("example.com", "8080")


@integration
def test_absolute_form_target(lean: Server) -> None:
    with Wire(lean) as wire:
        echoed = wire.exchange(request("GET", "http://example.com/abs%20path?x=1")).json()
    assert (echoed["PATH_INFO"], echoed["QUERY_STRING"]) == ("/abs path", "x=1")
    assert echoed["RAW_URI"] == "http://example.com/abs%20path?x=1"


@integration
def test_forwarded_proto_from_a_trusted_peer_sets_the_scheme(lean: Server) -> None:
    with Wire(lean) as wire:
        secure = wire.exchange(request("GET", "/", "X-Forwarded-Proto: https")).json()
        plain = wire.exchange(request("GET", "/")).json()
    assert secure["wsgi.url_scheme"] == "https" and secure["SERVER_PORT"] == "443"  # Host: test has no port
    assert plain["wsgi.url_scheme"] == "http" and plain["SERVER_PORT"] == "80"


@integration
def test_forwarded_proto_from_an_untrusted_peer_is_ignored(lean_untrusting: Server) -> None:
    with Wire(lean_untrusting) as wire:
        echoed = wire.exchange(request("GET", "/", "X-Forwarded-Proto: https")).json()
    assert echoed["wsgi.url_scheme"] == "http"
    assert echoed["headers"]["HTTP_X_FORWARDED_PROTO"] == "https"  # passed on, not believed


@integration
def test_app_error_before_start_response_is_a_500_and_closes(lean: Server) -> None:
    with Wire(lean) as wire:
        reply = wire.exchange(request("GET", "/fail-before"))
        assert reply.status == 500 and reply.body == b"Internal Server Error\n"
        assert_closed(wire, reply)
    with Wire(lean) as wire:  # the worker keeps serving
        assert wire.exchange(request("GET", "/after-500")).status == 200
    assert "the app failed before start_response" in lean.output()


@integration
def test_app_error_after_the_first_chunk_cuts_the_stream(lean: Server) -> None:
    with Wire(lean) as wire:
        wire.send(request("GET", "/fail-after"))
        head = wire.until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked\r\n" in head
        rest = wire.rest()
    assert rest == b"%x\r\n%b\r\n" % (len(STREAM_CHUNKS[0]), STREAM_CHUNKS[0])  # no terminating 0-chunk
    with Wire(lean) as wire:
        assert wire.exchange(request("GET", "/after-cut")).status == 200


# --- a Pushable body (servers/pump.py): relayed from the worker's event loop -------------------


def pushed_ends(server: Server, count: int) -> list[str]:
    """How the worker's pushed bodies ended, once ``count`` of them did (polled: a close may come later)."""
    deadline = time.monotonic() + 5
    while True:
        with Wire(server) as wire:
            ends = t.cast(list[str], wire.exchange(request("GET", "/pushed-closes")).json())
        if len(ends) >= count or time.monotonic() > deadline:
            return ends
        time.sleep(0.05)


@integration
def test_a_pushed_body_is_relayed_whole_and_the_connection_kept(lean: Server) -> None:
    with Wire(lean) as wire:
        before = len(pushed_ends(lean, 0))
        reply = wire.exchange(request("GET", "/pushed?n=30&gap=0.002&size=40"))
        assert reply.status == 200 and reply.header("transfer-encoding") == "chunked"
        assert reply.body == b"".join(pushed_event(number, 40) for number in range(30))
        assert_kept(wire, reply)
        assert wire.exchange(request("GET", "/after-push")).json()["PATH_INFO"] == "/after-push"
    assert pushed_ends(lean, before + 1)[before:] == ["complete"]


@integration
def test_a_pushed_body_waits_for_a_client_that_reads_slowly(lean: Server) -> None:
    with Wire(lean, timeout=20) as wire:
        wire.send(request("GET", "/pushed?n=6&size=1048576"))  # 6 MB: more than the socket buffers hold
        head = wire.until(b"\r\n\r\n")
        time.sleep(0.5)
        wire.buf = head + wire.buf
        reply = wire.response()
    assert reply.body == b"".join(pushed_event(number, 1 << 20) for number in range(6))


@integration
def test_a_client_leaving_a_pushed_body_ends_it(lean: Server) -> None:
    before = len(pushed_ends(lean, 0))
    with Wire(lean) as wire:
        wire.send(request("GET", "/pushed?n=200&gap=0.01&size=20"))
        wire.until(pushed_event(0, 20))
    # the worker sees the client gone at its next send, then closes the body
    assert pushed_ends(lean, before + 1)[before:] == ["cut"]
    with Wire(lean) as wire:
        assert wire.exchange(request("GET", "/after-leave")).status == 200


@integration
def test_a_silent_pushed_body_ends_when_its_timeout_expires(lean: Server) -> None:
    with Wire(lean) as wire:
        started = time.monotonic()
        reply = wire.exchange(request("GET", "/pushed?n=2&size=10&timeout=0.3"))
        took = time.monotonic() - started
        assert reply.body == pushed_event(0, 10) + pushed_event(1, 10) + b"expired\n"
        assert 0.25 <= took < 3
        assert_kept(wire, reply)


@integration
def test_many_pushed_bodies_at_once_are_each_relayed_whole(lean_pacing: Server) -> None:
    wires = [Wire(lean_pacing, timeout=20) for _ in range(40)]
    try:
        for wire in wires:
            wire.send(request("GET", "/pushed?n=40&gap=0.001&size=200"))
        expected = b"".join(pushed_event(number, 200) for number in range(40))
        for wire in wires:
            reply = wire.response()
            assert reply.status == 200 and reply.body == expected
        assert wires[0].exchange(request("GET", "/after-many")).status == 200  # kept, and served on
    finally:
        for wire in wires:
            wire.sock.close()


@integration
def test_the_stock_worker_iterates_a_pushable_body(stock: Server) -> None:
    with Wire(stock) as wire:
        reply = wire.exchange(request("GET", "/pushed?n=5&gap=0.002&size=30"))
    assert reply.body == b"".join(pushed_event(number, 30) for number in range(5))
    assert pushed_ends(stock, 1)[-1] == "iterated"


@integration
def test_idle_keep_alive_connection_is_closed_after_the_keepalive_time(lean_untrusting: Server) -> None:
    with Wire(lean_untrusting) as wire:
        reply = wire.exchange(request("GET", "/idle"))
        assert reply.status == 200 and reply.header("connection") is None
        idle = time.monotonic()
        assert wire.closed(6), "an idle keep-alive connection stayed open"
        elapsed = time.monotonic() - idle
    assert 0.8 <= elapsed < 4, f"closed after {elapsed:.2f}s with WSGIPROXY_KEEPALIVE=1"


@integration
def test_access_log_line_has_status_and_bytes(lean: Server, access_log: Path) -> None:
    with Wire(lean) as wire:
        echo = wire.exchange(request("POST", "/logged?n=1", "User-Agent: wire-test", body=b"12345"))
        stream = wire.exchange(request("GET", "/stream?logged=1"))
        failed = wire.exchange(request("GET", "/fail-before?logged=1"))
    assert echo.status == 200 and stream.status == 200 and failed.status == 500
    expected = [
        rf'"POST /logged\?n=1 HTTP/1\.1" 200 {len(echo.body)} \d+us "wire-test"',
        rf'"GET /stream\?logged=1 HTTP/1\.1" 200 {len(stream.body)} \d+us',  # body bytes, not the chunk framing
        rf'"GET /fail-before\?logged=1 HTTP/1\.1" 500 {len(failed.body)} \d+us',
    ]
    deadline = time.monotonic() + 5
    while True:
        text = access_log.read_text() if access_log.exists() else ""
        missing = [pattern for pattern in expected if not re.search(pattern, text)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not missing, (missing, text[-2000:])
    assert re.search(r"^127\.0\.0\.1 \[[^]]+\] \"POST /logged", text, re.MULTILINE), text[-2000:]


_HOOKED_CONF = """
import sys
__file__ = {conf!r}
exec(compile(open(__file__).read(), __file__, "exec"))


def pre_request(worker, req):
    with open({log!r}, "a") as out:
        out.write(f"pre {{req.method}} {{req.path}} {{dict(req.headers).get('X-HOOK', '-')}}\\n")


def post_request(worker, req, environ, resp):
    with open({log!r}, "a") as out:
        out.write(f"post {{req.method}} {{req.path}} {{resp.status}} {{environ['QUERY_STRING']}}\\n")
"""


@integration
def test_pre_and_post_request_hooks_of_an_operator_conf_run(stack_m: Stack, tmp_path: Path) -> None:
    hooks_log = tmp_path / "hooks.log"
    conf = tmp_path / "hooked.conf.py"
    conf.write_text(_HOOKED_CONF.format(conf=str(GUNICORN_CONF), log=str(hooks_log)))
    server = serve(stack_m, "hooked", conf=conf)
    with Wire(server) as wire:
        assert wire.exchange(request("GET", "/hooked?x=1", "X-Hook: yes")).status == 200
        assert wire.exchange(request("GET", "/fail-before")).status == 500
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if hooks_log.exists() and "post GET /fail-before" in hooks_log.read_text():
            break
        time.sleep(0.05)
    lines = [line for line in hooks_log.read_text().splitlines() if " /health " not in line]  # the readiness probe
    assert lines == [
        "pre GET /hooked yes", "post GET /hooked 200 OK x=1",
        "pre GET /fail-before -", "post GET /fail-before 500 Internal Server Error ",
    ]


@integration
def test_tls_terminated_by_gunicorn_keeps_alive_and_streams(stack_m: Stack, tmp_path: Path) -> None:
    import ssl

    tls = make_tls(tmp_path / "tls")
    server = serve(stack_m, "tls", tls=tls)
    port = int(server.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        for i in range(3):  # three requests on one TLS connection, a stream last
            path = "/stream" if i == 2 else f"/tls/{i}"
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi".encode())
            data = b""
            while not (data.endswith(b"0\r\n\r\n") if i == 2 else b'"body": "hi"}' in data):
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
            if i < 2:
                assert b'"wsgi.url_scheme": "https"' in data and f'"PATH_INFO": "/tls/{i}"'.encode() in data
            else:
                assert b"Transfer-Encoding: chunked" in data and b"third" in data


@integration
def test_stock_gevent_worker_is_still_selectable(stock: Server) -> None:
    log = stock.output()
    port = stock.url.rsplit(":", 1)[1]
    assert "Using worker: gevent" in log, log[-2000:]
    assert re.search(rf"listening on http://127\.0\.0\.1:{port}; 1 gevent worker", log), log[-2000:]
    assert "gevent (lean HTTP/1.1)" not in log
    with Wire(stock) as wire:
        for i in range(2):
            reply = wire.exchange(request("POST", f"/stock/{i}", body=b"x"))
            assert reply.status == 200 and reply.json()["PATH_INFO"] == f"/stock/{i}"


@integration
def test_invalid_worker_class_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    env = {"WSGIPROXY_WORKER_CLASS": "sync", "WSGIPROXY_BIND": f"127.0.0.1:{free_port()}", "WSGIPROXY_WORKERS": "1",
           **AICORE_ENV}
    result = subprocess.run(tool("gunicorn") + ["-c", str(GUNICORN_CONF), APP], cwd=ROOT, env=base_env(env),
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "WSGIPROXY_WORKER_CLASS='sync'" in output and "expected servers.gevent_worker.LeanGeventWorker or gevent" \
        in output, output
    assert "Traceback" not in output and "Booting worker" not in output


@integration
def test_proxy_protocol_stops_the_lean_worker_with_a_clear_message() -> None:
    env = {"WSGIPROXY_BIND": f"127.0.0.1:{free_port()}", "WSGIPROXY_WORKERS": "1", **AICORE_ENV}
    result = subprocess.run(tool("gunicorn") + ["-c", str(GUNICORN_CONF), "--proxy-protocol", "v1", APP], cwd=ROOT,
                            env=base_env(env), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "does not read the PROXY protocol: set WSGIPROXY_WORKER_CLASS=gevent" in output, output[-2000:]


def test_a_body_cut_short_is_an_oserror_and_closes_the_connection() -> None:
    body = _Input(FakeSocket(b"abc"), b"", 10, False)
    with pytest.raises(OSError):
        body.read()
    assert body.finish() is None


def test_a_response_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    from servers.gevent_worker import LeanGeventWorker, Response, _DateHeader

    worker = LeanGeventWorker.__new__(LeanGeventWorker)
    worker._date = _DateHeader()
    for name, value in (("X-Evil", "a\r\nSet-Cookie: x=1"), ("X-Evil\n", "a"), ("X-Lf", "a\nb")):
        resp = Response()
        resp.status, resp.status_code, resp.headers = "200 OK", 200, [("Content-Length", "0"), (name, value)]
        with pytest.raises(ValueError, match="line break"):
            worker._head(resp, True, False)
        assert not resp.headers_sent
    resp = Response()
    resp.status, resp.status_code, resp.headers = "200 OK", 200, [("Content-Length", "2"), ("X-Ok", "yes")]
    head = worker._head(resp, True, False)
    assert head.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Ok: yes\r\nDate: ")
    assert head.endswith(b"\r\n\r\n")
