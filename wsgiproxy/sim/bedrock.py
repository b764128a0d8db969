"""The AWS Bedrock dialect (protocol §4b): Anthropic Messages ``invoke`` and ``converse``, each also streamed.

Served for ``aws-bedrock`` deployments at four suffixes: ``invoke``,
``invoke-with-response-stream``, ``converse`` and ``converse-stream``.

Framing.  ``invoke`` and ``converse`` answer JSON whatever ``Accept`` says (boto3 sends
``accept: application/vnd.amazon.eventstream`` on all four).  The two streams negotiate
on ``Accept``: one containing ``application/vnd.amazon.eventstream`` gets the binary
event-stream (``eventstream.py``); converse-stream events carry ``:event-type`` =
``messageStart|contentBlockStart|contentBlockDelta|contentBlockStop|messageStop|metadata``
and the inner object as JSON, invoke-with-response-stream events are all ``chunk`` with
``{"bytes": "<base64 of one Anthropic event>", "p": "<padding>"}``.  Any other
``Accept`` gets text, ``data: <payload>`` and a blank line per event, no ``[DONE]``: the
Anthropic events as strict JSON for invoke, ``repr()`` of ``{eventType: inner}`` (single
quotes, Python literals) for converse.

Validation, like Bedrock's (400 ``{"message", "__type": "ValidationException"}``):

- invoke accepts exactly :data:`INVOKE_FIELDS`; an extraneous key (``model``, ``stream``,
  ``metadata``...) is named in ``Malformed input request: #: extraneous key [stream] is not
  permitted...``.  ``anthropic_version`` must be ``bedrock-2023-05-31``; ``max_tokens`` a
  positive integer; blocks are ``text|image|tool_use|tool_result|thinking|redacted_thinking|
  document``; an image source must be base64 (``url`` is rejected) of png/jpeg/gif/webp.
- converse accepts exactly :data:`CONVERSE_FIELDS`; blocks have exactly one known key;
  image ``format`` png/jpeg/gif/webp with base64 ``source.bytes``; ``toolUse``/``toolResult``
  blocks need a ``toolConfig``; ``inferenceConfig`` and ``toolConfig`` keys and types are checked.
- both: roles alternate user/assistant starting with user, a message's content is
  non-empty (except a final assistant message), ``tool_use``/``toolUse`` only in
  assistant turns, and every tool result answers a tool call of the previous assistant
  turn.  Thinking (``thinking`` / ``additionalModelRequestFields.thinking``) of type
  ``enabled`` needs 1024 <= ``budget_tokens`` < max tokens, rejects a temperature other
  than 1, and rejects a tool choice that forces a tool.

Scenarios (deterministic; the proxy's integration tests rely on them exactly):

- *said* is the last user turn's text blocks joined by a space.  Input tokens are the
  words (:func:`~.text.count_tokens`) of the system prompt and of every text block and
  tool result of every message, at least 1.  Output tokens are the words of every text
  and thinking block plus those of each tool input's JSON (``json.dumps``).
- thinking enabled: a first thinking block ``Thinking about: <said[:40]>`` whose
  signature is the base64 SHA-256 of that text; converse reports it as ``reasoningContent``.
- tool results in the last user turn: one line per result, ``Tool <name> returned:
  <first 80 characters of its text>`` (name from the matching tool call; converse
  ``json`` content is compact JSON), stop ``end_turn``.
- otherwise, with tools declared and a tool choice other than ``none``, the model calls a
  tool only when the choice forces one (invoke ``tool_choice`` ``{"type": "any"}`` or
  ``{"type": "tool", "name": ...}``, converse ``toolChoice`` ``any`` or ``tool``) or *said*
  mentions a declared tool's name (case-insensitive, as a whole word, where ``_`` and ``-``
  are word characters: ``use get_weather for Paris``, ``run Bash to list files``, but not
  ``get_weathers``; ``<system-reminder>...</system-reminder>`` spans, which
  Claude Code adds to user turns, are not searched).  The tool is the ``tool`` choice's
  one, else the first declared tool that *said* mentions, else (choice ``any``) the first
  declared tool.  Merely declaring tools (Claude Code declares a dozen on every request)
  calls none: the answer is the text below, as without tools.  A call answers the text
  ``I'll use <name>.`` then the call, with an input built from the tool's schema: every
  ``required`` property (all of them if none is required) set to the first ``enum`` value or
  by type (string ``"sim"``, integer 1, number 1.5, boolean true, array [], object {}, else
  ``"sim"``); ids ``toolu_bdrk_<hex>`` (converse ``tooluse_<hex>``); stop ``tool_use``.
- otherwise the text of :func:`~.text.answer_text`.  In these two text cases the text is
  cut before the earliest stop sequence found (stop ``stop_sequence``), then to max tokens
  words (stop ``max_tokens``), else stop ``end_turn``.
- the invoke ``model`` is the deployment's model without the ``anthropic--`` prefix; a
  stream's ``message_start`` reports ``output_tokens`` 1, ``message_delta`` the total.
  Text blocks stream one word per delta (or ``chunks`` pieces), thinking one word per
  delta, tool input JSON in three fragments (two for ``{}``) that clients must join.

Faults.  ``delay``, a ``status`` without ``after_chunks``, and non-stream ``reset``/``stall``
act before the answer as for Azure; ``status`` bodies are Bedrock's shape (a 429 carries
only ``message``, as captured).  In streams ``reset``/``stall`` fire after ``after_chunks``
events in both framings.  A ``status`` fault with ``after_chunks`` >= 1 on an event-stream
sends that many events, then an exception frame (:func:`exception_type`, payload
``{"message"}``) and ends: boto3 raises ``EventStreamError``.  In text framing that fault is
answered before the stream, as the Azure dialect does.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from . import eventstream
from .call import Call, Dialect, Route
from .errors import Rejected, custom, json_response
from .faults import Fault
from .streaming import sse_event, stream_response
from .text import answer_text, count_tokens, split_chunks, truncate

ANTHROPIC_VERSION = "bedrock-2023-05-31"
INVOKE_FIELDS = frozenset({
    "anthropic_version", "anthropic_beta", "max_tokens", "messages", "system", "temperature", "top_p", "top_k",
    "stop_sequences", "tools", "tool_choice", "thinking",
})
CONVERSE_FIELDS = frozenset({
    "messages", "system", "inferenceConfig", "toolConfig", "additionalModelRequestFields",
    "additionalModelResponseFieldPaths", "guardrailConfig", "promptVariables", "requestMetadata", "performanceConfig",
})
INVOKE_BLOCKS = ("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking", "document")
CONVERSE_BLOCKS = (
    "text", "image", "document", "video", "toolUse", "toolResult", "guardContent", "reasoningContent", "cachePoint",
)
IMAGE_FORMATS = ("png", "jpeg", "gif", "webp")
MIN_THINKING_BUDGET = 1024
THINKING_QUOTE = 40
RESULT_QUOTE = 80
TOOL_FRAGMENTS = 3
_INFERENCE_CONFIG = frozenset({"maxTokens", "temperature", "topP", "stopSequences"})
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SAMPLES: dict[str, object] = {"string": "sim", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_STREAMS = ("invoke_stream", "converse_stream")


# -- errors ------------------------------------------------------------------------------
def bedrock_error(status: int, message: str, type_: str | None = None) -> Response:
    """An error in Bedrock's shape: ``{"message"}`` plus ``__type`` (and ``x-amzn-ErrorType``) when typed."""
    payload: dict[str, object] = {"message": message}
    if type_ is None:
        return json_response(payload, status)
    payload["__type"] = type_
    return json_response(payload, status, headers={"x-amzn-ErrorType": type_})


