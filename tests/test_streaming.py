"""RelayedStream pushed (``upstream``/``step``/``expire``) as a server's event loop drives it, against iterating it."""

from __future__ import annotations

import socket

import pytest

from tests.fakes import PushableResponse, stream_response
from tests.test_proxy import STREAM
from wsgiproxy.aicore.http11 import ResponseBroken
from wsgiproxy.dialects.openai import ChatStream, error_event
from wsgiproxy.record import RequestRecord
from wsgiproxy.streaming import RelayedStream


def relayed(upstream: PushableResponse) -> tuple[RelayedStream, RequestRecord]:
    record = RequestRecord("req-1")
    return RelayedStream(upstream, ChatStream(True), error_event, record), record


def push(stream: RelayedStream, limit: int = 1000) -> list[bytes]:
    """Step until over, as the pump does on every readable event; what each step gave."""
    assert stream.upstream() is not None
    out = []
    for _ in range(limit):
        out.append(stream.step())
        if stream.over:
            return out
    raise AssertionError("the stream never ended")


def iterated(pieces: list[bytes]) -> bytes:
    stream = RelayedStream(stream_response(pieces), ChatStream(True), error_event, RequestRecord("req-2"))
    data = b"".join(stream)
    stream.close()
    return data


@pytest.mark.parametrize("waits", [False, True])
def test_pushing_gives_what_iterating_gives_and_hands_the_connection_back(waits: bool) -> None:
    pieces: list[bytes | None] = []
    for piece in STREAM:
        pieces += [None, piece] if waits else [piece]
    upstream = PushableResponse(pieces)
    stream, record = relayed(upstream)
    steps = push(stream)
    assert b"".join(steps) == iterated(STREAM)
    assert len(steps) == len(pieces)  # one step per read, the end seen by the last one
    assert upstream.done and not upstream.discarded  # read to its end: back to the pool
    assert stream.upstream() is None
    stream.close()
    assert (record.prompt_tokens, record.completion_tokens) == (1, 1)


def test_a_step_before_anything_arrived_gives_nothing_and_is_not_over() -> None:
    stream, _ = relayed(PushableResponse([None, STREAM[0]]))
    assert stream.step() == b""
    assert not stream.over
    stream.close()


def test_the_last_events_come_with_the_step_that_read_the_end() -> None:
    stream, _ = relayed(PushableResponse(list(STREAM)))
    steps = push(stream)
    assert steps[-1].endswith(b"data: [DONE]\n\n")
    assert len(steps) == len(STREAM)  # no extra step to find the end


def test_a_broken_upstream_ends_with_an_error_event_and_the_connection_discarded() -> None:
    upstream = PushableResponse(STREAM[:2], error=ResponseBroken("connection closed before the end"))
    stream, _ = relayed(upstream)
    steps = push(stream)
    assert b'"error"' in steps[-1] and b"upstream stream broke" in steps[-1]
    assert upstream.discarded
    assert stream.upstream() is None


def test_expire_ends_with_a_timeout_event_and_the_connection_discarded() -> None:
    upstream = PushableResponse([STREAM[0], None])
    stream, _ = relayed(upstream)
    stream.step()
    assert stream.step() == b""
    last = stream.expire()
    assert stream.over and b"read timeout" in last
    assert upstream.discarded


def test_a_response_that_must_wait_to_read_is_not_pushable() -> None:
    stream = RelayedStream(stream_response(STREAM), ChatStream(True), error_event)
    assert stream.upstream() is None  # the fake without read_nowait: iterated only
    upstream = PushableResponse(list(STREAM))
    started = RelayedStream(upstream, ChatStream(True), error_event)
    next(iter(started))
    assert started.upstream() is None  # iterating already: stays iterated
    started.close()


class EndsLate(PushableResponse):
    """A response that tells its end by one more read (``b""``), keeping its socket until then."""

    @property
    def sock(self) -> socket.socket | None:
        return self._sock

    def read_nowait(self, amt: int = 65536, /) -> bytes | None:
        return self.read1(amt)


def test_an_empty_read_ends_the_stream_even_if_the_response_kept_its_socket() -> None:
    upstream = EndsLate(list(STREAM))
    stream, _ = relayed(upstream)
    steps = push(stream)
    assert len(steps) == len(STREAM) + 1  # the empty read ended it
    assert b"".join(steps) == iterated(STREAM)
    assert stream.over and stream.upstream() is None
    upstream.close()
