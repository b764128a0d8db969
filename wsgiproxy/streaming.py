"""Relaying an upstream stream to a client, one write per upstream read, with a close() that cleans up.

:class:`RelayedStream` is the WSGI iterable for every streamed response. It reads the upstream
body with ``read1`` (whatever arrived, no waiting for a full block), hands the bytes to a
translator and yields the events that read completed as one chunk: they have all arrived, so
joining them delays none and saves a write per event. Whatever ends the relay (upstream
EOF, an upstream failure, the client going away) runs :meth:`RelayedStream.close`: a fully read
upstream connection goes back to the pool, a half-read one is closed, never reused.
"""

from __future__ import annotations

import logging
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
                    message = str(read_error(exc))
                    log.warning("upstream stream failed: %s", message)
                    yield self._error_event(message)
                    return
                if not chunk:
                    break
                events = translator.feed(chunk)
                if events:
                    # One write per upstream read: every event in it has arrived, so none waits.
                    yield events[0] if len(events) == 1 else b"".join(events)
            self._completed = True
            events = translator.finish()
            if events:
                yield b"".join(events)
        finally:
            self._release()

    def close(self) -> None:
        """Idempotent: ends the relay and releases or discards the upstream connection."""
        if self._relay is not None:
            self._relay.close()  # GeneratorExit at the current yield, if suspended
        self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._record is not None:
            self._record.tokens(*self._translator.token_counts())
        try:
            if self._completed:
                release(self._response)
            else:
                discard(self._response)  # half-read: never hand it back to the pool
        except Exception:  # pragma: no cover - closing a dead socket must not mask the real outcome
            log.debug("error while closing an upstream response", exc_info=True)