def _invalid(message: str) -> Rejected:
    return Rejected(bedrock_error(400, message, "ValidationException"))


def _malformed(*details: str) -> Rejected:
    """Invoke's JSON-schema complaint, worded as Bedrock words it."""
    return _invalid(f"Malformed input request: {', '.join(details)}, please reformat your input and try again.")


def exception_type(status: int) -> str:
    """The event-stream ``:exception-type`` a mid-stream ``status`` fault is sent as."""
    if status == 429:
        return "throttlingException"
    if status == 503:
        return "serviceUnavailableException"
    if 400 <= status < 500:
        return "validationException"
    return "modelStreamErrorException"


def _fault_error(fault: Fault, call: Call) -> Response:
    if fault.body is not None:
        return custom(fault.status, fault.body)
    if fault.status == 429:
        return bedrock_error(429, "Too many requests, please wait before trying again.")
    if fault.status == 400:
        return bedrock_error(400, "Simulated failure (HTTP 400)", "ValidationException")
    if fault.status == 503:
        return bedrock_error(503, "The service is temporarily unavailable.", "ServiceUnavailableException")
    if fault.status >= 500:
        return bedrock_error(fault.status, "The server encountered an internal error.", "InternalServerException")
    return bedrock_error(fault.status, f"Simulated failure (HTTP {fault.status})")


def _fault_message(fault: Fault) -> str:
    body = fault.body
    if isinstance(body, str):
        return body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return f"Simulated stream failure (HTTP {fault.status})"


def _not_found(request: Request, suffix: str) -> Response:
    return bedrock_error(404, f"Unknown operation: {suffix}", "UnknownOperationException")


def _wants_eventstream(request: Request) -> bool:
    return eventstream.CONTENT_TYPE in request.headers.get("Accept", "").lower()


def _defers_fault(fault: Fault, call: Call) -> bool:
    return (fault.kind == "status" and fault.after_chunks > 0 and call.route.name in _STREAMS
            and _wants_eventstream(call.request))


# -- what a request asks, in either operation's terms ---------------------------------
@dataclass(frozen=True)
class _Tool:
    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class _Ask:
    """The parts of a validated request that decide the answer."""

    said: str
    input_tokens: int
    tools: tuple[_Tool, ...] = ()
    choice: str = "auto"  # auto | any | tool | none
    chosen: str = ""  # the tool named by choice "tool"
    results: tuple[tuple[str, str], ...] = ()  # (tool name, result text) of the last user turn
    thinking: bool = False
    max_tokens: int | None = None
    stop_sequences: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Block:
    kind: str  # text | thinking | tool_use
    text: str = ""
    signature: str = ""
    tool_id: str = ""
    name: str = ""
    input: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class _Answer:
    blocks: tuple[_Block, ...]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int


