"""Relaying a pushed response body from the event loop's callbacks: no greenlet switch per event.

Iterating a streamed body costs the connection's greenlet, for every upstream event, a wait
(start a watcher, switch to the hub, switch back, stop the watcher), a read and a write. A bare
relay measured here spends about half of its CPU per event on that wait. For a body that can be
pushed (:class:`wsgiproxy.streaming.Pushable`) :class:`Pump` keeps one read watcher on the
upstream socket; its callback, run by the hub, steps the body and sends what it gives without
waiting. The connection's greenlet sleeps until the body is over.

A client that does not keep up turns the read watcher into a write watcher on the client until
it has taken the rest, so a slow client slows its upstream as before. The upstream's read
timeout is a timer, re-armed only when it fires: between events the cost is one clock read.

Under load, a :class:`Pacer` puts first bytes before later ones (see there).
"""

from __future__ import annotations

import os
import time
import typing as t
from collections import deque

from gevent.hub import Waiter, get_hub

from wsgiproxy.sockets import send_all

if t.TYPE_CHECKING:
    import socket

    from wsgiproxy.streaming import Pushable

_READ = 1
_WRITE = 2
_LOWEST_PRIORITY = -2  # libev's EV_MINPRI: called after every other callback of a loop turn

RELAY_SLICE_ENV = "WSGIPROXY_RELAY_SLICE_MS"
DEFAULT_RELAY_SLICE_MS = 10.0


def relay_slice() -> float:
    """``WSGIPROXY_RELAY_SLICE_MS`` in seconds: the :class:`Pacer`'s slice (0: no pacing)."""
    value = os.environ.get(RELAY_SLICE_ENV, "").strip()
    if not value:
        return DEFAULT_RELAY_SLICE_MS / 1000
    try:
        slice_ms = float(value)
    except ValueError:
        slice_ms = -1.0
    if not 0 <= slice_ms <= 1000:
        raise SystemExit(f"gunicorn.conf.py: {RELAY_SLICE_ENV}={value!r}: expected milliseconds from 0 to 1000")
    return slice_ms / 1000


class Pacer:
    """Puts a busy worker's first bytes before its later ones.

    One turn of the event loop runs every callback that became ready while the last turn ran.
    Relaying 1000 streams, that is tens of milliseconds of events, and a new request needs two
    turns before its first byte (one to read the request, one to read the upstream's answer):
    its time to first token grew to several turns while the events of streams already flowing
    were relayed without delay. An event that comes a few milliseconds late is not seen; a first
    token that comes a quarter of a second late is.

    So, in a turn that has run for more than :attr:`EARLY` seconds, an upstream that became
    readable waits, in order, behind the others that wait; requests and response heads
    (greenlets) are served at once. After the turn's other callbacks, the relays that wait run
    for ``slice_`` seconds at most, and the rest go on after the next turn's requests. A relay
    that waits reads all that came meanwhile in one step, so a worker that falls behind spends
    less per event. A worker that keeps up never lets a relay wait past the end of its turn.
    """

    EARLY = 0.0005

    __slots__ = ("_loop", "_slice", "_waiting", "_scheduled", "_next_turn")

    def __init__(self, slice_: float) -> None:
        self._loop = get_hub().loop
        self._slice = slice_
        self._waiting: deque[Pump] = deque()
        self._scheduled = False
        self._next_turn = self._loop.timer(0.0, priority=_LOWEST_PRIORITY)

    def must_wait(self) -> bool:
        """Whether a relay that is ready now waits: others wait, or the turn has run long."""
        # ``now()`` is the loop's time when its poll returned, on the same clock as time.time().
        return bool(self._waiting) or time.time() - self._loop.now() > self.EARLY

    def wait(self, pump: Pump) -> None:
        self._waiting.append(pump)
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self._run)  # after this turn's other callbacks

    def _run(self) -> None:
        waiting = self._waiting
        end = time.perf_counter() + self._slice
        try:
            while waiting:
                waiting.popleft().relay()
                if time.perf_counter() > end:
                    break
        finally:
            if waiting:
                self._next_turn.start(self._run)
            else:
                self._scheduled = False


