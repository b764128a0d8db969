"""The AWS event-stream decoder, cross-checked against botocore's own parser."""

from __future__ import annotations

import random
import struct
import uuid
import zlib

import pytest
from botocore.eventstream import EventStreamBuffer

from wsgiproxy.dialects.eventstream import (
    MAX_MESSAGE_LENGTH,
    EventStreamDecoder,
    EventStreamError,
    HeaderValue,
    Message,
)
from wsgiproxy.errors import WsgiproxyError

# A test-side encoder, written from the AWS spec, independent of the decoder under test.
Typed = tuple[int, HeaderValue]


def _header(name: str, typed: Typed) -> bytes:
    kind, value = typed
    head = bytes([len(name.encode())]) + name.encode() + bytes([kind])
    if kind in (0, 1):
        return head
    if kind in (2, 3, 4, 5, 8):
        assert isinstance(value, int)
        return head + struct.pack({2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}[kind], value)
    if kind == 9:
        assert isinstance(value, bytes) and len(value) == 16
        return head + value
    raw = value.encode() if isinstance(value, str) else value
    assert isinstance(raw, bytes)
    return head + struct.pack(">H", len(raw)) + raw


def encode_message(headers: dict[str, HeaderValue | Typed], payload: bytes) -> bytes:
    """One event-stream message; plain ``str`` header values are type 7."""
    encoded = b"".join(_header(k, v if isinstance(v, tuple) else (7, v)) for k, v in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + encoded + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(event_type: str, payload: bytes) -> bytes:
    headers: dict[str, HeaderValue | Typed] = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, payload)


ALL_TYPES: dict[str, HeaderValue | Typed] = {
    "t": (0, True),
    "f": (1, False),
    "byte": (2, -5),
    "short": (3, -300),
    "int": (4, 70000),
    "long": (5, -(2**40)),
    "bytes": (6, b"\x00\xff"),
    "str": (7, "héllo"),
    "ts": (8, 1700000000123),
    "uuid": (9, uuid.UUID("12345678-1234-5678-1234-567812345678").bytes),
}

STREAM = (
    event("messageStart", b'{"role":"assistant"}')
    + encode_message(ALL_TYPES, b"payload")
    + event("contentBlockDelta", b'{"delta":{"text":"Hi"},"contentBlockIndex":0}')
    + encode_message({}, b"")
    + event("messageStop", b'{"stopReason":"end_turn"}')
)


def botocore_messages(data: bytes) -> list[Message]:
    parser = EventStreamBuffer()
    parser.add_data(data)
    return [Message(dict(m.headers), bytes(m.payload)) for m in parser]


def decode_in_pieces(data: bytes, cuts: list[int]) -> tuple[list[Message], EventStreamDecoder]:
    decoder = EventStreamDecoder()
    messages: list[Message] = []
    start = 0
    for cut in [*cuts, len(data)]:
        messages += decoder.feed(data[start:cut])
        start = cut
    return messages, decoder


def test_decodes_like_botocore() -> None:
    messages, decoder = decode_in_pieces(STREAM, [])
    assert messages == botocore_messages(STREAM)
    assert len(messages) == 5 and not decoder.pending
    assert messages[1].headers == {k: v[1] if isinstance(v, tuple) else v for k, v in ALL_TYPES.items()}
    assert messages[3] == Message({}, b"")


def test_split_at_every_offset() -> None:
    expected = botocore_messages(STREAM)
    for cut in range(len(STREAM) + 1):
        messages, decoder = decode_in_pieces(STREAM, [cut])
        assert messages == expected, cut
        assert not decoder.pending


def test_one_byte_at_a_time_and_random_splits() -> None:
    expected = botocore_messages(STREAM)
    assert decode_in_pieces(STREAM, list(range(1, len(STREAM))))[0] == expected
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 20)))
        assert decode_in_pieces(STREAM, cuts)[0] == expected


def test_pending_reports_a_partial_message() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(STREAM[:5]) == [] and decoder.pending
    first = event("messageStart", b"{}")
    decoder = EventStreamDecoder()
    assert decoder.feed(first + first[:13]) == [botocore_messages(first)[0]]
    assert decoder.pending