def _answer(model: str, ask: _Ask, tool_id: str) -> _Answer:
    """Apply the module docstring's scenarios to *ask*."""
    blocks: list[_Block] = []
    if ask.thinking:
        thought = f"Thinking about: {ask.said[:THINKING_QUOTE]}"
        signature = base64.b64encode(hashlib.sha256(thought.encode()).digest()).decode("ascii")
        blocks.append(_Block("thinking", text=thought, signature=signature))
    stop_sequence: str | None = None
    tool = _called_tool(ask)
    if tool is not None:
        blocks.append(_Block("text", text=f"I'll use {tool.name}."))
        blocks.append(_Block("tool_use", tool_id=tool_id, name=tool.name, input=tool_input(tool.schema)))
        stop_reason = "tool_use"
    else:
        if ask.results:
            text = "\n".join(f"Tool {name} returned: {result[:RESULT_QUOTE]}" for name, result in ask.results)
        else:
            text = answer_text(model, ask.said)
        text, stop_sequence = _cut_at_stop(text, ask.stop_sequences)
        text, cut = truncate(text, ask.max_tokens)
        if cut:
            stop_sequence = None
        stop_reason = "max_tokens" if cut else "stop_sequence" if stop_sequence is not None else "end_turn"
        blocks.append(_Block("text", text=text))
    output = sum(count_tokens(b.text) for b in blocks)
    output += sum(count_tokens(json.dumps(b.input)) for b in blocks if b.kind == "tool_use")
    return _Answer(tuple(blocks), stop_reason, stop_sequence, ask.input_tokens, output)


def _called_tool(ask: _Ask) -> _Tool | None:
    """The tool the model calls (see the module docstring), or None for a text answer."""
    if ask.results or not ask.tools or ask.choice == "none":
        return None
    if ask.choice == "tool":
        return next((t for t in ask.tools if t.name == ask.chosen), ask.tools[0])
    text = _REMINDER.sub(" ", ask.said)
    mentioned = next((t for t in ask.tools if mentions(text, t.name)), None)
    if mentioned is None and ask.choice == "any":
        return ask.tools[0]
    return mentioned


def mentions(text: str, name: str) -> bool:
    """Whether *text* names *name*: case-insensitive, as a whole word (``get_weather``, not ``get_weathers``)."""
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text, re.IGNORECASE) is not None


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    found = [(text.find(s), s) for s in stops if s and s in text]
    if not found:
        return text, None
    index, stop = min(found)
    return text[:index], stop


def tool_input(schema: Mapping[str, Any]) -> dict[str, object]:
    """A tool input that fits *schema*'s ``properties`` and ``required`` (module docstring)."""
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) and required else properties
    return {name: _sample(properties.get(name)) for name in names}


def _sample(prop: object) -> object:
    if not isinstance(prop, Mapping):
        return "sim"
    enum = prop.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return copy.copy(_SAMPLES.get(kind, "sim")) if isinstance(kind, str) else "sim"


# -- shared request checks ---------------------------------------------------------------
def _object(call: Call, malformed: bool) -> dict[str, Any]:
    if call.body_error is not None or not isinstance(call.body, dict):
        reason = call.body_error or "expected a JSON object"
        if malformed:
            raise _malformed(f"#: {reason}")
        raise _invalid(f"The request body is not valid: {reason}.")
    return call.body


def _number(value: object, low: float, high: float) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high


