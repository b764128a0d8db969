"""Incremental decoding of the AWS binary event-stream, the framing Bedrock streams arrive in.

Each message on the wire (integers big-endian)::

    total_length:u32  headers_length:u32  prelude_crc:u32      prelude: CRC32 of the first 8 bytes
    headers           name_len:u8 name type:u8 value ...       ``headers_length`` bytes
    payload           total_length - headers_length - 16 bytes
    message_crc:u32                                            CRC32 of everything before it

Messages may be split anywhere across reads and several may arrive in one read. The decoder
keeps one ``bytearray`` and consumes whole messages from its front, so a message that trickles
in byte by byte is never copied more than a constant number of times. Any corruption (a CRC
mismatch, an impossible length, a malformed header) raises :class:`EventStreamError`: the
framing cannot be resynchronised after that, so the decoder refuses further input.

A stream's messages nearly all carry the same header bytes (``:event-type chunk``,
``:content-type``, ``:message-type event``), so each decoder keeps the headers it parsed by their
bytes and hands the same read-only mapping to every message that repeats them: parsing them is
about a fifth of what a message costs in Python.
"""

from __future__ import annotations

import struct
import typing as t
import zlib

from ..errors import WsgiproxyError

HeaderValue = bool | int | bytes | str
"""Types 0/1 → bool, 2-5 → int, 6 → bytes, 7 → str, 8 (timestamp) → int milliseconds since the
epoch, 9 (uuid) → 16 bytes: the same values botocore's own parser produces."""

MAX_MESSAGE_LENGTH = 16 * 1024 * 1024
"""Largest message accepted (16 MiB); a bigger length in a prelude means corruption, not data."""

MAX_HEADERS_LENGTH = 128 * 1024
"""Largest headers section accepted (128 KiB, botocore's bound)."""

_PRELUDE = struct.Struct(">III")
_PRELUDE_LENGTH = 12
_MIN_LENGTH = _PRELUDE_LENGTH + 4  # a message with no headers and no payload
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_INTS = {2: struct.Struct(">b"), 3: struct.Struct(">h"), 4: struct.Struct(">i"), 5: struct.Struct(">q")}
_TIMESTAMP = struct.Struct(">q")


class EventStreamError(WsgiproxyError):
    """The upstream event-stream is corrupt or truncated; the stream cannot be read further."""


class Message(t.NamedTuple):
    headers: t.Mapping[str, HeaderValue]  # shared by the messages with the same header bytes: read only
    payload: bytes


_KNOWN_HEADERS = 16  # distinct header blocks a decoder keeps parsed


class EventStreamDecoder:
    """``feed(bytes) -> [Message]`` as messages complete; ``pending`` tells of a partial message."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._failed: str | None = None
        self._known: dict[bytes, t.Mapping[str, HeaderValue]] = {}

    @property
    def pending(self) -> bool:
        """Whether bytes of an incomplete message are buffered (at EOF: the stream was cut short)."""
        return bool(self._buffer)

    def feed(self, chunk: bytes) -> list[Message]:
        if self._failed is not None:
            raise EventStreamError(self._failed)
        buffer = self._buffer
        buffer += chunk
        messages: list[Message] = []
        offset = 0
        available = len(buffer)
        try:
            while available - offset >= _PRELUDE_LENGTH:
                total = _check_prelude(buffer, offset)
                if available - offset < total:
                    break
                messages.append(_parse_message(bytes(buffer[offset : offset + total]), self._known))
                offset += total
        except EventStreamError as exc:
            self._failed = str(exc)
            raise
        finally:
            if offset:
                del buffer[:offset]
        return messages


def _check_prelude(buffer: bytearray, offset: int) -> int:
    """The total length of the message starting at ``offset``, once its prelude proves sane."""
    total, headers_length, crc = _PRELUDE.unpack_from(buffer, offset)
    actual = zlib.crc32(buffer[offset : offset + 8])
    if actual != crc:
        raise EventStreamError(f"event-stream prelude checksum mismatch (expected {crc:#010x}, got {actual:#010x})")
    if total > MAX_MESSAGE_LENGTH:
        raise EventStreamError(f"event-stream message of {total} bytes exceeds the {MAX_MESSAGE_LENGTH} byte limit")
    if headers_length > MAX_HEADERS_LENGTH:
        raise EventStreamError(f"event-stream headers of {headers_length} bytes exceed {MAX_HEADERS_LENGTH}")
    if total < _MIN_LENGTH + headers_length:
        raise EventStreamError(f"event-stream message length {total} is shorter than its headers ({headers_length})")
    return int(total)


def _parse_message(frame: bytes, known: dict[bytes, t.Mapping[str, HeaderValue]]) -> Message:
    (crc,) = _U32.unpack_from(frame, len(frame) - 4)
    actual = zlib.crc32(memoryview(frame)[:-4])
    if actual != crc:
        raise EventStreamError(f"event-stream message checksum mismatch (expected {crc:#010x}, got {actual:#010x})")
    (headers_length,) = _U32.unpack_from(frame, 4)
    end = _PRELUDE_LENGTH + headers_length
    block = frame[_PRELUDE_LENGTH:end]
    headers = known.get(block)
    if headers is None:
        headers = _parse_headers(frame, _PRELUDE_LENGTH, end)
        if len(known) < _KNOWN_HEADERS:
            known[block] = headers
    return Message(headers, frame[end:-4])


def _parse_headers(frame: bytes, position: int, end: int) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    try:
        while position < end:
            name_length = frame[position]
            position += 1
            name = _text(frame, position, name_length, end)
            position += name_length
            kind = frame[position] if position < end else -1
            position += 1
            value, position = _parse_value(frame, kind, position, end)
            if name in headers:
                raise EventStreamError(f"event-stream header {name!r} appears twice")
            headers[name] = value
    except (IndexError, struct.error):
        raise EventStreamError("event-stream headers are truncated") from None
    return headers


def _parse_value(frame: bytes, kind: int, position: int, end: int) -> tuple[HeaderValue, int]:
    if kind in (6, 7):
        _bounded(position + 2, end)
        (length,) = _U16.unpack_from(frame, position)
        position += 2
        if kind == 7:
            return _text(frame, position, length, end), position + length
        _bounded(position + length, end)
        return frame[position : position + length], position + length
    if kind in _INTS:
        fmt = _INTS[kind]
        _bounded(position + fmt.size, end)
        return int(fmt.unpack_from(frame, position)[0]), position + fmt.size
    if kind in (0, 1):
        return kind == 0, position
    if kind == 8:
        _bounded(position + 8, end)
        return int(_TIMESTAMP.unpack_from(frame, position)[0]), position + 8
    if kind == 9:
        _bounded(position + 16, end)
        return frame[position : position + 16], position + 16
    raise EventStreamError(f"event-stream header has unknown value type {kind}")


def _text(frame: bytes, position: int, length: int, end: int) -> str:
    _bounded(position + length, end)
    try:
        return frame[position : position + length].decode("utf-8")
    except UnicodeDecodeError:
        raise EventStreamError("event-stream header is not valid UTF-8") from None


def _bounded(stop: int, end: int) -> None:
    if stop > end:
        raise EventStreamError("event-stream headers are truncated")
