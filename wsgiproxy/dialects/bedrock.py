"""Reading Bedrock streams (``converse-stream`` and ``invoke-with-response-stream``) from SAP AI Core.

AI Core chooses the stream framing from the request's ``Accept`` header:

- ``application/vnd.amazon.eventstream``: AWS binary event-stream (:mod:`.eventstream`). converse
  sends one message per event, ``:event-type`` naming it and the inner object as JSON payload;
  invoke sends ``:event-type=chunk`` messages whose payload ``{"bytes": <base64>, "p": <padding>}``
  wraps one Anthropic stream event. Errors arrive as ``:message-type=exception`` messages.
- anything else: text, one ``data: <payload>`` line per event. invoke payloads are Anthropic
  event JSON; converse payloads are Python dict reprs (single quotes, ``True``/``None``), one
  outer key naming the event: ``{'contentBlockDelta': {'delta': {'text': 'Hi'}, ...}}``.

:data:`ACCEPT` is what the proxy asks for, and :class:`BedrockStreamReader` reads both framings,
in case AI Core answers with text anyway. Either way the reader yields :class:`BedrockEvent`:
the framing is gone, only the event remains.
"""

from __future__ import annotations

import ast
import base64
import binascii
import json
import re
import typing as t

from .eventstream import EventStreamDecoder, EventStreamError, Message

EVENTSTREAM = "application/vnd.amazon.eventstream"

ACCEPT = EVENTSTREAM
"""The ``Accept`` header the proxy sends on Bedrock streaming calls. It is what SAP's own SDK
(``sap-ai-sdk-gen`` >= 5.8) sends: errors arrive as typed exception frames, every frame is
CRC-checked so truncation and corruption are detected, and converse events come as JSON rather
than Python literals that need ``ast.literal_eval``."""

CONVERSE_EVENTS = frozenset(
    {"messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata"}
)

Operation = t.Literal["converse", "invoke"]


class BedrockEvent:
    """One stream event, whatever its framing; unpacks as ``type, body`` and compares by those two.

    ``type``: converse: ``messageStart|contentBlockStart|contentBlockDelta|contentBlockStop|
    messageStop|metadata``; invoke: the Anthropic event type (``message_start``, ``ping``, ...);
    either: ``"exception"`` for an upstream error frame or line, or a stream that is corrupt or
    cut short.

    ``body``: converse: the inner object; invoke: the whole Anthropic event (with ``"type"``);
    exception: ``{"exceptionType": str, "message": str}``.

    ``raw``: invoke only: the event's JSON exactly as upstream sent it (``body`` parsed from it),
    so a caller that forwards the event unchanged need not serialize ``body`` again; else None.
    """

    __slots__ = ("type", "body", "raw")

    def __init__(self, type: str, body: dict[str, t.Any], raw: bytes | None = None) -> None:
        self.type = type
        self.body = body
        self.raw = raw

    def __iter__(self) -> t.Iterator[t.Any]:
        return iter((self.type, self.body))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BedrockEvent):
            return NotImplemented
        return self.type == other.type and self.body == other.body

    def __repr__(self) -> str:
        return f"BedrockEvent({self.type!r}, {self.body!r})"


def exception(exception_type: str, message: str) -> BedrockEvent:
    return BedrockEvent("exception", {"exceptionType": exception_type, "message": message})


