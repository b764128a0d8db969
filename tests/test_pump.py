"""servers/pump.py: a pushed body relayed from the event loop's callbacks, in process with gevent sockets.

The body is :class:`tests.fakes.PushedBody` on a gevent socket pair fed by a greenlet; the client
is the other gevent socket pair, read by a greenlet. ``wire`` brackets every piece so the test
sees each send's boundaries.
"""

from __future__ import annotations

import time
import typing as t

import gevent
import pytest
from gevent import socket as gsocket

from servers.pump import DEFAULT_RELAY_SLICE_MS, RELAY_SLICE_ENV, Pacer, Pump, relay_slice
from tests.fakes import PushedBody, pushed_event


def wire(data: bytes) -> bytes:
    return b"[" + data + b"]"


def unwire(sent: bytes) -> list[bytes]:
    assert sent.startswith(b"[") and sent.endswith(b"]"), sent[:40]
    return sent[1:-1].split(b"][")


def feed(sock: t.Any, events: int, gap: float, size: int, linger: float = 0.0) -> None:
    try:
        for number in range(events):
            gevent.sleep(gap)
            sock.sendall(pushed_event(number, size))
        gevent.sleep(linger)
    finally:
        sock.close()


def read_all(sock: t.Any, stall: float = 0.0) -> bytes:
    gevent.sleep(stall)
    parts = []
    while data := sock.recv(1 << 20):
        parts.append(data)
    return b"".join(parts)


class Relay:
    """One body, its feeder, one client and its reader."""

    def __init__(self, events: int, gap: float = 0.0, size: int = 16, timeout: float = 10.0, linger: float = 0.0,
                 stall: float = 0.0) -> None:
        ours, theirs = gsocket.socketpair()
        self.client, peer = gsocket.socketpair()
        self.body = PushedBody(ours, timeout)
        self.feeder = gevent.spawn(feed, theirs, events, gap, size, linger)
        self.reader = gevent.spawn(read_all, peer, stall)
        self.peer = peer
        self.expected = b"".join(pushed_event(number, size) for number in range(events))

    def run(self) -> None:
        upstream = self.body.upstream()
        assert upstream is not None
        Pump(self.client, self.body, wire).run(*upstream)

    def received(self) -> bytes:
        self.client.close()
        return t.cast(bytes, self.reader.get(timeout=10))


def test_every_event_is_relayed_in_order_and_run_returns_at_the_end() -> None:
    relay = Relay(20, gap=0.002)
    relay.run()
    assert relay.body.over and relay.body.how == "complete"
    assert relay.client.gettimeout() is None  # the connection's socket waits again for the next request
    pieces = unwire(relay.received())
    assert b"".join(pieces) == relay.expected
    assert all(pieces)  # nothing sent for a step that gave nothing


def test_a_client_that_stops_reading_holds_back_the_upstream_then_gets_every_byte() -> None:
    relay = Relay(8, size=1 << 20, stall=0.5)  # 8 MB: far more than the socket buffers hold
    runner = gevent.spawn(relay.run)
    gevent.sleep(0.3)
    assert not relay.feeder.dead  # the pump stopped reading the upstream: its sender is blocked
    steps = relay.body.steps
    gevent.sleep(0.1)
    assert relay.body.steps == steps
    runner.get(timeout=10)
    assert b"".join(unwire(relay.received())) == relay.expected


def test_a_client_gone_ends_the_relay_with_an_oserror() -> None:
    relay = Relay(50, gap=0.01)
    relay.reader.kill()
    relay.peer.close()
    with pytest.raises(OSError):
        relay.run()
    assert not relay.body.over
    assert relay.client.gettimeout() is None
    relay.feeder.kill()


def test_a_silent_upstream_expires_after_the_timeout() -> None:
    relay = Relay(2, timeout=0.3, linger=5.0)
    started = time.monotonic()
    relay.run()
    took = time.monotonic() - started
    assert 0.25 <= took < 2.0
    assert relay.body.how == "expired"
    pieces = unwire(relay.received())
    assert pieces[-1] == b"expired\n"
    assert b"".join(pieces[:-1]) == relay.expected
    relay.feeder.kill()


