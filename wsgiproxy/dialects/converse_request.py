"""OpenAI chat.completions request → Bedrock Converse request, for Claude (and Nova) behind the OpenAI face.

Pure translation, no I/O. The choices a reader should know about:

- ``max_tokens`` absent → :data:`DEFAULT_MAX_TOKENS`, a value every Converse model accepts (the
  original proxy sent 4,096,000, which every model rejects).
- ``tool_choice: "none"``: Converse has no "none". The tools are withheld, except when the history
  holds tool calls or results: Bedrock then demands a ``toolConfig``, so the tools stay (the model
  may still call one). A history with tool blocks but no ``tools`` at all gets minimal specs for
  the tools it names, for the same reason.
- ``reasoning_effort`` → Claude thinking with a budget from :data:`THINKING_BUDGETS`; see
  :func:`_thinking` for how ``maxTokens`` and sampling change with it.
"""

from __future__ import annotations

import json
import typing as t

from ..body import is_int
from ..errors import bad_request

DEFAULT_MAX_TOKENS = 8192
"""``inferenceConfig.maxTokens`` when the client sets no limit: the output ceiling of the oldest
Claude models still served (3.5 Sonnet), so the default never causes a 400 by itself."""

THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
"""``reasoning_effort`` → Claude's ``thinking.budget_tokens``. 1024 is Claude's smallest budget,
so OpenAI's "minimal" and "low" share it; ``"none"`` turns thinking off."""

IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}

EMPTY_TOOL_RESULT = "(no output)"
"""Stands in for an empty tool result: Bedrock rejects empty text blocks."""

Block = dict[str, t.Any]
_CACHE_POINT: Block = {"cachePoint": {"type": "default"}}


def converse_request(body: dict[str, t.Any]) -> dict[str, t.Any]:
    """The Converse request for an OpenAI chat.completions body; client mistakes raise a 400."""
    n = body.get("n")
    if n is not None and (not is_int(n) or n < 1):
        raise bad_request("'n' must be a positive integer", param="n")
    if n is not None and n > 1:
        raise bad_request("'n' greater than 1 is not supported for this model", param="n")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") not in (None, 0):
        raise bad_request("logprobs are not supported for this model", param="logprobs")
    _check_response_format(body.get("response_format"))
    system, messages = _messages(body.get("messages"))
    request: dict[str, t.Any] = {"messages": messages}
    if system:
        request["system"] = system
    inference, extra = _inference(body, messages)
    request["inferenceConfig"] = inference
    if extra:
        request["additionalModelRequestFields"] = extra
    tool_config = _tool_config(body.get("tools"), body.get("tool_choice"), messages)
    if tool_config is not None:
        request["toolConfig"] = tool_config
    return request


def _messages(raw: object) -> tuple[list[Block], list[dict[str, t.Any]]]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    system: list[Block] = []
    turns: list[dict[str, t.Any]] = []
    for position, message in enumerate(raw):
        param = f"messages[{position}]"
        if not isinstance(message, dict):
            raise bad_request(f"{param} must be an object", param=param)
        role = message.get("role")
        if role in ("system", "developer"):
            system += _content(message.get("content"), param, images=False)
            continue
        if role == "user":
            blocks, turn_role = _content(message.get("content"), param, images=True), "user"
        elif role == "assistant":
            blocks, turn_role = _assistant(message, param), "assistant"
        elif role == "tool":
            blocks, turn_role = [_tool_result(message, param)], "user"
        else:
            raise bad_request(f"{param}.role {role!r} is not supported", param=f"{param}.role")
        if not blocks:
            continue  # Bedrock rejects empty turns; dropping one may let its neighbours merge
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"] += blocks  # Bedrock requires alternating roles
        else:
            turns.append({"role": turn_role, "content": blocks})
    if not turns:
        raise bad_request("'messages' must contain a user message with content", param="messages")
    last = turns[-1]
    if last["role"] == "assistant" and "text" in last["content"][-1]:
        # a prefill: Claude rejects a final assistant turn that ends in whitespace
        text = last["content"][-1]["text"].rstrip()
        if text:
            last["content"][-1] = {"text": text}
        else:
            del last["content"][-1]
            if not last["content"]:
                turns.pop()
    return system, turns