def is_eventstream(content_type: str | None) -> bool:
    """Whether a response ``Content-Type`` announces the binary framing."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == EVENTSTREAM


# An invoke chunk's payload as Bedrock writes it: the base64 of one event, then optional padding.
_PLAIN_CHUNK = re.compile(rb'\{"bytes": ?"([A-Za-z0-9+/]*={0,2})"(?:, ?"p": ?"[A-Za-z0-9]*")?\}')


class BedrockStreamReader:
    """``feed(bytes) -> [BedrockEvent]``; ``finish()`` at upstream EOF.

    The framing is chosen from the upstream response's ``Content-Type``. A corrupt or
    unparseable stream yields one ``exception`` event and then nothing more: a reader that lost
    the framing cannot tell what follows. Upstream exception frames are passed on as
    ``exception`` events; what to do next is the caller's call.
    """

    def __init__(self, content_type: str | None, operation: Operation) -> None:
        if operation not in ("converse", "invoke"):
            raise ValueError(f"unknown Bedrock operation {operation!r}")
        self._operation: Operation = operation
        self._binary = is_eventstream(content_type)
        self._decoder = EventStreamDecoder()
        self._lines = bytearray()
        self._broken = False

    def feed(self, chunk: bytes) -> list[BedrockEvent]:
        if self._broken:
            return []
        if self._binary:
            try:
                messages = self._decoder.feed(chunk)
            except EventStreamError as exc:
                return self._break(exception("eventStreamError", str(exc)))
            return self._stop_after_break([self._from_message(message) for message in messages])
        return self._stop_after_break(self._from_lines(chunk))

    def finish(self) -> list[BedrockEvent]:
        """At upstream EOF: a truncated frame or an unparseable last line becomes an exception event."""
        if self._broken:
            return []
        if self._binary:
            if self._decoder.pending:
                return self._break(exception("truncatedStream", "SAP AI Core ended the stream inside an event"))
            return []
        rest = bytes(self._lines)
        self._lines.clear()
        line = rest.strip()
        if not line:
            return []
        event = self._from_line(line)
        if event is not None and event.body.get("exceptionType") == "invalidStreamData":
            return self._break(exception("truncatedStream", "SAP AI Core ended the stream inside an event"))
        return self._stop_after_break([] if event is None else [event])

    def _break(self, event: BedrockEvent) -> list[BedrockEvent]:
        self._broken = True
        return [event]

    def _stop_after_break(self, events: list[BedrockEvent]) -> list[BedrockEvent]:
        """Cut the list after the first event that means the framing itself is lost."""
        for position, event in enumerate(events):
            if event.type == "exception" and event.body["exceptionType"] == "invalidStreamData":
                self._broken = True
                return events[: position + 1]
        return events

    # -- binary framing

    def _from_message(self, message: Message) -> BedrockEvent:
        headers = message.headers
        kind = headers.get(":message-type", "event")
        if kind == "exception":
            name = headers.get(":exception-type")
            return exception(name if isinstance(name, str) else "exception", _exception_message(message.payload))
        if kind == "error":
            code, text = headers.get(":error-code"), headers.get(":error-message")
            return exception(code if isinstance(code, str) else "error", text if isinstance(text, str) else "")
        name = headers.get(":event-type")
        if kind != "event" or not isinstance(name, str):
            return _invalid(f"an event-stream message of type {kind!r} without an event type")
        if name == "chunk" and self._operation == "invoke":
            plain = _PLAIN_CHUNK.fullmatch(message.payload)
            if plain is not None:  # as Bedrock writes them: no need to parse the wrapper as JSON
                return _from_base64(plain.group(1))
        payload = _json_object(message.payload)
        if payload is None:
            return _invalid(f"the payload of a {name!r} event is not a JSON object")
        if self._operation == "converse":
            return BedrockEvent(name, payload)
        if name != "chunk":
            return _invalid(f"unexpected invoke event {name!r}")
        return _from_chunk(payload)

    # -- text framing

    def _from_lines(self, chunk: bytes) -> list[BedrockEvent]:
        """Every complete line that carries a payload. Lines, not blank-line-separated SSE events:
        SAP documents the text framing as ``data: `` lines "separated using newlines", and an SSE
        decoder would hold every event back until a blank line that may never come."""
        buffer = self._lines
        buffer += chunk
        end = max(buffer.rfind(b"\n"), buffer.rfind(b"\r"))
        if end < 0:
            return []
        complete = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        events = []
        for line in complete.splitlines():
            event = self._from_line(line.strip())
            if event is not None:
                events.append(event)
        return events

    def _from_line(self, line: bytes) -> BedrockEvent | None:
        if line.startswith(b"data:"):
            line = line[5:].strip()
        elif not line.startswith(b"{"):
            return None  # blank lines, SSE comments, ``event:`` names
        if not line or line == b"[DONE]":
            return None
        value = _literal(line, python=self._operation == "converse")
        if not isinstance(value, dict):
            return _invalid(f"a stream line is not an object: {line[:200]!r}")
        if self._operation == "invoke":
            return _from_invoke_object(value, line)
        return _from_converse_object(value)


def _from_converse_object(value: dict[str, t.Any]) -> BedrockEvent:
    if len(value) == 1:
        ((name, inner),) = value.items()
        if isinstance(inner, dict):
            if name in CONVERSE_EVENTS:
                return BedrockEvent(name, inner)
            if name.endswith("Exception"):
                return exception(name, _message_of(inner))
    error = _error_object(value)
    return error if error is not None else _invalid(f"an unknown converse stream event: {str(value)[:200]}")


def _from_invoke_object(value: dict[str, t.Any], raw: bytes | None = None) -> BedrockEvent:
    """``raw``: the JSON ``value`` was parsed from, kept on a plain event."""
    kind = value.get("type")
    if kind == "error":
        error = value.get("error")
        if isinstance(error, dict):
            return exception(str(error.get("type", "error")), _message_of(error))
        return exception("error", _message_of(value))
    if isinstance(kind, str):
        return BedrockEvent(kind, value, raw)
    chunk = value.get("chunk")
    if isinstance(chunk, dict):
        return _from_chunk(chunk)
    if "bytes" in value:
        return _from_chunk(value)
    error = _error_object(value)
    return error if error is not None else _invalid(f"an unknown invoke stream event: {str(value)[:200]}")


def _from_chunk(payload: dict[str, t.Any]) -> BedrockEvent:
    """One invoke ``chunk``: base64 of one Anthropic event; the ``p`` padding key is ignored."""
    encoded = payload.get("bytes")
    if not isinstance(encoded, str):
        return _invalid("an invoke chunk without base64 bytes")
    return _from_base64(encoded)


def _from_base64(encoded: str | bytes) -> BedrockEvent:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return _invalid("an invoke chunk whose bytes are not base64")
    event = _json_object(raw)
    if event is None or not isinstance(event.get("type"), str):
        return _invalid("an invoke chunk that is not an Anthropic event")
    return _from_invoke_object(event, raw)


def _error_object(value: dict[str, t.Any]) -> BedrockEvent | None:
    """``{"message", "__type"?}``, the platform's ``{"message", "code", "status"}``, or ``{"error": ...}``."""
    error = value.get("error")
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or "error"
        return exception(str(kind), _message_of(error))
    if isinstance(error, str):
        return exception("error", error)
    if isinstance(value.get("message"), str) or isinstance(value.get("Message"), str):
        kind = value.get("__type") or value.get("code") or "error"
        return exception(str(kind), _message_of(value))
    return None


def _message_of(value: dict[str, t.Any]) -> str:
    message = value.get("message", value.get("Message"))
    return message if isinstance(message, str) else json.dumps(value, default=str)[:1000]


def _exception_message(payload: bytes) -> str:
    value = _json_object(payload)
    if value is not None:
        return _message_of(value)
    return payload.decode("utf-8", "replace")[:1000]


def _json_object(data: bytes) -> dict[str, t.Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _literal(line: bytes, *, python: bool) -> object:
    """JSON, else (converse's text framing) a Python literal; ``None`` when it is neither.

    A Python literal is normalised through JSON, so consumers only ever see JSON types: tuples
    become lists, and bytes, sets or NaN make the line invalid.
    """
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        if not python:
            return None
    try:
        return json.loads(json.dumps(ast.literal_eval(line.decode("utf-8")), allow_nan=False))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError):
        return None


def _invalid(message: str) -> BedrockEvent:
    return exception("invalidStreamData", message)
