"""Incremental Server-Sent Events decoding, fed whatever bytes the network delivers.

Events may be split anywhere across reads, lines may end in LF, CRLF or CR (a CR at the end of
one read may be the first half of a CRLF), and comment lines are dropped.
"""

from __future__ import annotations

import typing as t


class Event(t.NamedTuple):
    """One event: its data lines joined by LF, and its ``event:`` name if it had one."""

    data: bytes
    name: bytes | None = None


class SSEDecoder:
    """``feed(bytes) -> [Event]`` as events complete; ``flush()`` returns a last unterminated event."""

    def __init__(self) -> None:
        self._buffer = b""
        self._pending_cr = False

    @property
    def idle(self) -> bool:
        """Nothing is held back: the next read starts a new event."""
        return not self._buffer and not self._pending_cr

    def feed(self, chunk: bytes) -> list[Event]:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, self._pending_cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk
        if b"\n\n" not in buffer:
            self._buffer = buffer
            return []
        *blocks, self._buffer = buffer.split(b"\n\n")
        return [event for block in blocks if (event := parse_block(block)) is not None]

    def flush(self) -> list[Event]:
        block, self._buffer = self._buffer, b""
        if self._pending_cr:
            self._pending_cr = False
        event = parse_block(block)
        return [event] if event is not None else []


def parse_block(block: bytes) -> Event | None:
    """One event from its lines; ``None`` for blocks with no data (comments, keep-alives)."""
    if block.startswith(b"data: ") and b"\n" not in block:
        return Event(block[6:])  # the common case, kept cheap
    data: list[bytes] = []
    name: bytes | None = None
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
    if not data:
        return None
    return Event(b"\n".join(data), name)


def encode(data: bytes, name: bytes | None = None) -> bytes:
    """One event on the wire."""
    if name is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


DONE = b"[DONE]"