def _content(content: object, param: str, *, images: bool) -> list[Block]:
    """Text (and, for user turns, image) blocks from a string or an array of content parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    if not isinstance(content, list):
        raise bad_request(f"{param}.content must be a string or an array of parts", param=f"{param}.content")
    blocks: list[Block] = []
    for index, part in enumerate(content):
        where = f"{param}.content[{index}]"
        if not isinstance(part, dict):
            raise bad_request(f"{where} must be an object", param=where)
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise bad_request(f"{where}.{kind} must be a string", param=where)
            if text.strip():
                blocks.append({"text": text})
        elif kind == "image_url" and images:
            blocks.append(_image(part.get("image_url"), where))
        else:
            allowed = "text and image_url" if images else "text"
            raise bad_request(f"{where}: content part type {kind!r} is not supported here ({allowed} are)", param=where)
        if isinstance(part.get("cache_control"), dict) and blocks:
            blocks.append(dict(_CACHE_POINT))
    return blocks


def _image(image: object, where: str) -> Block:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise bad_request(f"{where}.image_url.url must be a string", param=where)
    if url.startswith(("http://", "https://")):
        raise bad_request(
            f"{where}: image URLs are not fetched for this model; fetch it and send a data: URL "
            "(data:image/png;base64,...) instead",
            param="messages",
        )
    header, comma, data = url.partition(",")
    media_type = header[5:].split(";", 1)[0].lower() if header.startswith("data:") else ""
    if not comma or not header.endswith(";base64") or media_type not in IMAGE_FORMATS or not data:
        raise bad_request(
            f"{where}: an image must be a base64 data: URL of type png, jpeg, gif or webp", param="messages"
        )
    return {"image": {"format": IMAGE_FORMATS[media_type], "source": {"bytes": data}}}


def _assistant(message: dict[str, t.Any], param: str) -> list[Block]:
    """Text, then one ``toolUse`` per tool call; ``reasoning_content`` is dropped (it has no signature)."""
    blocks = _content(message.get("content"), param, images=False)
    calls = message.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise bad_request(f"{param}.tool_calls must be an array", param=f"{param}.tool_calls")
    for index, call in enumerate(calls):
        where = f"{param}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(function, dict):
            raise bad_request(f"{where} must be an object with a 'function'", param=where)
        call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments")
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            raise bad_request(f"{where} needs a string 'id' and 'function.name'", param=where)
        parsed = _arguments(arguments)
        if not isinstance(parsed, dict):
            raise bad_request(f"{where}.function.arguments must be a JSON object in a string", param=where)
        blocks.append({"toolUse": {"toolUseId": call_id, "name": name, "input": parsed}})
    return blocks


def _arguments(arguments: object) -> object:
    """The parsed tool-call arguments; an object some clients send unencoded is taken as is."""
    if arguments is None or isinstance(arguments, dict):
        return arguments or {}
    if not isinstance(arguments, str):
        return None
    if not arguments.strip():
        return {}
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):
        return None


def _tool_result(message: dict[str, t.Any], param: str) -> Block:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"{param}.tool_call_id must be a non-empty string", param=f"{param}.tool_call_id")
    content = [b for b in _content(message.get("content"), param, images=False) if "text" in b]
    return {"toolResult": {"toolUseId": call_id, "content": content or [{"text": EMPTY_TOOL_RESULT}]}}


def _check_response_format(value: object) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind != "text":
        raise bad_request(
            "response_format other than 'text' is not supported for this model; describe the format in the "
            "prompt or use a tool",
            param="response_format",
        )


def _inference(body: dict[str, t.Any], turns: list[dict[str, t.Any]]) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """``inferenceConfig`` and ``additionalModelRequestFields``."""
    config: dict[str, t.Any] = {}
    limit = body.get("max_completion_tokens")
    param = "max_completion_tokens"
    if limit is None:
        limit, param = body.get("max_tokens"), "max_tokens"
    if limit is not None and (not is_int(limit) or limit < 1):
        raise bad_request(f"'{param}' must be a positive integer", param=param)
    config["maxTokens"] = DEFAULT_MAX_TOKENS if limit is None else limit
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None:
        config["temperature"] = min(temperature, 1.0)  # Claude's range is 0-1; OpenAI's up to 2
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None:
        config["topP"] = top_p
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad_request("'stop' must be a string or an array of strings", param="stop")
        if sequences := [s for s in stop if s]:
            config["stopSequences"] = sequences
    extra: dict[str, t.Any] = {}
    top_k = body.get("top_k")
    if top_k is not None:
        if not is_int(top_k) or top_k < 0:
            raise bad_request("'top_k' must be a non-negative integer", param="top_k")
        extra["top_k"] = top_k
    thinking = _thinking(body.get("reasoning_effort"), turns)
    if thinking is not None:
        budget = thinking["budget_tokens"]
        if config["maxTokens"] <= budget:
            config["maxTokens"] += budget
        config.pop("temperature", None)
        config.pop("topP", None)
        extra.pop("top_k", None)
        extra["thinking"] = thinking
    return config, extra


def _thinking(effort: object, turns: list[dict[str, t.Any]]) -> dict[str, t.Any] | None:
    """Claude thinking for an OpenAI ``reasoning_effort``.

    Bedrock requires ``budget_tokens < maxTokens``: when the client's limit does not exceed the
    budget, the budget is added to it (the limit then bounds the answer after the reasoning).
    Sampling settings are dropped, Claude rejects them with thinking. Inside a tool loop (the
    last assistant turn called a tool) thinking is left off: Claude then requires that turn to
    start with the signed thinking block, which the OpenAI format cannot carry back.
    """
    if effort is None or effort == "none":
        return None
    if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
        raise bad_request(
            f"'reasoning_effort' must be one of none, {', '.join(THINKING_BUDGETS)}", param="reasoning_effort"
        )
    assistant = [turn for turn in turns if turn["role"] == "assistant"]
    if assistant and any("toolUse" in block for block in assistant[-1]["content"]):
        return None
    return {"type": "enabled", "budget_tokens": THINKING_BUDGETS[effort]}


def _tool_config(tools: object, choice: object, turns: list[dict[str, t.Any]]) -> dict[str, t.Any] | None:
    specs = _tool_specs(tools)
    used = [block for turn in turns for block in turn["content"] if "toolUse" in block or "toolResult" in block]
    mode = _tool_choice(choice, specs)
    if mode == "none" and not used:
        return None
    if not specs:
        if not used:
            return None
        # Bedrock demands a toolConfig whenever the history holds tool blocks
        names = dict.fromkeys(block["toolUse"]["name"] for block in used if "toolUse" in block)
        specs = [{"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}} for name in names]
        if not specs:
            specs = [{"toolSpec": {"name": "unavailable_tool", "inputSchema": {"json": {"type": "object"}}}}]
        return {"tools": specs}
    config: dict[str, t.Any] = {"tools": specs}
    if isinstance(mode, dict):
        config["toolChoice"] = mode
    return config


def _tool_specs(tools: object) -> list[Block]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", param="tools")
    specs = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise bad_request(f"{where} must be a function tool", param=where)
        name, description, parameters = function.get("name"), function.get("description"), function.get("parameters")
        if not isinstance(name, str) or not name:
            raise bad_request(f"{where}.function.name must be a non-empty string", param=where)
        if parameters is not None and not isinstance(parameters, dict):
            raise bad_request(f"{where}.function.parameters must be an object", param=where)
        spec: Block = {"name": name}
        if isinstance(description, str) and description:
            spec["description"] = description
        spec["inputSchema"] = {"json": parameters or {"type": "object", "properties": {}}}
        specs.append({"toolSpec": spec})
    return specs


def _tool_choice(choice: object, specs: list[Block]) -> dict[str, t.Any] | str | None:
    if choice is None or choice == "auto":
        return {"auto": {}} if choice else None
    if choice == "required":
        return {"any": {}}
    if choice == "none":
        return "none"
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise bad_request(
            "'tool_choice' must be 'auto', 'required', 'none' or a named function", param="tool_choice"
        )
    if name not in {spec["toolSpec"]["name"] for spec in specs}:
        raise bad_request(f"'tool_choice' names {name!r}, which is not in 'tools'", param="tool_choice")
    return {"tool": {"name": name}}


def _number(body: dict[str, t.Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"'{key}' must be a number from {low:g} to {high:g}", param=key)
    return float(value)
