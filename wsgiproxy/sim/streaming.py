"""The body of every simulated stream: paced events, mid-stream faults, and accounting.

:class:`EventStream` is the WSGI iterable itself (served with ``direct_passthrough``),
so the server calls its :meth:`~EventStream.close` on completion, on error and when
the client goes away; that is where ``streams_*`` are counted, which is how an
aborted client shows up in ``GET /_sim/stats``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterable, Iterator
from typing import TYPE_CHECKING

from werkzeug.wrappers import Response

from .effects import abort_connection
from .faults import Fault
from .state import SimState

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from .call import Call


def sse_event(payload: object) -> bytes:
    """One ``data: <json>`` event with its blank line; a ``str`` payload is sent verbatim."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return b"data: " + data.encode("utf-8") + b"\n\n"


class EventStream:
    """Yield each event separately, sleeping *delay* seconds between two of them.

    :param events: the encoded events, produced lazily.
    :param fault: a ``reset`` or ``stall`` fault fires once *after_chunks* events were
        yielded (at the very end when the stream is shorter); other kinds are ignored.
    """

    def __init__(
        self,
        events: Iterable[bytes],
        *,
        state: SimState,
        environ: WSGIEnvironment,
        delay: float = 0.0,
        fault: Fault | None = None,
    ) -> None:
        self._events = events
        self._state = state
        self._environ = environ
        self._delay = delay
        self._fault = fault if fault is not None and fault.kind in ("reset", "stall") else None
        self._generator: Generator[bytes, None, None] | None = None
        self._outcome = "aborted"
        self._closed = False
        state.stream_opened()

    def __iter__(self) -> Iterator[bytes]:
        if self._generator is None:
            self._generator = self._run()
        return self._generator

    def _run(self) -> Generator[bytes, None, None]:
        sent = 0
        for event in self._events:
            self._maybe_fault(sent)
            if sent and self._delay:
                time.sleep(self._delay)
            yield event
            sent += 1
        self._maybe_fault(sent)
        self._outcome = "completed"

    def _maybe_fault(self, sent: int) -> None:
        fault = self._fault
        if fault is None or sent < fault.after_chunks:
            return
        self._fault = None
        if fault.kind == "stall":
            time.sleep(fault.seconds)
        else:
            self._outcome = "reset"
            abort_connection(self._environ)

    def close(self) -> None:
        """Stop producing and count the stream's outcome; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._generator is not None:
                self._generator.close()
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
        finally:
            self._state.stream_closed(self._outcome)


def sse_response(call: Call, events: Iterable[bytes]) -> Response:
    """A ``text/event-stream`` response streaming *events* with the call's pacing and fault."""
    return stream_response(call, events, "text/event-stream")


def stream_response(call: Call, events: Iterable[bytes], mimetype: str) -> Response:
    """A streamed response of *mimetype* (SSE, or Bedrock's binary event-stream) with the call's pacing and fault."""
    body = EventStream(
        events,
        state=call.state,
        environ=call.request.environ,
        delay=call.settings.chunk_delay_ms / 1000,
        fault=call.fault,
    )
    response = Response(body, mimetype=mimetype, direct_passthrough=True)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
