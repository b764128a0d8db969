"""SSE decoding over recorded streams, split at every possible read boundary."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgiproxy.dialects.sse import Event, SSEDecoder, encode, parse_block

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "sse").glob("*.sse"))


def decode_all(data: bytes, cuts: list[int]) -> list[Event]:
    decoder = SSEDecoder()
    events: list[Event] = []
    start = 0
    for cut in sorted(set(cuts)):
        events += decoder.feed(data[start:cut])
        start = cut
    events += decoder.feed(data[start:])
    return events + decoder.flush()


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_every_split_gives_the_same_events(path: Path) -> None:
    data = path.read_bytes()
    whole = decode_all(data, [])
    assert whole, "fixture has events"
    for cut in range(1, len(data)):
        assert decode_all(data, [cut]) == whole, f"split at byte {cut}"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_byte_by_byte(path: Path) -> None:
    data = path.read_bytes()
    assert decode_all(data, list(range(len(data)))) == decode_all(data, [])


def test_crlf_and_lf_fixtures_decode_alike() -> None:
    lf = (Path(__file__).parent / "fixtures" / "sse" / "azure_chat_usage.sse").read_bytes()
    crlf = (Path(__file__).parent / "fixtures" / "sse" / "azure_chat_usage_crlf.sse").read_bytes()
    assert b"\r\n" in crlf
    assert decode_all(lf, []) == decode_all(crlf, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=30))
def test_random_splits(cuts: list[int]) -> None:
    data = (Path(__file__).parent / "fixtures" / "sse" / "azure_chat_usage_crlf.sse").read_bytes()
    assert decode_all(data, [c % len(data) for c in cuts]) == decode_all(data, [])


def test_comments_and_empty_blocks_are_dropped() -> None:
    assert parse_block(b": keep-alive") is None
    assert parse_block(b"") is None
    assert parse_block(b"event: ping") is None


def test_fields() -> None:
    assert parse_block(b"event: message_start\ndata: {}") == Event(b"{}", b"message_start")
    assert parse_block(b"data:{}") == Event(b"{}")
    assert parse_block(b"data: a\ndata: b") == Event(b"a\nb")
    assert parse_block(b"id: 7\ndata: x\nretry: 10") == Event(b"x")


def test_lone_cr_line_endings() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\rdata: b\r") == [Event(b"a")]
    assert decoder.feed(b"\r") == []  # a final CR may still be half of a CRLF
    assert decoder.feed(b"data: c") == [Event(b"b")]
    assert decoder.flush() == [Event(b"c")]


def test_flush_returns_an_unterminated_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: tail") == []
    assert decoder.flush() == [Event(b"tail")]
    assert decoder.flush() == []


def test_encode() -> None:
    assert encode(b"x") == b"data: x\n\n"
    assert encode(b"{}", b"ping") == b"event: ping\ndata: {}\n\n"
