"""The AWS binary event-stream encoder (``application/vnd.amazon.eventstream``), protocol §4b.

One message, all integers big-endian::

    total_len:u32  headers_len:u32  prelude_crc:u32   (CRC32 of the first 8 bytes)
    headers        each name_len:u8 name type:u8=7 (string) value_len:u16 value
    payload
    message_crc:u32                                   (CRC32 of everything before it)

Only string headers are written: they are all Bedrock sends.  This is what boto3's
``EventStreamBuffer`` parses, so a message it cannot decode is a bug here.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7
_PRELUDE = 12  # total_len, headers_len, prelude_crc
_TRAILER = 4


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One complete message with *headers* (all strings) and *payload*."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    total = _PRELUDE + len(encoded) + len(payload) + _TRAILER
    prelude = struct.pack(">II", total, len(encoded))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return head + struct.pack(">I", zlib.crc32(head))


def event(event_type: str, payload: object) -> bytes:
    """An ``:message-type=event`` message whose payload is *payload* as compact JSON."""
    return encode_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        json.dumps(payload, separators=(",", ":")).encode("utf-8"),
    )


def exception(exception_type: str, message: str) -> bytes:
    """An ``:message-type=exception`` message, which boto3 raises as ``EventStreamError``."""
    return encode_message(
        {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"},
        json.dumps({"message": message}, separators=(",", ":")).encode("utf-8"),
    )


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
    if len(raw_name) > 255 or len(raw_value) > 65535:
        raise ValueError(f"event-stream header {name!r} is too long")
    return struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", _STRING, len(raw_value)) + raw_value