def test_events_keep_a_slow_stream_alive_past_the_timeout() -> None:
    relay = Relay(8, gap=0.1, timeout=0.5)  # 0.8 s in all, never 0.5 s without an event
    relay.run()
    assert relay.body.how == "complete"
    assert b"".join(unwire(relay.received())) == relay.expected


class Buffered(PushedBody):
    """Bytes already read with the response head: the socket will not signal them."""

    def step(self) -> bytes:
        if self.steps == 0:
            self.steps += 1
            return b"with-the-head\n"
        return super().step()


def test_what_came_with_the_head_is_sent_without_waiting_for_the_socket() -> None:
    relay = Relay(1, gap=1.0)  # the upstream's next bytes come a second later
    relay.reader.kill()  # the test reads the client side itself
    relay.body.__class__ = Buffered
    runner = gevent.spawn(relay.run)
    first = gevent.with_timeout(0.5, relay.peer.recv, 100, timeout_value=b"")
    assert first == b"[with-the-head\n]"
    runner.get(timeout=5)
    assert relay.peer.recv(100) == b"[" + pushed_event(0, 16) + b"]"
    relay.client.close()


class Failing(PushedBody):
    def step(self) -> bytes:
        self.steps += 1
        raise ValueError("the body failed")


def test_an_error_in_a_step_is_raised_by_run_and_nothing_is_watched_after() -> None:
    relay = Relay(3, gap=0.01, linger=0.2)
    relay.body.__class__ = Failing
    with pytest.raises(ValueError, match="the body failed"):
        relay.run()
    gevent.sleep(0.05)  # more events arrive: nothing calls the body any more
    assert relay.body.steps == 1
    assert relay.client.gettimeout() is None
    relay.feeder.kill()


def test_a_killed_relay_stops_watching() -> None:
    relay = Relay(30, gap=0.01)
    runner = gevent.spawn(relay.run)
    gevent.sleep(0.05)
    runner.kill()
    steps = relay.body.steps
    gevent.sleep(0.1)  # events keep arriving
    assert relay.body.steps == steps
    assert relay.client.gettimeout() is None
    relay.feeder.kill()


def test_what_the_wire_raises_is_raised_by_run() -> None:
    relay = Relay(2)

    def broken_wire(data: bytes) -> bytes:
        raise RuntimeError("cannot frame")

    upstream = relay.body.upstream()
    assert upstream is not None
    with pytest.raises(RuntimeError, match="cannot frame"):
        Pump(relay.client, relay.body, broken_wire).run(*upstream)


# --- the pacer: first bytes before later ones -------------------------------------------------


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Slow(PushedBody):
    """A body whose every step that reads something costs ``cost`` seconds of CPU and is logged."""

    log: t.ClassVar[list[str]]
    cost: t.ClassVar[float]
    on_first: t.ClassVar[t.Callable[[], None] | None]

    def step(self) -> bytes:
        data = super().step()
        if data and not self.over:
            Slow.log.append("relay")
            if Slow.on_first is not None:
                first, Slow.on_first = Slow.on_first, None
                first()
            busy(Slow.cost)
        return data