class Pump:
    """One pushed body relayed to one client socket (a gevent socket, not TLS).

    :param wire: turns what the body gives into the bytes to send (the worker's framing; the
        response head goes with the first bytes).
    :param pacer: the worker's :class:`Pacer`; without one, every event is relayed when it comes.
    """

    __slots__ = ("_client", "_source", "_wire", "_pacer", "_loop", "_reader", "_writer", "_timer", "_waiter",
                 "_pending", "_timeout", "_last", "_done")

    def __init__(self, client: socket.socket, source: Pushable, wire: t.Callable[[bytes], bytes],
                 pacer: Pacer | None = None) -> None:
        self._client = client
        self._pacer = pacer
        self._source = source
        self._wire = wire
        self._loop = get_hub().loop
        self._reader: t.Any = None
        self._writer: t.Any = None
        self._timer: t.Any = None
        self._waiter: Waiter[t.Any] | None = None
        self._pending: memoryview | None = None  # bytes the client has not taken yet
        self._timeout = 0.0
        self._last = 0.0
        self._done = False

    def run(self, upstream: socket.socket, timeout: float) -> None:
        """Relay until the body is over. Raises what stopped it otherwise: ``OSError`` when the
        client went away, whatever the body raised."""
        client = self._client
        # What came with the response head is read already, and the socket will not signal it:
        # step once here. (A loop callback would wait for the rest of a busy loop turn.)
        first = self._source.step()
        if first:
            send_all(client, self._wire(first))
        if self._source.over:
            return
        loop = self._loop
        self._timeout = timeout
        self._last = time.monotonic()
        self._waiter = Waiter()
        client.settimeout(0.0)  # sends fail at once instead of waiting: the callbacks must not block
        try:
            self._reader = loop.io(upstream.fileno(), _READ)
            self._writer = loop.io(client.fileno(), _WRITE)
            self._timer = loop.timer(timeout)
            self._timer.start(self._check_silence)
            self._reader.start(self._readable)
            self._waiter.get()
        finally:
            self._stop()
            client.settimeout(None)

    # --- the callbacks, run by the hub: they never block, never raise -------------------------

    def _readable(self) -> None:
        if self._done or self._pending is not None:
            return  # over, or waiting for the client: the upstream waits too
        pacer = self._pacer
        if pacer is not None and pacer.must_wait():
            self._reader.stop()
            pacer.wait(self)
        else:
            self.relay()

    def relay(self) -> None:
        """Step the body once and send what it gave (called by the :class:`Pacer` too)."""
        if self._done or self._reader is None:
            return  # it ended while it waited
        self._last = time.monotonic()
        try:
            self._send(self._source.step())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting greenlet, which raises it
            self._end(exc)

    def _writable(self) -> None:
        try:
            self._send(b"")
        except BaseException as exc:  # noqa: BLE001
            self._end(exc)

    def _check_silence(self) -> None:
        try:
            left = self._last + self._timeout - time.monotonic()
            if self._reader.active and left <= 0:
                self._reader.stop()
                self._send(self._source.expire())
                return
            self._timer.close()  # waiting for the client, or an event came since: look again later
            self._timer = self._loop.timer(max(left, 0.001) if self._reader.active else self._timeout)
            self._timer.start(self._check_silence)
        except BaseException as exc:  # noqa: BLE001
            self._end(exc)

    def _send(self, data: bytes) -> None:
        """Send what the body gave (and what the client had not taken); end when the body is over."""
        out: bytes | memoryview
        if self._pending is None:
            out = self._wire(data) if data else b""
        else:  # a flush (_writable): the upstream is not read while the client has bytes pending
            out, self._pending = self._pending, None
        if out:
            try:
                sent = self._client.send(out)
            except BlockingIOError:
                sent = 0
            if sent < len(out):
                self._pending = memoryview(out)[sent:]
                self._reader.stop()
                if not self._writer.active:
                    self._writer.start(self._writable)
                return
        if self._source.over:
            self._end(None)
        elif not self._reader.active:
            self._writer.stop()
            self._last = time.monotonic()
            self._reader.start(self._readable)

    def _end(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._stop()
        waiter = self._waiter
        assert waiter is not None
        if error is None:
            waiter.switch(None)
        else:
            waiter.throw(error)

    def _stop(self) -> None:
        for watcher in (self._reader, self._writer, self._timer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._reader = self._writer = self._timer = None
