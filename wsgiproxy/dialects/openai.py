"""The OpenAI face on Azure OpenAI deployments: a passthrough with a few deliberate fixes.

Requests: streaming calls always ask upstream for usage (``stream_options.include_usage``) so it
is known for every request; the body is otherwise forwarded byte for byte.

Streams: each upstream event is forwarded as its own chunk; Azure's prompt-filter chunk (empty
``choices``, no usage) is dropped because OpenAI clients index ``choices[0]``; the usage-only
chunk reaches the client only if it asked for it; exactly one ``data: [DONE]`` ends the stream.
"""

from __future__ import annotations

import json
import typing as t

from .sse import DONE, SSEDecoder, encode

_DONE_EVENT = encode(DONE)


def chat_upstream_body(body: dict[str, t.Any], raw: bytes) -> tuple[bytes, bool]:
    """The body to send upstream and whether the client itself asked for the usage chunk."""
    if body.get("stream") is not True:
        return raw, False
    options = body.get("stream_options")
    client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    if client_wants_usage:
        return raw, True
    if "stream_options" not in body:
        # The usual case: add the option in front of the first key instead of re-encoding the body.
        # `body` parsed as a non-empty object (it has "stream"), so a key follows the brace.
        brace = raw.index(b"{") + 1
        return raw[:brace] + b'"stream_options":{"include_usage":true},' + raw[brace:], False
    upstream = dict(body)
    upstream["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return json.dumps(upstream, ensure_ascii=False, separators=(",", ":")).encode(), False


def error_event(message: str, *, type: str = "api_error", code: str | None = "upstream_error") -> bytes:
    """An OpenAI-style error event; the openai SDK raises ``APIError`` on it."""
    return encode(json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode())


def passes_through(chunk: bytes) -> bool:
    """Whether ``chunk`` is whole ``data: {...}`` events, each on one line and each with a
    non-empty ``choices`` array: what the filter below would send on byte for byte.

    Scanning a read costs about 1 ns per byte on a bench core and a stream event is a few hundred
    bytes, so this makes four scans of it where a check per marker made ten. ``"choices":[{``
    cannot occur inside a JSON string (its quotes would be escaped), so counting it counts the
    events with content; an empty ``choices``, ``[DONE]`` or any other line makes a count differ.
    """
    if not (chunk.startswith(b"data: {") and chunk.endswith(b"}\n\n")) or b"\r" in chunk:
        return False
    events = chunk.count(b"}\n\ndata: {") + 1
    return chunk.count(b"\n") == 2 * events and chunk.count(b'"choices":[{') == events


def _finishes(chunk: bytes) -> bool:
    """Whether an event of ``chunk`` has a ``finish_reason`` (a string, not ``null``)."""
    at = chunk.find(b'"finish_reason":')
    while at >= 0:
        at += 16
        if chunk.startswith(b'"', at) or chunk.startswith(b' "', at):
            return True
        at = chunk.find(b'"finish_reason":', at)
    return False


class ChatStream:
    """Filters an upstream chat-completions SSE stream for an OpenAI client.

    ``feed`` takes raw upstream bytes and returns the events to send; a read of plain events
    none of which is filtered (most reads: content deltas) is passed on as it came, as one
    element, without decoding and encoding each event again.
    ``finish`` is called at upstream EOF. ``usage`` holds the usage once seen.
    """

    def __init__(self, client_wants_usage: bool) -> None:
        self._decoder = SSEDecoder()
        self._client_wants_usage = client_wants_usage
        self.usage: dict[str, t.Any] | None = None
        self.done = False
        self.finished = False  # a finish_reason was seen

    def feed(self, chunk: bytes) -> list[bytes]:
        if not self.done and self._decoder.idle and passes_through(chunk):
            if not self.finished and _finishes(chunk):
                self.finished = True
            return [chunk]
        out = []
        for event in self._decoder.feed(chunk):
            data = event.data
            if self.done:
                continue  # nothing after [DONE], and never a second one
            if data == DONE:
                self.done = True
                out.append(_DONE_EVENT)
                continue
            if b'"finish_reason":"' in data or b'"finish_reason": "' in data:
                self.finished = True
            if b'"choices":[]' in data or b'"choices": []' in data:
                if not self._take_usage(data):
                    continue  # Azure's prompt_filter_results chunk
                if not self._client_wants_usage:
                    continue
            out.append(encode(data))
        return out

    def _take_usage(self, data: bytes) -> bool:
        try:
            usage = json.loads(data).get("usage")
        except (ValueError, AttributeError, RecursionError):
            return False
        if isinstance(usage, dict):
            self.usage = usage
            return True
        return False

    def token_counts(self) -> tuple[int | None, int | None]:
        """``(prompt_tokens, completion_tokens)`` from the usage chunk, once it was seen."""
        usage = self.usage
        if usage is None:
            return None, None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return (prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)

    def finish(self) -> list[bytes]:
        """At upstream EOF: complete a stream that lacked ``[DONE]``, or report it cut short."""
        out = self.feed(b"\n\n")
        if self.done:
            return out
        if self.finished:
            self.done = True
            return [*out, _DONE_EVENT]
        return [*out, error_event("SAP AI Core ended the stream before it was complete")]
