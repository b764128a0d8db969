"""The HTTP/1.1 client's parsing and body decoding, fed from a scripted socket (every split position)."""

from __future__ import annotations

import typing as t
import zlib

import pytest

from wsgiproxy.aicore.http11 import Headers, Response, ResponseBroken, parse_head
from wsgiproxy.sockets import Deadlines


class ScriptedSocket:
    """recv() hands out the given pieces one by one, then EOF; a ``None`` piece is a read that
    would wait (``BlockingIOError``), as a gevent socket with timeout 0 raises."""

    def __init__(self, pieces: list[bytes | None]) -> None:
        self.pieces = list(pieces)
        self.closed = False
        self.reads = 0
        self.timeouts: list[float | None] = []

    def recv(self, size: int) -> bytes:
        self.reads += 1
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if piece is None:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        assert len(piece) <= size
        return piece

    def settimeout(self, seconds: float | None) -> None:
        self.timeouts.append(seconds)

    def close(self) -> None:
        self.closed = True


class Slots:
    def __init__(self) -> None:
        self.released = 0

    def release(self) -> None:
        self.released += 1


class FakeOrigin:
    def __init__(self) -> None:
        self.slots = Slots()
        self.given_back: list[t.Any] = []

    def give_back(self, sock: t.Any) -> None:
        self.given_back.append(sock)
        self.slots.release()


def open_response(message: bytes, pieces: list[bytes | None] | None = None, method: str = "POST"
                  ) -> tuple[Response, ScriptedSocket, FakeOrigin]:
    """A response whose head is ``message``'s head; the rest arrives as ``pieces`` (else in one piece)."""
    end = message.find(b"\r\n\r\n")
    response = parse_head(message[:end])
    rest = message[end + 4:]
    sock = ScriptedSocket(pieces if pieces is not None else ([rest] if rest else []))
    origin = FakeOrigin()
    response._attach(sock, origin, b"", method, Deadlines(), 60.0)  # type: ignore[arg-type]
    return response, sock, origin


def read_all(response: Response) -> list[bytes]:
    pieces = []
    for _ in range(10_000):
        piece = response.read1(65536)
        if not piece:
            return pieces
        pieces.append(piece)
    raise AssertionError("read1 never reached the end")


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENTS = [b"data: one\n\n", b'data: {"two": 2}\n\n', b"x" * 300, b"data: [DONE]\n\n"]
CHUNKED = b"".join(f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in EVENTS[:2]) + \
    f"{len(EVENTS[2]):X};ext=1\r\n".encode() + EVENTS[2] + b"\r\n" + \
    f"{len(EVENTS[3]):x}\r\n".encode() + EVENTS[3] + b"\r\n" + b"0\r\nTrailer: x\r\n\r\n"


def read_pushed(response: Response) -> list[bytes | None]:
    """What ``read_nowait`` gives until the body ended (the socket is no longer the response's)."""
    results: list[bytes | None] = []
    for _ in range(10_000):
        results.append(response.read_nowait(65536))
        if response.sock is None:
            return results
    raise AssertionError("read_nowait never reached the end")


@pytest.mark.parametrize("split", range(1, len(CHUNKED)))
def test_read_nowait_split_at_every_position_with_waits_between(split: int) -> None:
    response, sock, origin = open_response(HEAD, [None, CHUNKED[:split], None, CHUNKED[split:]])
    results = read_pushed(response)
    assert results[0] is None  # nothing arrived yet
    assert b"".join(piece for piece in results if piece) == b"".join(EVENTS)
    assert b"" not in results[:-1]  # the end is seen by the read that gets the last bytes, not one more
    assert origin.given_back == [sock]
    assert sock.timeouts == [0.0, None]  # reads stop waiting; the pooled socket waits again


def test_read_nowait_gives_each_event_as_it_arrives() -> None:
    chunks = [f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in EVENTS] + [b"0\r\n\r\n"]
    pieces: list[bytes | None] = []
    for chunk in chunks:
        pieces += [chunk, None]
    response, sock, origin = open_response(HEAD, pieces)
    assert read_pushed(response) == [*sum(([event, None] for event in EVENTS), []), b""]
    assert origin.given_back == [sock]


def test_read_nowait_after_the_end_and_on_a_cut_body() -> None:
    response, sock, origin = open_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", [b"hel", None])
    assert response.read_nowait() == b"hel"
    assert response.read_nowait() is None
    with pytest.raises(ResponseBroken):
        response.read_nowait()  # the connection ended two bytes short
    response.close()
    assert response.read_nowait() == b""
    assert sock.closed and origin.given_back == []


@pytest.mark.parametrize("split", range(1, len(CHUNKED)))
def test_chunked_body_split_at_every_position(split: int) -> None:
    response, sock, origin = open_response(HEAD, [CHUNKED[:split], CHUNKED[split:]])
    pieces = read_all(response)
    assert b"".join(pieces) == b"".join(EVENTS)
    assert all(pieces)
    assert origin.given_back == [sock] and not sock.closed  # complete: back to the pool


def test_chunked_body_byte_by_byte() -> None:
    response, sock, origin = open_response(HEAD, [CHUNKED[i:i + 1] for i in range(len(CHUNKED))])
    assert b"".join(read_all(response)) == b"".join(EVENTS)
    assert origin.given_back == [sock]


def test_each_read_hands_over_the_events_it_completed() -> None:
    chunks = [f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in EVENTS] + [b"0\r\n\r\n"]
    response, sock, _ = open_response(HEAD, chunks)
    assert [response.read1(65536) for _ in EVENTS] == EVENTS
    assert sock.reads == len(EVENTS)
    assert response.read1(65536) == b""