def _positive_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _base64(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _thinking(raw: object, where: str, max_tokens: int | None, temperature: object, choice: str) -> bool:
    """Check a ``thinking`` object as Anthropic does; whether thinking is enabled."""
    if not isinstance(raw, dict) or raw.get("type") not in ("enabled", "disabled"):
        raise _invalid(f"{where}.type: Input should be 'enabled' or 'disabled'")
    if raw["type"] == "disabled":
        return False
    budget = raw.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < MIN_THINKING_BUDGET:
        raise _invalid(f"{where}.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}")
    if max_tokens is not None and budget >= max_tokens:
        raise _invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    if temperature is not None and temperature != 1:
        raise _invalid("`temperature` may only be set to 1 when thinking is enabled.")
    if choice in ("any", "tool"):
        raise _invalid("Thinking may not be enabled when tool_choice forces tool use.")
    return True


def _check_roles(roles: Sequence[object], first: str, alternate: str, bad_role: str) -> None:
    for index, role in enumerate(roles):
        if role not in ("user", "assistant"):
            raise _invalid(bad_role.format(index=index))
    if roles and roles[0] != "user":
        raise _invalid(first)
    if any(roles[i] == roles[i + 1] for i in range(len(roles) - 1)):
        raise _invalid(alternate)


# -- invoke ------------------------------------------------------------------------------
def _invoke_ask(call: Call) -> _Ask:
    """Validate an invoke body like Bedrock and Anthropic do; what it asks."""
    body = _object(call, malformed=True)
    extra = sorted(set(body) - INVOKE_FIELDS)
    if extra:
        raise _malformed(*(f"#: extraneous key [{key}] is not permitted" for key in extra))
    missing = [key for key in ("anthropic_version", "max_tokens", "messages") if key not in body]
    if missing:
        raise _malformed(*(f"#: required key [{key}] not found" for key in missing))
    if body["anthropic_version"] != ANTHROPIC_VERSION:
        raise _malformed(f"#/anthropic_version: {json.dumps(body['anthropic_version'])} is not a valid enum value")
    max_tokens = body["max_tokens"]
    if not _positive_int(max_tokens):
        raise _malformed(f"#/max_tokens: expected an integer >= 1, found {json.dumps(max_tokens)}")
    for name, low, high in (("temperature", 0.0, 1.0), ("top_p", 0.0, 1.0), ("top_k", 0, 1_000_000)):
        if name in body and not _number(body[name], low, high):
            raise _malformed(f"#/{name}: expected a number in [{low}, {high}], found {json.dumps(body[name])}")
    if "top_k" in body and not isinstance(body["top_k"], int):
        raise _malformed("#/top_k: expected type: Integer")
    for name in ("stop_sequences", "anthropic_beta"):
        if name in body and not _strings(body[name]):
            raise _malformed(f"#/{name}: expected an array of strings")
    system = _invoke_system(body.get("system"))
    tools = _invoke_tools(body.get("tools"))
    choice, chosen = _invoke_tool_choice(body.get("tool_choice"), tools)
    thinking = "thinking" in body and _thinking(body["thinking"], "thinking", max_tokens, body.get("temperature"),
                                                choice)
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: at least one message is required")
    counted, said, results = _invoke_messages(messages)
    stops = tuple(body.get("stop_sequences") or ())
    return _Ask(
        said=said, input_tokens=max(1, count_tokens(system) + sum(count_tokens(t) for t in counted)),
        tools=tools, choice=choice, chosen=chosen, results=results, thinking=thinking, max_tokens=max_tokens,
        stop_sequences=stops,
    )


def _invoke_system(system: object) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise _invalid("system: Input should be a valid string or a list of text blocks")
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _invalid(f"system.{index}: Input should be a text block")
    return " ".join(block["text"] for block in system)


def _invoke_tools(raw: object) -> tuple[_Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _invalid("tools: Input should be a valid list")
    tools = []
    for index, tool in enumerate(raw):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _invalid(f"tools.{index}.name: Field required")
        schema = tool.get("input_schema")
        if tool.get("type", "custom") == "custom" and not isinstance(schema, dict):
            raise _invalid(f"tools.{index}.custom.input_schema: Field required")
        tools.append(_Tool(tool["name"], schema if isinstance(schema, dict) else {}))
    return tuple(tools)


def _invoke_tool_choice(raw: object, tools: Sequence[_Tool]) -> tuple[str, str]:
    if raw is None:
        return "auto", ""
    if not isinstance(raw, dict) or raw.get("type") not in ("auto", "any", "tool", "none"):
        raise _invalid("tool_choice: Input tag found using 'type' does not match any of the expected tags: "
                       "'auto', 'any', 'tool', 'none'")
    if not tools:
        raise _invalid("tool_choice may only be specified while providing tools.")
    name = raw.get("name", "")
    if raw["type"] == "tool" and not any(tool.name == name for tool in tools):
        raise _invalid(f"tool_choice.tool.name: Tool {name!r} not found in provided tools")
    return str(raw["type"]), str(name)


def _invoke_messages(messages: list[Any]) -> tuple[list[str], str, tuple[tuple[str, str], ...]]:
    """Check every message; the text of each (for counting), *said*, and the last turn's tool results."""
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages.{index}: Input should be a valid dictionary")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise _invalid(f"messages.{index}.{extra[0]}: Extra inputs are not permitted")
    _check_roles(
        [m.get("role") for m in messages],
        'messages: first message must use the "user" role',
        'messages: roles must alternate between "user" and "assistant", but found multiple roles in a row',
        "messages.{index}.role: Input should be 'user' or 'assistant'",
    )
    counted: list[str] = []
    said = ""
    tool_names: dict[str, str] = {}  # tool_use id -> name, of the previous assistant turn
    results: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        role, content = message["role"], message.get("content")
        final_assistant = role == "assistant" and index == len(messages) - 1
        if isinstance(content, str):
            if not content and not final_assistant:
                raise _invalid(f"messages.{index}: all messages must have non-empty content except for the "
                               "optional final assistant message")
            counted.append(content)
            said = content if role == "user" else said
            tool_names, results = {}, []
            continue
        if not isinstance(content, list) or (not content and not final_assistant):
            raise _invalid(f"messages.{index}: all messages must have non-empty content except for the "
                           "optional final assistant message")
        pieces, user_text, called, answered = [], [], {}, []
        for position, block in enumerate(content):
            where = f"messages.{index}.content.{position}"
            kind = _invoke_block(block, where, role)
            if kind == "text":
                pieces.append(block["text"])
                user_text.append(block["text"])
            elif kind == "tool_use":
                called[block["id"]] = block["name"]
            elif kind == "tool_result":
                if block["tool_use_id"] not in tool_names:
                    raise _invalid(
                        f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {block['tool_use_id']}. "
                        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                    )
                text = _invoke_result_text(block.get("content"), where)
                answered.append((tool_names[block["tool_use_id"]], text))
                pieces.append(text)
        counted.append(" ".join(pieces))
        said = " ".join(user_text) if role == "user" else said
        tool_names, results = called, answered
    last_is_user = messages[-1]["role"] == "user"
    return counted, said, tuple(results) if last_is_user else ()


def _invoke_block(block: object, where: str, role: str) -> str:
    if not isinstance(block, dict) or block.get("type") not in INVOKE_BLOCKS:
        tag = block.get("type") if isinstance(block, dict) else None
        expected = ", ".join(f"'{t}'" for t in INVOKE_BLOCKS)
        raise _invalid(f"{where}: Input tag {tag!r} found using 'type' does not match any of the expected tags: "
                       f"{expected}")
    kind = str(block["type"])
    required = {"text": ("text",), "tool_use": ("id", "name"), "tool_result": ("tool_use_id",),
                "thinking": ("thinking", "signature"), "redacted_thinking": ("data",)}.get(kind, ())
    for name in required:
        if not isinstance(block.get(name), str):
            raise _invalid(f"{where}.{kind}.{name}: Field required")
    if kind in ("tool_use", "thinking", "redacted_thinking") and role != "assistant":
        raise _invalid(f"{where}: `{kind}` blocks are only allowed in assistant messages")
    if kind == "tool_result" and role != "user":
        raise _invalid(f"{where}: `tool_result` blocks are only allowed in user messages")
    if kind == "tool_use" and not isinstance(block.get("input"), dict):
        raise _invalid(f"{where}.tool_use.input: Input should be a valid dictionary")
    if kind == "image":
        _invoke_image(block.get("source"), f"{where}.image.source")
    if kind == "document" and not isinstance(block.get("source"), dict):
        raise _invalid(f"{where}.document.source: Field required")
    return kind


def _invoke_image(source: object, where: str) -> None:
    if not isinstance(source, dict):
        raise _invalid(f"{where}: Field required")
    if source.get("type") != "base64":
        raise _invalid(f"{where}: Input tag {source.get('type')!r} found using 'type' does not match any of the "
                       "expected tags: 'base64'")
    media = source.get("media_type")
    if media not in tuple(f"image/{f}" for f in IMAGE_FORMATS):
        raise _invalid(f"{where}.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or "
                       "'image/webp'")
    if not _base64(source.get("data")):
        raise _invalid(f"{where}.base64.data: The image data is not valid base64")


def _invoke_result_text(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _invalid(f"{where}.tool_result.content: Input should be a valid string or list")
    texts = []
    for position, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") not in ("text", "image", "document", "search_result"):
            raise _invalid(f"{where}.tool_result.content.{position}: Input tag does not match any of the expected "
                           "tags: 'text', 'image', 'document', 'search_result'")
        if block["type"] == "text":
            if not isinstance(block.get("text"), str):
                raise _invalid(f"{where}.tool_result.content.{position}.text: Field required")
            texts.append(block["text"])
        elif block["type"] == "image":
            _invoke_image(block.get("source"), f"{where}.tool_result.content.{position}.image.source")
    return " ".join(texts)


def invoke(call: Call) -> Response:
    """``POST {deploymentUrl}/invoke``: one Anthropic message, as JSON."""
    started = time.monotonic()
    answer = _answer(call.deployment.model, _invoke_ask(call), _tool_id("toolu_bdrk_"))
    message = {
        **_message_head(call), "content": [_anthropic_block(b) for b in answer.blocks],
        "stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens},
    }
    headers = {
        "X-Amzn-Bedrock-Input-Token-Count": str(answer.input_tokens),
        "X-Amzn-Bedrock-Output-Token-Count": str(answer.output_tokens),
        "X-Amzn-Bedrock-Invocation-Latency": str(_elapsed_ms(started)),
    }
    return json_response(message, headers=headers)


def invoke_stream(call: Call) -> Response:
    """``POST {deploymentUrl}/invoke-with-response-stream``: Anthropic stream events, framed per ``Accept``."""
    started = time.monotonic()
    answer = _answer(call.deployment.model, _invoke_ask(call), _tool_id("toolu_bdrk_"))
    events = _anthropic_events(call, answer, started)
    if _wants_eventstream(call.request):
        framed: Iterable[bytes] = (_chunk_frame(event, index) for index, event in enumerate(events))
        response = stream_response(call, _with_exception(call, framed), eventstream.CONTENT_TYPE)
    else:
        response = stream_response(call, (sse_event(event) for event in events), "text/event-stream")
    response.headers["X-Amzn-Bedrock-Content-Type"] = "application/json"
    return response


def _message_head(call: Call) -> dict[str, object]:
    return {
        "id": f"msg_bdrk_01{uuid.uuid4().hex[:22]}", "type": "message", "role": "assistant",
        "model": call.deployment.model.removeprefix("anthropic--"),
    }


def _anthropic_block(block: _Block) -> dict[str, object]:
    if block.kind == "thinking":
        return {"type": "thinking", "thinking": block.text, "signature": block.signature}
    if block.kind == "tool_use":
        return {"type": "tool_use", "id": block.tool_id, "name": block.name, "input": dict(block.input)}
    return {"type": "text", "text": block.text}


def _anthropic_events(call: Call, answer: _Answer, started: float) -> Iterator[dict[str, object]]:
    yield {"type": "message_start", "message": {
        **_message_head(call), "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": 1},
    }}
    first_byte = _elapsed_ms(started)
    for index, block in enumerate(answer.blocks):
        start = _anthropic_block(block)
        if block.kind == "thinking":
            start.update(thinking="", signature="")
            deltas: list[dict[str, object]] = [{"type": "thinking_delta", "thinking": piece}
                                               for piece in split_chunks(block.text, None)]
            deltas.append({"type": "signature_delta", "signature": block.signature})
        elif block.kind == "tool_use":
            start["input"] = {}
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in _fragments(block.input)]
        else:
            start["text"] = ""
            deltas = [{"type": "text_delta", "text": piece} for piece in split_chunks(block.text, call.settings.chunks)]
        yield {"type": "content_block_start", "index": index, "content_block": start}
        for delta in deltas:
            yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}
    yield {"type": "message_delta", "delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence},
           "usage": {"output_tokens": answer.output_tokens}}
    yield {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": answer.input_tokens, "outputTokenCount": answer.output_tokens,
        "invocationLatency": _elapsed_ms(started), "firstByteLatency": first_byte,
    }}