@pytest.mark.parametrize("position", [0, 4, 8, 11])
def test_prelude_corruption_is_detected(position: int) -> None:
    data = bytearray(event("messageStart", b"{}"))
    data[position] ^= 0x01
    with pytest.raises(EventStreamError, match="prelude checksum|length"):
        EventStreamDecoder().feed(bytes(data))


@pytest.mark.parametrize("position", [12, 20, -5, -1])
def test_message_corruption_is_detected(position: int) -> None:
    data = bytearray(event("messageStart", b'{"role":"assistant"}'))
    data[position] ^= 0x40
    decoder = EventStreamDecoder()
    with pytest.raises(EventStreamError, match="message checksum"):
        decoder.feed(bytes(data))
    with pytest.raises(EventStreamError):
        decoder.feed(b"")  # a broken stream stays broken


def test_error_is_a_wsgiproxy_error() -> None:
    assert issubclass(EventStreamError, WsgiproxyError)


def _prelude(total: int, headers_length: int) -> bytes:
    raw = struct.pack(">II", total, headers_length)
    return raw + struct.pack(">I", zlib.crc32(raw))


def test_oversized_message_is_rejected_from_its_prelude() -> None:
    with pytest.raises(EventStreamError, match="exceeds"):
        EventStreamDecoder().feed(_prelude(MAX_MESSAGE_LENGTH + 1, 0))


def test_impossible_lengths_are_rejected() -> None:
    with pytest.raises(EventStreamError, match="shorter"):
        EventStreamDecoder().feed(_prelude(15, 0))
    with pytest.raises(EventStreamError, match="shorter"):
        EventStreamDecoder().feed(_prelude(40, 30))
    with pytest.raises(EventStreamError, match="exceed"):
        EventStreamDecoder().feed(_prelude(1000, 200 * 1024))


def _with_raw_headers(raw_headers: bytes) -> bytes:
    total = 12 + len(raw_headers) + 4
    body = _prelude(total, len(raw_headers)) + raw_headers
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize(
    "raw_headers",
    [
        b"\x05ab",  # name longer than the headers
        b"\x01a",  # no type byte
        b"\x01a\x07\x00",  # string length cut
        b"\x01a\x07\x00\x09abc",  # string longer than the headers
        b"\x01a\x04\x00\x01",  # int32 cut
        b"\x01a\x09" + b"\x00" * 10,  # uuid cut
        b"\x01a\x0a",  # unknown type 10
        b"\x01a\x07\x00\x02\xff\xfe",  # not UTF-8
        b"\x01a\x00\x01a\x01",  # duplicate header
    ],
)
def test_malformed_headers_are_rejected(raw_headers: bytes) -> None:
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(_with_raw_headers(raw_headers))


def test_large_message_trickled_in_is_linear() -> None:
    payload = b"x" * (2 * 1024 * 1024)
    data = event("contentBlockDelta", payload)
    decoder = EventStreamDecoder()
    messages = []
    for start in range(0, len(data), 1024):
        messages += decoder.feed(data[start : start + 1024])
    assert [m.payload for m in messages] == [payload]


def test_repeated_header_bytes_are_parsed_once_and_shared() -> None:
    data = STREAM + event("contentBlockDelta", b"{}") + event("messageStop", b"{}")
    messages, _ = decode_in_pieces(data, [])
    assert messages == botocore_messages(data)
    deltas = [m for m in messages if m.headers.get(":event-type") == "contentBlockDelta"]
    assert len(deltas) == 2 and deltas[0].headers is deltas[1].headers
    assert messages[0].headers is not deltas[0].headers  # other header bytes: parsed on their own


def test_a_decoder_keeps_a_bounded_number_of_header_blocks() -> None:
    data = b"".join(event(f"type{number}", b"{}") for number in range(40))
    decoder = EventStreamDecoder()
    messages = decoder.feed(data) + decoder.feed(data)
    assert [m.headers[":event-type"] for m in messages] == [f"type{n}" for n in range(40)] * 2
    assert len(decoder._known) == 16


def test_malformed_headers_are_rejected_after_good_ones_were_kept() -> None:
    decoder = EventStreamDecoder()
    decoder.feed(event("chunk", b"{}"))
    with pytest.raises(EventStreamError):
        decoder.feed(_with_raw_headers(b"\x03abc\x07\x00\x09short"))
