"""Bedrock Converse response → OpenAI chat.completion, and Converse usage → OpenAI usage.

Pure translation, no I/O. Usage: Bedrock's ``inputTokens`` excludes cached tokens, OpenAI's
``prompt_tokens`` includes them, so ``prompt_tokens`` = input + cache read + cache write;
``prompt_tokens_details.cached_tokens`` is the cache read, and the cache write goes in
``cache_creation_input_tokens`` (the name Anthropic, and OpenAI-compatible gateways after it, use).
"""

from __future__ import annotations

import json
import typing as t

from ..body import is_int
from ..errors import ApiError

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


def chat_completion(response: dict[str, t.Any], model: str, completion_id: str, created: int) -> dict[str, t.Any]:
    """The OpenAI ``chat.completion`` for a Converse response."""
    output = response.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    blocks = message.get("content") if isinstance(message, dict) else None
    if not isinstance(blocks, list):
        raise ApiError(502, "SAP AI Core answered with a Converse response without output.message.content")
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, t.Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            text.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            arguments = json.dumps(use.get("input", {}), ensure_ascii=False)
            function = {"name": str(use.get("name", "")), "arguments": arguments}
            calls.append({"id": str(use.get("toolUseId", "")), "type": "function", "function": function})
        elif isinstance(block.get("reasoningContent"), dict):
            reasoning_text = block["reasoningContent"].get("reasoningText")
            if isinstance(reasoning_text, dict) and isinstance(reasoning_text.get("text"), str):
                reasoning.append(reasoning_text["text"])
    content = "".join(text) or (None if calls else "")
    reply: dict[str, t.Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)
    if calls:
        reply["tool_calls"] = calls
    result: dict[str, t.Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": reply, "finish_reason": finish_reason(response.get("stopReason"))}],
    }
    usage = openai_usage(response.get("usage"))
    if usage is not None:
        result["usage"] = usage
    return result


def finish_reason(stop_reason: object) -> str:
    """OpenAI's ``finish_reason`` for a Converse ``stopReason``; an unknown reason counts as a stop."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def openai_usage(usage: object) -> dict[str, t.Any] | None:
    """OpenAI usage for Converse usage: cache reads and writes count as prompt tokens (see the module doc)."""
    if not isinstance(usage, dict):
        return None
    fresh, output, read, write = (
        _count(usage, key) for key in ("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")
    )
    prompt = fresh + read + write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read},
        "cache_creation_input_tokens": write,
    }


def usage_counts(response: dict[str, t.Any]) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens of a Converse response, counted as in :func:`openai_usage`."""
    usage = openai_usage(response.get("usage"))
    if usage is None:
        return None, None
    return usage["prompt_tokens"], usage["completion_tokens"]


def _count(usage: dict[str, t.Any], key: str) -> int:
    value = usage.get(key)
    return value if is_int(value) and value >= 0 else 0