def _chunk_frame(event: Mapping[str, object], index: int) -> bytes:
    raw = json.dumps(event, separators=(",", ":")).encode("utf-8")
    padding = _PADDING[: 1 + (len(raw) + index) % len(_PADDING)]
    return eventstream.event("chunk", {"bytes": base64.b64encode(raw).decode("ascii"), "p": padding})


# -- converse ----------------------------------------------------------------------------
def _converse_ask(call: Call) -> _Ask:
    """Validate a Converse body like Bedrock does; what it asks."""
    body = _object(call, malformed=False)
    extra = sorted(set(body) - CONVERSE_FIELDS)
    if extra:
        raise _invalid(f"The request contains unknown field(s): {', '.join(extra)}.")
    config = body.get("inferenceConfig", {})
    if not isinstance(config, dict):
        raise _invalid("inferenceConfig: expected an object.")
    unknown = sorted(set(config) - _INFERENCE_CONFIG)
    if unknown:
        raise _invalid(f"inferenceConfig: unknown field {', '.join(unknown)}.")
    max_tokens = config.get("maxTokens")
    if max_tokens is not None and not _positive_int(max_tokens):
        raise _invalid("The value at inferenceConfig.maxTokens must be an integer greater than or equal to 1.")
    for name in ("temperature", "topP"):
        if name in config and not _number(config[name], 0.0, 1.0):
            raise _invalid(f"The value at inferenceConfig.{name} must be a number between 0 and 1.")
    if "stopSequences" in config and not _strings(config["stopSequences"]):
        raise _invalid("The value at inferenceConfig.stopSequences must be a list of strings.")
    for name, kind in (("additionalModelRequestFields", dict), ("guardrailConfig", dict),
                       ("promptVariables", dict), ("requestMetadata", dict), ("performanceConfig", dict),
                       ("additionalModelResponseFieldPaths", list)):
        if name in body and not isinstance(body[name], kind):
            raise _invalid(f"The value at {name} has the wrong type.")
    tools, choice, chosen = _converse_tools(body.get("toolConfig"))
    extra_fields = body.get("additionalModelRequestFields") or {}
    thinking = "thinking" in extra_fields and _thinking(
        extra_fields["thinking"], "additionalModelRequestFields.thinking", max_tokens, config.get("temperature"),
        choice,
    )
    system = _converse_system(body.get("system"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("A conversation must start with a user message. Try again with a conversation that starts "
                       "with a user message.")
    counted, said, results, uses_tools = _converse_messages(messages)
    if uses_tools and "toolConfig" not in body:
        raise _invalid("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    return _Ask(
        said=said, input_tokens=max(1, count_tokens(system) + sum(count_tokens(t) for t in counted)),
        tools=tools, choice=choice, chosen=chosen, results=results, thinking=thinking, max_tokens=max_tokens,
        stop_sequences=tuple(config.get("stopSequences") or ()),
    )


def _converse_system(raw: object) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, list):
        raise _invalid("The value at system must be a list of SystemContentBlock objects.")
    texts = []
    for index, block in enumerate(raw):
        if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in (
                "text", "cachePoint", "guardContent"):
            raise _invalid(f"system.{index} must set exactly one of text, cachePoint, guardContent.")
        if "text" in block:
            if not isinstance(block["text"], str):
                raise _invalid(f"The value at system.{index}.text must be a string.")
            texts.append(block["text"])
    return " ".join(texts)


def _converse_tools(raw: object) -> tuple[tuple[_Tool, ...], str, str]:
    if raw is None:
        return (), "auto", ""
    if not isinstance(raw, dict) or not isinstance(raw.get("tools"), list) or not raw["tools"]:
        raise _invalid("The value at toolConfig.tools must be a non-empty list of tools.")
    unknown = sorted(set(raw) - {"tools", "toolChoice"})
    if unknown:
        raise _invalid(f"toolConfig: unknown field {', '.join(unknown)}.")
    tools = []
    for index, tool in enumerate(raw["tools"]):
        if isinstance(tool, dict) and set(tool) == {"cachePoint"}:
            continue
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if not isinstance(spec, dict):
            raise _invalid(f"toolConfig.tools.{index} must set exactly one of toolSpec, cachePoint.")
        name = spec.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise _invalid(f"The value at toolConfig.tools.{index}.toolSpec.name failed to satisfy constraint: "
                           "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+")
        schema = spec.get("inputSchema")
        if not isinstance(schema, dict) or not isinstance(schema.get("json"), dict):
            raise _invalid(f"toolConfig.tools.{index}.toolSpec.inputSchema must set json to a JSON schema object.")
        tools.append(_Tool(name, schema["json"]))
    choice_raw = raw.get("toolChoice")
    if choice_raw is None:
        return tuple(tools), "auto", ""
    if not isinstance(choice_raw, dict) or len(choice_raw) != 1 or next(iter(choice_raw)) not in (
            "auto", "any", "tool"):
        raise _invalid("toolConfig.toolChoice must set exactly one of auto, any, tool.")
    choice = next(iter(choice_raw))
    name = choice_raw[choice].get("name", "") if isinstance(choice_raw[choice], dict) else ""
    if choice == "tool" and not any(tool.name == name for tool in tools):
        raise _invalid(f"The tool {name!r} named by toolConfig.toolChoice.tool is not in toolConfig.tools.")
    return tuple(tools), choice, str(name)


def _converse_messages(messages: list[Any]) -> tuple[list[str], str, tuple[tuple[str, str], ...], bool]:
    """Check every message; the text of each (for counting), *said*, the last turn's tool results, and tool use."""
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"The value at messages.{index} must be a Message object.")
    _check_roles(
        [m.get("role") for m in messages],
        "A conversation must start with a user message. Try again with a conversation that starts with a user "
        "message.",
        "A conversation must alternate between user and assistant roles. Make sure the conversation alternates "
        "between user and assistant roles and try again.",
        "The value at messages.{index}.role failed to satisfy constraint: Member must satisfy enum value set: "
        "[user, assistant]",
    )
    counted: list[str] = []
    said = ""
    tool_names: dict[str, str] = {}
    results: list[tuple[str, str]] = []
    uses_tools = False
    for index, message in enumerate(messages):
        role, content = message["role"], message.get("content")
        if not isinstance(content, list) or (not content and not (role == "assistant" and index == len(messages) - 1)):
            raise _invalid(f"The content field in the Message object at messages.{index} is empty. Add a "
                           "ContentBlock object to the content field and try again.")
        all_text, user_text, called, answered = [], [], {}, []
        for position, block in enumerate(content):
            where = f"messages.{index}.content.{position}"
            kind = _converse_block(block, where, role)
            value = block[kind]
            if kind == "text":
                all_text.append(value)
                user_text.append(value)
            elif kind == "toolUse":
                uses_tools = True
                called[value["toolUseId"]] = value["name"]
            elif kind == "toolResult":
                uses_tools = True
                if value["toolUseId"] not in tool_names:
                    raise _invalid(f"The toolUseId {value['toolUseId']} of the toolResult at {where} does not match "
                                   "a toolUse block of the previous assistant turn.")
                text = _converse_result_text(value.get("content"), where)
                answered.append((tool_names[value["toolUseId"]], text))
                all_text.append(text)
        counted.append(" ".join(all_text))
        said = " ".join(user_text) if role == "user" else said
        tool_names, results = called, answered
    last_is_user = messages[-1]["role"] == "user"
    return counted, said, tuple(results) if last_is_user else (), uses_tools


