"""Relaying an upstream stream to a client, one write per upstream read, with a close() that cleans up.

:class:`RelayedStream` is the WSGI iterable for every streamed response. It reads the upstream
body with ``read1`` (whatever arrived, no waiting for a full block), hands the bytes to a
translator and yields the events that read completed as one chunk: they have all arrived, so
joining them delays none and saves a write per event. Whatever ends the relay (upstream
EOF, an upstream failure, the client going away) runs :meth:`RelayedStream.close`: a fully read
upstream connection goes back to the pool, a half-read one is closed, never reused.

A server that runs an event loop can push the relay instead of iterating it (:class:`Pushable`):
it waits for the upstream socket itself and calls :meth:`RelayedStream.step` whenever that socket
is readable, with no greenlet of its own waiting per event (``servers/pump.py``).
"""

from __future__ import annotations

import logging
import socket
import typing as t

from .aicore.transport import READ_SIZE, STREAM_ERRORS, discard, read_error, release

if t.TYPE_CHECKING:
    from .aicore.transport import UpstreamResponse
    from .record import RequestRecord

log = logging.getLogger("wsgiproxy.stream")


class Translator(t.Protocol):
    def feed(self, chunk: bytes) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...

    def token_counts(self) -> tuple[int | None, int | None]:
        """``(prompt_tokens, completion_tokens)`` seen so far; None where upstream did not say."""
        ...


class Pushable(t.Protocol):
    """A response body a server may relay from its event loop instead of iterating it."""

    over: bool  #: the body ended: nothing more to send after what the last step gave

    def upstream(self) -> tuple[socket.socket, float] | None:
        """The socket whose readability makes :meth:`step` worth calling and the longest wait for
        it; ``None`` when this body can only be iterated."""
        ...

    def step(self) -> bytes:
        """What the bytes that arrived complete, ready to send (``b""``: nothing yet). Never waits."""
        ...

    def expire(self) -> bytes:
        """The upstream was silent for the longest wait: the body's last bytes; it is over."""
        ...


class RelayedStream:
    """WSGI iterable over a translated upstream stream.

    :param error_event: renders an upstream failure after the first byte as a final event in
        the client's format (the status line is long gone by then).
    :param record: receives the translator's token counts when the relay ends, however it ends.
    """

    def __init__(
        self,
        response: UpstreamResponse,
        translator: Translator,
        error_event: t.Callable[[str], bytes],
        record: RequestRecord | None = None,
    ) -> None:
        self._response = response
        self._record = record
        self._translator = translator
        self._error_event = error_event
        self._relay: t.Generator[bytes, None, None] | None = None
        self._completed = False
        self._closed = False
        self.over = False

    def __iter__(self) -> t.Iterator[bytes]:
        if self._relay is None:
            self._relay = self._events()
        return self._relay

    def _events(self) -> t.Generator[bytes, None, None]:
        read1 = self._response.read1
        translator = self._translator
        try:
            while True:
                try:
                    chunk = read1(READ_SIZE)
                except STREAM_ERRORS as exc:
                    yield self._broken(exc)
                    return
                if not chunk:
                    break
                events = translator.feed(chunk)
                if events:
                    # One write per upstream read: every event in it has arrived, so none waits.
                    yield events[0] if len(events) == 1 else b"".join(events)
            last = self._ended()
            if last:
                yield last
        finally:
            self._release()

    # --- pushed (Pushable): the server waits for the upstream socket and calls step() -----------

    def upstream(self) -> tuple[socket.socket, float] | None:
        if self._relay is not None or self._closed:
            return None  # iterated already, or over
        sock = getattr(self._response, "sock", None)
        timeout = getattr(self._response, "read_timeout", None)
        if not isinstance(sock, socket.socket) or timeout is None:
            return None  # a response that cannot be read without waiting
        return sock, timeout

    def step(self) -> bytes:
        response = self._response
        try:
            chunk = response.read_nowait(READ_SIZE)  # type: ignore[attr-defined]
        except STREAM_ERRORS as exc:
            return self._broken(exc)
        if chunk is None:
            return b""
        events = self._translator.feed(chunk) if chunk else []
        if not chunk or response.sock is None:  # type: ignore[attr-defined]  # the body ended (with this read)
            events += [self._ended()]
        self._release_if_over()
        return events[0] if len(events) == 1 else b"".join(events)

    def expire(self) -> bytes:
        return self._broken(TimeoutError("timed out"))

    # --- how a relay ends ------------------------------------------------------------------------

    def _ended(self) -> bytes:
        """The upstream body ended: the translator's last events."""
        self._completed = self.over = True
        return b"".join(self._translator.finish())

    def _broken(self, exc: BaseException) -> bytes:
        """The upstream failed after the first byte: a final event in the client's format."""
        self.over = True
        message = str(read_error(exc))
        log.warning("upstream stream failed: %s", message)
        self._release_if_over()
        return self._error_event(message)

    def _release_if_over(self) -> None:
        if self.over and self._relay is None:
            self._release()  # pushed: nobody iterates to a finally

    def close(self) -> None:
        """Idempotent: ends the relay and releases or discards the upstream connection."""
        if self._relay is not None:
            self._relay.close()  # GeneratorExit at the current yield, if suspended
        self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = self.over = True
        if self._record is not None:
            self._record.tokens(*self._translator.token_counts())
        try:
            if self._completed:
                release(self._response)
            else:
                discard(self._response)  # half-read: never hand it back to the pool
        except Exception:  # pragma: no cover - closing a dead socket must not mask the real outcome
            log.debug("error while closing an upstream response", exc_info=True)
