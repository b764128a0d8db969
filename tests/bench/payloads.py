"""The bytes the benchmark sends and the fake upstream answers, built once.

The chat request is a small realistic OpenAI request; the answers are what Azure OpenAI on SAP
AI Core returns (a chat.completion, or 20 chat.completion.chunk events plus the usage chunk and
``[DONE]``). Everything is plain ASCII JSON without ``'``, ``$`` or ``\\`` so it can sit in an
nginx single-quoted string as is. A Claude stream is what Bedrock's ``invoke-with-response-stream``
returns: 20 binary event-stream messages, each the base64 of one Anthropic event.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib

CLIENT_KEY = "sk-bench-0123456789abcdef"
TOKEN = "bench-token-" + "x" * 900  # XSUAA tokens are JWTs of about 1 kB
MODEL = "gpt-4o"  # non-streaming deployment (nginx static answer)
STREAM_MODEL = "gpt-4o-stream"  # streaming deployment (20 events, 20 ms apart)
DEPLOYMENT = "dbench0000000001"
STREAM_DEPLOYMENT = "dstream000000001"
CLAUDE_MODEL = "anthropic--claude-4.5-sonnet"  # a Bedrock invoke stream (20 binary messages, 20 ms apart)
CLAUDE_DEPLOYMENT = "dclaude000000001"
CHUNKS = 20
CHUNK_GAP_S = 0.020

_SYSTEM = "You are a helpful assistant. Answer briefly and precisely."
_USER = "Summarise in two sentences why connection pooling matters for an HTTP proxy in front of an LLM API."


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def chat_request(model: str = MODEL, stream: bool = False) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}],
        "temperature": 0.2,
        "max_tokens": 256,
    }
    if stream:
        body["stream"] = True  # no stream_options: the proxy adds include_usage, as for most SDK calls
    return json.dumps(body).encode()


TOKEN_RESPONSE = _dumps({"access_token": TOKEN, "token_type": "bearer", "expires_in": 43199,
                         "scope": "uaa.resource", "jti": "0f1e2d3c4b5a"})

_ANSWER = ("Connection pooling lets the proxy reuse warm TCP and TLS connections, so each request skips "
           "the handshake and the upstream sees fewer, longer-lived connections. That cuts latency and CPU "
           "on both sides and keeps throughput stable under bursts.")

CHAT_RESPONSE = _dumps({
    "id": "chatcmpl-BENCH0000000000000000000001",
    "object": "chat.completion",
    "created": 1735689600,
    "model": "gpt-4o-2024-08-06",
    "system_fingerprint": "fp_bench",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
        "hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"},
        "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}}],
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": _ANSWER, "refusal": None},
                 "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}}}],
    "usage": {"prompt_tokens": 41, "completion_tokens": 52, "total_tokens": 93},
})


def _chunk(delta: dict[str, object], finish: str | None = None) -> str:
    return _dumps({"id": "chatcmpl-BENCH0000000000000000000002", "object": "chat.completion.chunk",
                   "created": 1735689600, "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_bench",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})


def sse_events() -> list[str]:
    """The stream as SSE events (each ``data: ...\\n\\n``): CHUNKS events, the last one also
    carrying the usage chunk and ``[DONE]`` (sent together, as Azure does)."""
    words = _ANSWER.split()
    events = []
    for i in range(CHUNKS):
        if i == 0:
            delta: dict[str, object] = {"role": "assistant", "content": ""}
        else:
            delta = {"content": words[i % len(words)] + " "}
        events.append("data: " + _chunk(delta, "stop" if i == CHUNKS - 1 else None) + "\n\n")
    usage = _dumps({"id": "chatcmpl-BENCH0000000000000000000002", "object": "chat.completion.chunk",
                    "created": 1735689600, "model": "gpt-4o-2024-08-06", "choices": [],
                    "usage": {"prompt_tokens": 41, "completion_tokens": CHUNKS, "total_tokens": 41 + CHUNKS}})
    events[-1] += "data: " + usage + "\n\ndata: [DONE]\n\n"
    return events


def messages_request() -> bytes:
    """A streamed Anthropic Messages request for :data:`CLAUDE_MODEL`."""
    return json.dumps({"model": CLAUDE_MODEL, "max_tokens": 256, "stream": True, "system": _SYSTEM,
                       "messages": [{"role": "user", "content": _USER}]}).encode()


def anthropic_events(deltas: int = CHUNKS - 5) -> list[bytes]:
    """A Claude answer as Anthropic stream events (compact JSON): message_start, a text block of
    ``deltas`` deltas, message_delta with the usage, message_stop with Bedrock's invocation metrics."""
    words = _ANSWER.split()
    message = {"id": "msg_bench0000000000000001", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": 41, "output_tokens": 1}}
    events: list[dict[str, object]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}]
    events += [{"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": words[i % len(words)] + " "}} for i in range(deltas)]
    events += [{"type": "content_block_stop", "index": 0},
               {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": deltas}},
               {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                   "inputTokenCount": 41, "outputTokenCount": deltas, "invocationLatency": 400,
                   "firstByteLatency": 20}}]
    return [_dumps(event).encode() for event in events]


def invoke_frame(event: bytes) -> bytes:
    """One event-stream message of an invoke stream, as Bedrock writes it: an event-type ``chunk``
    whose payload is ``{"bytes":"<base64 of the event>","p":"<padding>"}``."""
    payload = _dumps({"bytes": base64.b64encode(event).decode(), "p": "abcdefghijklmnopqrstuvwxyz"[: len(event) % 26]})
    headers = b"".join(bytes([len(name)]) + name + b"\x07" + struct.pack(">H", len(value)) + value
                       for name, value in ((b":event-type", b"chunk"), (b":content-type", b"application/json"),
                                           (b":message-type", b"event")))
    prelude = struct.pack(">II", 12 + len(headers) + len(payload) + 4, len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload.encode()
    return message + struct.pack(">I", zlib.crc32(message))