def _converse_block(block: object, where: str, role: str) -> str:
    if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in CONVERSE_BLOCKS:
        raise _invalid(f"The ContentBlock at {where} must set exactly one of: {', '.join(CONVERSE_BLOCKS)}.")
    kind = str(next(iter(block)))
    value = block[kind]
    if kind == "text":
        if not isinstance(value, str):
            raise _invalid(f"The value at {where}.text must be a string.")
        return kind
    if not isinstance(value, dict):
        raise _invalid(f"The value at {where}.{kind} must be an object.")
    if kind == "image":
        _converse_image(value, f"{where}.image")
    elif kind == "toolUse":
        if role != "assistant":
            raise _invalid(f"{where}: toolUse blocks are only allowed in assistant messages.")
        if not isinstance(value.get("toolUseId"), str) or not isinstance(value.get("name"), str) or (
                "input" not in value):
            raise _invalid(f"{where}.toolUse must set toolUseId, name and input.")
    elif kind == "toolResult":
        if role != "user":
            raise _invalid(f"{where}: toolResult blocks are only allowed in user messages.")
        if not isinstance(value.get("toolUseId"), str):
            raise _invalid(f"{where}.toolResult must set toolUseId.")
        if value.get("status", "success") not in ("success", "error"):
            raise _invalid(f"The value at {where}.toolResult.status must be success or error.")
    elif kind == "reasoningContent" and not (
            isinstance(value.get("reasoningText"), dict) or isinstance(value.get("redactedContent"), str)):
        raise _invalid(f"{where}.reasoningContent must set reasoningText or redactedContent.")
    return kind


