"""Bedrock converse-stream → OpenAI chat.completion chunks, as SSE. Pure translation, no I/O."""

from __future__ import annotations

import json
import typing as t

from ..body import is_int
from .bedrock import BedrockEvent, BedrockStreamReader
from .converse_response import finish_reason, openai_usage
from .openai import error_event
from .sse import DONE, encode

# Bedrock exception types that map to a more precise OpenAI error type than "api_error".
_STREAM_ERROR_TYPES = {
    "throttlingException": ("rate_limit_error", "rate_limit_exceeded"),
    "serviceUnavailableException": ("api_error", "service_unavailable"),
    "validationException": ("invalid_request_error", "invalid_request"),
    "modelStreamErrorException": ("api_error", "model_error"),
    "modelTimeoutException": ("timeout_error", "timeout"),
}


class ConverseChatStream:
    """A converse-stream read as OpenAI chat.completion chunks, one SSE event per element.

    One chunk id throughout; a role delta first; text and ``reasoning_content`` deltas; tool calls
    in OpenAI's shape (``index`` counts tool calls, not Bedrock's content blocks); the
    ``finish_reason`` chunk at ``messageStop``; the usage chunk (empty ``choices``) only when the
    client asked; one ``[DONE]``. An upstream exception, or a stream that ends before
    ``messageStop``, ends with an OpenAI error event and no ``[DONE]``.
    """

    def __init__(
        self, model: str, completion_id: str, created: int, client_wants_usage: bool, content_type: str | None
    ) -> None:
        self._reader = BedrockStreamReader(content_type, "converse")
        self._head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self._client_wants_usage = client_wants_usage
        self._started = False
        self._tools: dict[int, int] = {}  # contentBlockIndex → OpenAI tool-call index
        self._finished = False  # the finish_reason chunk went out
        self._ended = False  # [DONE] or an error event went out
        self.usage: dict[str, t.Any] | None = None

    def token_counts(self) -> tuple[int | None, int | None]:
        """(prompt, completion) tokens from the stream's metadata, once seen."""
        if self.usage is None:
            return None, None
        return self.usage["prompt_tokens"], self.usage["completion_tokens"]

    def feed(self, chunk: bytes) -> list[bytes]:
        return self._translate(self._reader.feed(chunk))

    def finish(self) -> list[bytes]:
        """At upstream EOF: ``[DONE]`` after a stream that stopped properly, else an error event."""
        out = self._translate(self._reader.finish())
        if self._ended:
            return out
        self._ended = True
        if self._finished:
            return [*out, encode(DONE)]
        return [*out, error_event("SAP AI Core ended the stream before it was complete")]

    def _translate(self, events: list[BedrockEvent]) -> list[bytes]:
        out: list[bytes] = []
        for event in events:
            if self._ended:
                break
            out += self._on(event)
        return out

    def _on(self, event: BedrockEvent) -> list[bytes]:
        kind, body = event
        if kind == "exception":
            self._ended = True
            name, message = str(body.get("exceptionType")), str(body.get("message"))
            error_type, code = _STREAM_ERROR_TYPES.get(name, ("api_error", "upstream_error"))
            return [error_event(f"{name}: {message}", type=error_type, code=code)]
        out = [] if self._started else [self._chunk({"role": "assistant", "content": ""})]
        self._started = True
        if kind == "contentBlockStart":
            start = body.get("start")
            use = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(use, dict):
                index = self._tools[_block_index(body)] = len(self._tools)
                function = {"name": str(use.get("name", "")), "arguments": ""}
                call = {"index": index, "id": str(use.get("toolUseId", "")), "type": "function", "function": function}
                out.append(self._chunk({"tool_calls": [call]}))
        elif kind == "contentBlockDelta":
            delta = body.get("delta")
            if isinstance(delta, dict):
                out += self._delta(_block_index(body), delta)
        elif kind == "messageStop" and not self._finished:
            self._finished = True
            out.append(self._chunk({}, finish_reason(body.get("stopReason"))))
        elif kind == "metadata":
            self.usage = openai_usage(body.get("usage"))
            if self._finished:  # metadata is the last event: complete now rather than at EOF
                self._ended = True
                if self._client_wants_usage and self.usage is not None:
                    out.append(self._json({**self._head, "choices": [], "usage": self.usage}))
                out.append(encode(DONE))
        return out

    def _delta(self, block: int, delta: dict[str, t.Any]) -> list[bytes]:
        text = delta.get("text")
        if isinstance(text, str):
            return [self._chunk({"content": text})] if text else []
        use = delta.get("toolUse")
        if isinstance(use, dict):
            fragment = use.get("input")
            if block not in self._tools or not isinstance(fragment, str) or not fragment:
                return []
            return [self._chunk({"tool_calls": [{"index": self._tools[block], "function": {"arguments": fragment}}]})]
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str) and reasoning["text"]:
            return [self._chunk({"reasoning_content": reasoning["text"]})]
        return []  # signatures, redacted reasoning: nothing an OpenAI client can use

    def _chunk(self, delta: dict[str, t.Any], finish: str | None = None) -> bytes:
        return self._json({**self._head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    @staticmethod
    def _json(value: dict[str, t.Any]) -> bytes:
        return encode(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _block_index(body: dict[str, t.Any]) -> int:
    index = body.get("contentBlockIndex")
    return index if is_int(index) else -1

