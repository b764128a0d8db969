"""The token estimate behind ``/v1/messages/count_tokens``, made from the request alone; no I/O."""

from __future__ import annotations

import json
import math
import typing as t

from ..errors import bad_request

#: :func:`count_tokens` constants: characters per token (Anthropic's published rule of thumb for
#: English and code), the framing of each message and tool, and a fixed image or PDF cost
#: (Anthropic's ``width * height / 750`` for a 1092x1092 image; the data is never decoded).
CHARS_PER_TOKEN = 4
MESSAGE_TOKENS = 4
TOOL_TOKENS = 8
IMAGE_TOKENS = 1600


def count_tokens(body: t.Any) -> int:
    """A deterministic estimate for ``/v1/messages/count_tokens`` (Bedrock on AI Core cannot count).

    Each text piece costs ``ceil(len(text) / 4)`` tokens: system text, message text, thinking
    text, ``tool_use`` name and input JSON, ``tool_result`` content (strings or blocks, counted
    the same way), and each tool's name, description and ``input_schema`` JSON. Each message adds
    4 tokens and each tool 8; each image or non-text document costs a flat 1600. Blocks of other
    types cost their JSON. The answer is at least 1.

    :raises ApiError: 400, when ``messages`` is not an array.
    """
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise bad_request("'messages' must be an array of messages.", param="messages")
    total = _count_content(body.get("system"))
    for message in messages:
        total += MESSAGE_TOKENS + _count_content(message.get("content") if isinstance(message, dict) else message)
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type", "custom") == "custom":
            text = [tool.get("name"), tool.get("description"), tool.get("input_schema")]
            total += TOOL_TOKENS + sum(_text_tokens(part) for part in text)
        else:
            total += TOOL_TOKENS + _text_tokens(tool)
    return max(total, 1)


def _count_content(content: t.Any) -> int:
    if not isinstance(content, list):
        return _text_tokens(content)
    return sum(_count_block(block) for block in content)


def _count_block(block: t.Any) -> int:
    if not isinstance(block, dict):
        return _text_tokens(block)
    kind = block.get("type")
    if kind == "text":
        return _text_tokens(block.get("text"))
    if kind == "thinking":
        return _text_tokens(block.get("thinking"))
    if kind == "tool_use":
        return _text_tokens(block.get("name")) + _text_tokens(block.get("input"))
    if kind == "tool_result":
        return _count_content(block.get("content"))
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            return _text_tokens(source.get("data"))
        return IMAGE_TOKENS
    return _text_tokens(block)


def _text_tokens(value: t.Any) -> int:
    """``ceil(chars / 4)`` of a string, or of the JSON of anything else; nothing for ``None``."""
    if value is None:
        return 0
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return math.ceil(len(text) / CHARS_PER_TOKEN)