class Burst:
    """``count`` paced relays whose upstreams all become readable in the same loop turn, and a
    request (a greenlet waiting on a socket, as a connection waits for its next request)."""

    def __init__(self, count: int, pacer: Pacer | None, cost: float = 0.002) -> None:
        Slow.log, Slow.cost, Slow.on_first = [], cost, None
        self.feeds = []
        self.relays = []
        self.runners = []
        for _ in range(count):
            ours, theirs = gsocket.socketpair()
            client, peer = gsocket.socketpair()
            body = Slow(ours, 10.0)
            self.feeds.append(theirs)
            self.relays.append((body, client, gevent.spawn(read_all, peer)))
            self.runners.append(gevent.spawn(Pump(client, body, wire, pacer).run, ours, 10.0))
        self.request, self.requester = gsocket.socketpair()
        self.waiter = gevent.spawn(self._serve)
        gevent.sleep(0.05)  # every relay watches its upstream now

    def _serve(self) -> None:
        self.request.recv(10)
        Slow.log.append("request")

    def send_all(self, event: bytes = b"event\n") -> None:
        """The same event from every upstream, written without yielding to the loop."""
        for sock in self.feeds:
            sock.send(event)

    def finish(self) -> list[bytes]:
        for sock in self.feeds:
            sock.close()
        gevent.joinall(self.runners, timeout=10, raise_error=True)
        received = []
        for _, client, reader in self.relays:
            client.close()
            received.append(t.cast(bytes, reader.get(timeout=10)))
        return received


def test_a_request_in_a_busy_turn_is_served_before_the_relays_that_wait() -> None:
    burst = Burst(8, Pacer(1.0))
    burst.requester.send(b"GET")  # readable first: libev would call it last of the turn
    burst.send_all()
    burst.waiter.get(timeout=10)
    gevent.sleep(0.1)
    assert Slow.log.index("request") <= 1, Slow.log  # one relay ran before the turn was long
    assert Slow.log.count("relay") == 8
    assert [b"".join(unwire(got)) for got in burst.finish()] == [b"event\n"] * 8


def test_without_a_pacer_a_request_waits_for_every_relay_of_the_turn() -> None:
    burst = Burst(8, None)
    burst.requester.send(b"GET")
    burst.send_all()
    burst.waiter.get(timeout=10)
    assert Slow.log.index("request") > 1, Slow.log  # libev calls it last of the turn: what the pacer is for
    burst.finish()


def test_relays_that_wait_run_a_slice_per_turn_then_the_next_requests_come_first() -> None:
    burst = Burst(10, Pacer(0.005), cost=0.002)  # 20 ms of relays, 5 ms of them per turn
    Slow.on_first = lambda: burst.requester.send(b"GET")  # a request comes while the turn runs
    burst.send_all()
    burst.waiter.get(timeout=10)
    gevent.sleep(0.1)
    assert 2 <= Slow.log.index("request") <= 6, Slow.log
    assert Slow.log.count("relay") == 10
    assert [b"".join(unwire(got)) for got in burst.finish()] == [b"event\n"] * 10


def test_paced_relays_keep_their_order_and_lose_nothing() -> None:
    burst = Burst(6, Pacer(0.003), cost=0.001)
    for number in range(5):
        burst.send_all(pushed_event(number, 100))
        gevent.sleep(0.001)
    got = burst.finish()
    assert [b"".join(unwire(sent)) for sent in got] == [b"".join(pushed_event(n, 100) for n in range(5))] * 6


def test_a_relay_that_ends_while_it_waits_is_skipped() -> None:
    burst = Burst(5, Pacer(1.0))
    doomed = burst.runners[3]
    Slow.on_first = lambda: doomed.kill(block=False)
    burst.send_all()
    gevent.sleep(0.1)
    assert Slow.log.count("relay") == 4
    burst.runners.remove(doomed)
    burst.relays[3][0].over = True  # its socket is still open; the others end with theirs
    received = burst.finish()
    assert [b"".join(unwire(got)) for index, got in enumerate(received) if index != 3] == [b"event\n"] * 4


def test_relay_slice_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RELAY_SLICE_ENV, raising=False)
    assert relay_slice() == DEFAULT_RELAY_SLICE_MS / 1000
    for value, seconds in (("0", 0.0), (" 2.5 ", 0.0025), ("1000", 1.0)):
        monkeypatch.setenv(RELAY_SLICE_ENV, value)
        assert relay_slice() == seconds
    for bad in ("-1", "lots", "nan", "1001"):
        monkeypatch.setenv(RELAY_SLICE_ENV, bad)
        with pytest.raises(SystemExit, match=RELAY_SLICE_ENV):
            relay_slice()