def test_head_and_body_in_one_receive_need_no_more_reads() -> None:
    message = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    end = message.find(b"\r\n\r\n")
    response = parse_head(message[:end])
    sock, origin = ScriptedSocket([]), FakeOrigin()
    response._attach(sock, origin, message[end + 4:], "POST", Deadlines(), 60.0)  # type: ignore[arg-type]
    assert response.data == b"hello" and response.data == b"hello"
    assert sock.reads == 0 and origin.given_back == [sock]


@pytest.mark.parametrize("split", range(1, 11))
def test_content_length_split(split: int) -> None:
    body = b"0123456789"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    response, sock, origin = open_response(head, [body[:split], body[split:]])
    assert response.data == body
    assert origin.given_back == [sock]


def test_extra_bytes_after_the_body_close_the_connection() -> None:
    response, sock, origin = open_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", [b"hi and more"])
    assert response.data == b"hi"
    assert sock.closed and not origin.given_back and origin.slots.released == 1


def test_connection_close_is_not_kept() -> None:
    response, sock, origin = open_response(b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\nhi")
    assert response.data == b"hi"
    assert sock.closed and not origin.given_back and origin.slots.released == 1


def test_close_delimited_body() -> None:
    response, sock, origin = open_response(b"HTTP/1.1 200 OK\r\n\r\n", [b"a", b"b", b"c"])
    assert read_all(response) == [b"a", b"b", b"c"]
    assert sock.closed and origin.slots.released == 1


@pytest.mark.parametrize("message, pieces, first, error", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", [b"ab"], b"ab", "3 more bytes"),
    (HEAD, [b"3\r\nabc\r\n"], b"abc", "rest of the chunked body"),
    (HEAD, [b"3\r\nab"], b"ab", "rest of the chunked body"),
])
def test_early_end_is_broken(message: bytes, pieces: list[bytes], first: bytes, error: str) -> None:
    response, _, _ = open_response(message, pieces)
    assert response.read1(65536) == first
    with pytest.raises(ResponseBroken, match=error):
        response.read1(65536)


@pytest.mark.parametrize("body", [b"zz\r\n", b"-5\r\nabc", b"3\r\nabcXY0\r\n\r\n", b"1" * 5000])
def test_bad_chunked_framing_is_broken(body: bytes) -> None:
    response, _, _ = open_response(HEAD, [body])
    with pytest.raises(ResponseBroken):
        read_all(response)


def test_close_and_release_give_the_slot_back_once() -> None:
    response, sock, origin = open_response(HEAD, [b"3\r\nabc\r\n"])
    assert response.read1(65536) == b"abc"
    response.release_conn()  # not at the end: closed, not given back
    response.close()
    response.release_conn()
    assert sock.closed and not origin.given_back and origin.slots.released == 1
    assert response.read1(65536) == b""


@pytest.mark.parametrize("encoding, pack", [
    ("gzip", lambda data: zlib.compressobj(wbits=16 + zlib.MAX_WBITS)),
    ("deflate", lambda data: zlib.compressobj()),
    ("deflate", lambda data: zlib.compressobj(wbits=-zlib.MAX_WBITS)),
])
def test_compressed_bodies_are_decoded(encoding: str, pack: t.Callable[[bytes], t.Any]) -> None:
    data = b"data: compressible\n\n" * 200
    packer = pack(data)
    packed = packer.compress(data) + packer.flush()
    message = f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(packed)}\r\n\r\n".encode()
    response, _, _ = open_response(message, [packed[i:i + 7] for i in range(0, len(packed), 7)])
    assert b"".join(read_all(response)) == data


def test_parse_head() -> None:
    response = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nX-Folded: a\r\n b\r\n"
                          b"Set-Thing: 1\r\nset-thing: 2\r\nnot a header\r\nEmpty:")
    assert (response.status, response.reason, response.version) == (503, "Service Unavailable", 11)
    assert isinstance(response.headers, Headers)
    assert dict(response.headers) == {"retry-after": "1", "x-folded": "a b", "set-thing": "1, 2", "empty": ""}
    assert response.headers.get("RETRY-AFTER") == "1"
    assert parse_head(b"HTTP/1.0 200").version == 10
    assert parse_head(b"HTTP/1.1 204").reason == ""


@pytest.mark.parametrize("line", [b"", b"HTTP/1.1", b"HTTP/1.1 2000 OK", b"HTTP/1.1 abc", b"ICY 200 OK",
                                  b"HTTP/1.1 200OK", "HTTP/1.1 \u00b2\u00b2\u00b2 OK".encode("latin-1")])
def test_bad_status_lines(line: bytes) -> None:
    with pytest.raises(ResponseBroken, match="bad status line"):
        parse_head(line)


@pytest.mark.parametrize("value", ["abc", "-1", "1, 2", "\u00b2"])
def test_bad_content_length(value: str) -> None:
    with pytest.raises(ResponseBroken, match="Content-Length"):
        open_response(f"HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n".encode())


def test_repeated_equal_content_length_is_fine() -> None:
    response, _, _ = open_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi")
    assert response.data == b"hi"


def test_prepared_headers_carry_the_lines_a_plain_mapping_would_get() -> None:
    from wsgiproxy.aicore.http11 import PreparedHeaders, header_block

    plain = {"Authorization": "Bearer t", "AI-Resource-Group": "rg", "Accept": "text/event-stream"}
    prepared = PreparedHeaders(plain)
    assert prepared == plain and prepared.wire == header_block(plain)
    assert prepared.wire.endswith("User-Agent: wsgiproxy\r\nAccept-Encoding: identity\r\n")
    with pytest.raises(ValueError, match="line break"):
        PreparedHeaders({"X-Evil": "a\r\nHost: elsewhere"})