def _converse_image(image: Mapping[str, Any], where: str) -> None:
    if image.get("format") not in IMAGE_FORMATS:
        raise _invalid(f"The value at {where}.format failed to satisfy constraint: Member must satisfy enum value "
                       "set: [png, jpeg, gif, webp]")
    source = image.get("source")
    if not isinstance(source, dict) or set(source) != {"bytes"}:
        raise _invalid(f"{where}.source must set bytes (base64 in JSON); other sources are not supported.")
    if not _base64(source["bytes"]):
        raise _invalid(f"The value at {where}.source.bytes is not valid base64.")


def _converse_result_text(content: object, where: str) -> str:
    if not isinstance(content, list):
        raise _invalid(f"The value at {where}.toolResult.content must be a list.")
    texts = []
    for position, block in enumerate(content):
        if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in (
                "text", "json", "image", "document", "video"):
            raise _invalid(f"The ToolResultContentBlock at {where}.toolResult.content.{position} must set exactly "
                           "one of text, json, image, document, video.")
        if "text" in block:
            texts.append(str(block["text"]))
        elif "json" in block:
            texts.append(json.dumps(block["json"], separators=(",", ":")))
        elif "image" in block:
            _converse_image(block["image"], f"{where}.toolResult.content.{position}.image")
    return " ".join(texts)


def _converse_block_json(block: _Block) -> dict[str, object]:
    if block.kind == "thinking":
        return {"reasoningContent": {"reasoningText": {"text": block.text, "signature": block.signature}}}
    if block.kind == "tool_use":
        return {"toolUse": {"toolUseId": block.tool_id, "name": block.name, "input": dict(block.input)}}
    return {"text": block.text}


def converse(call: Call) -> Response:
    """``POST {deploymentUrl}/converse``: one Converse response, as JSON."""
    started = time.monotonic()
    answer = _answer(call.deployment.model, _converse_ask(call), _tool_id("tooluse_"))
    return json_response({
        "output": {"message": {"role": "assistant", "content": [_converse_block_json(b) for b in answer.blocks]}},
        "stopReason": answer.stop_reason,
        "usage": {**_converse_usage(answer), "cacheReadInputTokens": 0, "cacheWriteInputTokens": 0},
        "metrics": {"latencyMs": _elapsed_ms(started)},
    })


def converse_stream(call: Call) -> Response:
    """``POST {deploymentUrl}/converse-stream``: Converse stream events, framed per ``Accept``."""
    started = time.monotonic()
    answer = _answer(call.deployment.model, _converse_ask(call), _tool_id("tooluse_"))
    events = _converse_events(call, answer, started)
    if _wants_eventstream(call.request):
        framed = (eventstream.event(name, inner) for name, inner in events)
        return stream_response(call, _with_exception(call, framed), eventstream.CONTENT_TYPE)
    return stream_response(call, (sse_event(repr({name: inner})) for name, inner in events), "text/event-stream")


def _converse_usage(answer: _Answer) -> dict[str, int]:
    return {"inputTokens": answer.input_tokens, "outputTokens": answer.output_tokens,
            "totalTokens": answer.input_tokens + answer.output_tokens}


def _converse_events(call: Call, answer: _Answer, started: float) -> Iterator[tuple[str, dict[str, object]]]:
    yield "messageStart", {"role": "assistant"}
    for index, block in enumerate(answer.blocks):
        deltas: list[dict[str, object]]
        if block.kind == "thinking":
            deltas = [{"reasoningContent": {"text": piece}} for piece in split_chunks(block.text, None)]
            deltas.append({"reasoningContent": {"signature": block.signature}})
        elif block.kind == "tool_use":
            yield "contentBlockStart", {"start": {"toolUse": {"toolUseId": block.tool_id, "name": block.name}},
                                        "contentBlockIndex": index}
            deltas = [{"toolUse": {"input": piece}} for piece in _fragments(block.input)]
        else:
            deltas = [{"text": piece} for piece in split_chunks(block.text, call.settings.chunks)]
        for delta in deltas:
            yield "contentBlockDelta", {"delta": delta, "contentBlockIndex": index}
        yield "contentBlockStop", {"contentBlockIndex": index}
    yield "messageStop", {"stopReason": answer.stop_reason}
    yield "metadata", {"usage": _converse_usage(answer), "metrics": {"latencyMs": _elapsed_ms(started)}}


# -- shared stream parts -----------------------------------------------------------------
def _fragments(value: Mapping[str, object]) -> list[str]:
    """A tool input's JSON in :data:`TOOL_FRAGMENTS` pieces (fewer only when it is shorter)."""
    text = json.dumps(value, separators=(",", ":"))
    return split_chunks(text, min(TOOL_FRAGMENTS, len(text)))


def _with_exception(call: Call, frames: Iterable[bytes]) -> Iterator[bytes]:
    """*frames*, cut by a deferred ``status`` fault into that many frames and an exception frame."""
    fault = call.fault
    if fault is None or not _defers_fault(fault, call):
        yield from frames
        return
    for sent, frame in enumerate(frames):
        if sent >= fault.after_chunks:
            break
        yield frame
    yield eventstream.exception(exception_type(fault.status), _fault_message(fault))


def _tool_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _elapsed_ms(started: float) -> int:
    return max(1, round((time.monotonic() - started) * 1000))


DIALECT = Dialect(
    name="aws-bedrock",
    executables=("aws-bedrock",),
    routes={
        "invoke": Route("invoke", invoke, "InvokeModel"),
        "invoke-with-response-stream": Route("invoke_stream", invoke_stream, "InvokeModelWithResponseStream"),
        "converse": Route("converse", converse, "Converse"),
        "converse-stream": Route("converse_stream", converse_stream, "ConverseStream"),
    },
    fault_error=_fault_error,
    not_found=_not_found,
    defers_fault=_defers_fault,
)
