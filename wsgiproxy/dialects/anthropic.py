"""The Anthropic Messages face on Bedrock invoke deployments: a passthrough with documented fixes.

Bedrock's invoke body *is* the Messages body, minus ``model`` and ``stream``, plus
``anthropic_version``. Bedrock validates strictly: an unknown top-level key, an unknown beta or
an Anthropic server tool is a 400 ``ValidationException`` for the whole request. Clients such as
Claude Code send all three, so :func:`invoke_body` keeps only what Bedrock is known to accept
(each allow-list below says why), and the stream side (:class:`MessagesStream`) re-emits
Bedrock's Anthropic events as the SSE an Anthropic client expects. :func:`count_tokens` is
re-exported from :mod:`.anthropic_tokens`.
"""

from __future__ import annotations

import json
import re
import typing as t

from ..body import is_int
from ..errors import ApiError, bad_request
from .anthropic_tokens import CHARS_PER_TOKEN as CHARS_PER_TOKEN
from .anthropic_tokens import IMAGE_TOKENS as IMAGE_TOKENS
from .anthropic_tokens import MESSAGE_TOKENS as MESSAGE_TOKENS
from .anthropic_tokens import TOOL_TOKENS as TOOL_TOKENS
from .anthropic_tokens import count_tokens as count_tokens
from .bedrock import BedrockEvent, BedrockStreamReader
from .sse import encode

BEDROCK_VERSION = "bedrock-2023-05-31"

#: Top-level fields forwarded to Bedrock; everything else is dropped. Dropped on purpose, among
#: others: ``model``/``stream`` (Bedrock takes both from the URL and rejects them), ``metadata``
#: (Claude Code sends ``user_id``; Bedrock has no such field), ``context_management`` and
#: ``output_config`` (Claude Code 2.x sends them; SAP's Bedrock answered "Extra inputs are not
#: permitted"), ``output_format``, ``service_tier``, ``container`` and ``mcp_servers``
#: (first-party API features with no Bedrock counterpart).
FIELDS = (
    "anthropic_version", "anthropic_beta", "max_tokens", "messages", "system", "temperature", "top_p", "top_k",
    "stop_sequences", "tools", "tool_choice", "thinking",
)  # fmt: skip

#: Betas forwarded in ``anthropic_beta``; Bedrock answers "invalid beta flag" to any other, and
#: some models accept fewer still (Opus 4.7 only interleaved thinking). Kept: betas that change
#: the model's behaviour on fields we forward. Dropped, although Bedrock knows some of them:
#: ``claude-code-*`` (first-party bookkeeping, rejected by newer models), ``context-management-*``
#: and ``effort-*`` (their body fields are dropped above), ``tool-search-tool-*``,
#: ``tool-examples-*``, ``advanced-tool-use-*`` and ``computer-use-*`` (the tools and tool fields
#: they enable are removed below), ``oauth-*`` and ``prompt-caching-scope-*`` (Bedrock rejects them).
BETAS = frozenset(
    {
        "interleaved-thinking-2025-05-14",
        "fine-grained-tool-streaming-2025-05-14",
        "token-efficient-tools-2025-02-19",
        "output-128k-2025-02-19",
        "dev-full-thinking-2025-05-14",
        "context-1m-2025-08-07",
    }
)

#: Keys kept on a custom tool. Any ``type`` other than ``"custom"`` marks an Anthropic-defined
#: tool: server tools (web_search_*, web_fetch_*, code_execution_*, mcp_toolset, ...) do not exist
#: on Bedrock, and the client tools (bash_*, text_editor_*, computer_*) need computer-use betas
#: and were rejected by SAP's Bedrock with a ValidationException (prior art, sanitiser #32), so
#: every typed tool is removed. ``defer_loading``, ``input_examples``, ``strict`` and
#: ``eager_input_streaming`` belong to betas not forwarded; a deferred tool is simply sent inline.
TOOL_FIELDS = ("name", "description", "input_schema", "cache_control")

#: Keys kept in ``thinking``: ``display`` (Claude Code sends ``"omitted"``) is first-party only.
THINKING_FIELDS = ("type", "budget_tokens")

#: Largest thinking budget given to a model that does not know adaptive thinking: Claude Code's own
#: budget for such models (32000 max tokens, 31999 budget).
ADAPTIVE_BUDGET = 31999
_MIN_BUDGET = 1024  # Bedrock's floor for budget_tokens
_CLAUDE_VERSION = re.compile(r"claude-(\d+)(?:\.(\d+))?-")

_ROLES = ("user", "assistant")


def knows_adaptive_thinking(sap_model: str) -> bool:
    """Whether a SAP Claude model accepts ``thinking: {"type": "adaptive"}`` (Claude 4.6 and later).

    Claude Code sends adaptive thinking for any model id it does not recognise, SAP names included;
    older models reject it with a 400, so for them it becomes a fixed budget.
    """
    match = _CLAUDE_VERSION.search(sap_model)
    return bool(match) and (int(match[1]), int(match[2] or 0)) >= (4, 6)  # type: ignore[index]


def invoke_body(body: t.Any, beta_header: str | None, *, adaptive_thinking: bool = True) -> bytes:
    """The Messages request as Bedrock invoke accepts it (see the allow-lists above).

    Also: ``role: "system"`` turns (Claude Code sends them mid-conversation) are hoisted, in
    order, after the top-level ``system``; ``cache_control`` keeps only its ``type`` (Bedrock
    knows ephemeral caching, not ``scope`` or ``ttl``); with thinking on, ``temperature`` and
    ``top_k`` are dropped because Anthropic rejects them together.

    :param beta_header: the client's ``anthropic-beta`` header, comma-separated.
    :param adaptive_thinking: whether the model knows adaptive thinking; if not, adaptive thinking
        becomes ``enabled`` with a budget of ``max_tokens - 1`` (at most :data:`ADAPTIVE_BUDGET`),
        or no thinking when ``max_tokens`` leaves no room for Bedrock's minimum budget.
    :raises ApiError: 400, for a missing ``max_tokens``, empty ``messages`` or a malformed field.
    """
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise bad_request("'max_tokens' is required: the most tokens the answer may have.", param="max_tokens")
    if not is_int(max_tokens) or max_tokens < 1:
        raise bad_request("'max_tokens' must be a positive integer.", param="max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array of messages.", param="messages")

    out: dict[str, t.Any] = {"anthropic_version": BEDROCK_VERSION}
    out.update((key, body[key]) for key in FIELDS[1:] if body.get(key) is not None)  # null means absent
    hoisted, out["messages"] = _split_messages(messages)
    system = _system(body.get("system"), hoisted)
    if system is None:
        out.pop("system", None)
    else:
        out["system"] = system
    _tools(out)
    _thinking(out, adaptive_thinking)
    betas = _betas(body.get("anthropic_beta"), beta_header)
    if betas:
        out["anthropic_beta"] = betas
    else:
        out.pop("anthropic_beta", None)
    return to_json(out)


def _split_messages(messages: list[t.Any]) -> tuple[list[t.Any], list[t.Any]]:
    """(blocks of the system turns, the user and assistant turns with cleaned content)."""
    hoisted: list[t.Any] = []
    turns: list[t.Any] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages.{i}' must be an object.", param=f"messages.{i}")
        role = message.get("role")
        content = _content(message.get("content"), f"messages.{i}.content")
        if role == "system":
            hoisted += [{"type": "text", "text": content}] if isinstance(content, str) else content
        elif role in _ROLES:
            turns.append(message if content is message["content"] else {**message, "content": content})
        else:
            raise bad_request(f"'messages.{i}.role' must be 'user' or 'assistant'.", param=f"messages.{i}.role")
    if not turns:
        raise bad_request("'messages' must contain a user or assistant message.", param="messages")
    return [block for block in hoisted if block != {"type": "text", "text": ""}], turns


def _system(system: t.Any, hoisted: list[t.Any]) -> t.Any:
    """The top-level ``system`` then the hoisted blocks; a string becomes a text block only if needed."""
    if system is not None and not isinstance(system, str):
        system = _content(system, "system")
    if not hoisted:
        return system
    if system is None or isinstance(system, str):
        system = [{"type": "text", "text": system}] if system else []
    return [*system, *hoisted]


def _content(content: t.Any, where: str) -> t.Any:
    """``content`` with each block's ``cache_control`` reduced; the same object if unchanged."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be a string or an array of content blocks.", param=where)
    cleaned = [_block(block, f"{where}.{i}") for i, block in enumerate(content)]
    return content if all(a is b for a, b in zip(cleaned, content, strict=True)) else cleaned


def _block(block: t.Any, where: str) -> t.Any:
    if not isinstance(block, dict):
        raise bad_request(f"'{where}' must be a content block object.", param=where)
    result = block
    if "cache_control" in block:
        result = _cache_control(block)
    if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
        inner = _content(block["content"], f"{where}.content")
        if inner is not block["content"]:
            result = {**result, "content": inner}
    return result


def _cache_control(item: dict[str, t.Any]) -> dict[str, t.Any]:
    control = item["cache_control"]
    if isinstance(control, dict) and control.keys() <= {"type"}:
        return item
    kept = {key: value for key, value in item.items() if key != "cache_control"}
    if isinstance(control, dict) and "type" in control:
        kept["cache_control"] = {"type": control["type"]}
    return kept


def _tools(out: dict[str, t.Any]) -> None:
    tools = out.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
            raise bad_request("'tools' must be an array of tool objects.", param="tools")
        kept = [_tool(tool, i) for i, tool in enumerate(tools) if tool.get("type", "custom") == "custom"]
        if kept:
            out["tools"] = kept
        else:
            del out["tools"]
    choice = out.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise bad_request("'tool_choice' must be an object.", param="tool_choice")
    names = [tool["name"] for tool in out.get("tools", ())]
    if not names or (choice.get("type") == "tool" and choice.get("name") not in names):
        del out["tool_choice"]


def _tool(tool: dict[str, t.Any], i: int) -> dict[str, t.Any]:
    if not isinstance(tool.get("name"), str):
        raise bad_request(f"'tools.{i}.name' must be a string.", param=f"tools.{i}.name")
    kept = {key: tool[key] for key in TOOL_FIELDS if key in tool}
    return _cache_control(kept) if "cache_control" in kept else kept


def _thinking(out: dict[str, t.Any], adaptive: bool) -> None:
    thinking = out.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict):
        raise bad_request("'thinking' must be an object.", param="thinking")
    out["thinking"] = {key: thinking[key] for key in THINKING_FIELDS if key in thinking}
    if thinking.get("type") == "adaptive" and not adaptive:
        budget = min(out["max_tokens"] - 1, ADAPTIVE_BUDGET)
        if budget < _MIN_BUDGET:
            del out["thinking"]
            return
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if thinking.get("type") in ("enabled", "adaptive"):
        out.pop("temperature", None)
        out.pop("top_k", None)


def _betas(body_betas: t.Any, header: str | None) -> list[str]:
    """Body betas then header betas, deduplicated in order, keeping only :data:`BETAS`."""
    if isinstance(body_betas, str):
        body_betas = body_betas.split(",")
    elif body_betas is None:
        body_betas = []
    elif not isinstance(body_betas, list) or not all(isinstance(beta, str) for beta in body_betas):
        raise bad_request("'anthropic_beta' must be an array of strings.", param="anthropic_beta")
    names = [*body_betas, *(header.split(",") if header else ())]
    return list(dict.fromkeys(beta for name in names if (beta := name.strip()) in BETAS))


def message_response(raw: bytes, model: str) -> dict[str, t.Any]:
    """Bedrock's non-stream invoke answer as an Anthropic message, ``model`` being the client's name.

    :raises ApiError: 502, when the upstream body is not a JSON object.
    """
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        message = None
    if not isinstance(message, dict):
        raise ApiError(502, "SAP AI Core answered with a body that is not a JSON message.", type="api_error")
    message.pop("amazon-bedrock-invocationMetrics", None)
    message["type"] = "message"
    message["model"] = model
    return message


def usage_counts(usage: t.Any) -> tuple[int | None, int | None]:
    """(input tokens including cache reads and writes, output tokens) from an Anthropic ``usage``."""
    if not isinstance(usage, dict):
        return None, None
    inputs = [usage.get(key) for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")]
    counted = [n for n in inputs if is_int(n)]
    output = usage.get("output_tokens")
    return (sum(counted) if counted else None), (output if is_int(output) else None)


def to_json(value: t.Any) -> bytes:
    """Compact UTF-8 JSON; lone surrogates (valid in JSON text, not in UTF-8) are escaped."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


#: Bedrock exception types (``:exception-type``, any case) → Anthropic error types. The Anthropic
#: SDK raises on any ``event: error``; Claude Code then retries the turn without streaming, so the
#: type mainly tells a person what happened: throttling is a rate limit, a busy or unready model is
#: "overloaded" (Anthropic's own 529), a bad request stays one; the rest is an ``api_error``.
ERROR_TYPES = {
    "throttlingexception": "rate_limit_error",
    "servicequotaexceededexception": "rate_limit_error",
    "serviceunavailableexception": "overloaded_error",
    "modelnotreadyexception": "overloaded_error",
    "validationexception": "invalid_request_error",
    "accessdeniedexception": "permission_error",
    "resourcenotfoundexception": "not_found_error",
    "modeltimeoutexception": "timeout_error",
}

#: Anthropic's own error types, passed on as they are when an upstream error event names one.
ANTHROPIC_ERROR_TYPES = frozenset(
    {
        "invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
        "request_too_large", "rate_limit_error", "api_error", "timeout_error", "overloaded_error",
    }
)  # fmt: skip


def error_event(message: str, error_type: str = "api_error") -> bytes:
    """An Anthropic ``error`` event, the last event of a stream that failed after it started."""
    return _event(b"error", {"type": "error", "error": {"type": error_type, "message": message}})


def _event(name: bytes, body: dict[str, t.Any]) -> bytes:
    return encode(to_json(body), name)


_MESSAGE_STOP = _event(b"message_stop", {"type": "message_stop"})


class MessagesStream:
    """Re-emits a Bedrock invoke stream as Anthropic SSE, one element per event.

    ``message_start`` carries the client's model name; ``message_stop`` loses Bedrock's
    invocation metrics; other events are forwarded as they are, in upstream's own JSON bytes
    when the reader kept them (:attr:`BedrockEvent.raw`): deltas are not serialized again. An upstream exception becomes
    one ``error`` event and ends the stream. At EOF, a stream whose ``message_delta`` arrived but
    not its ``message_stop`` is completed (the answer is whole); any other unfinished stream
    ends with an ``error`` event, upon which Anthropic clients retry.
    """

    def __init__(self, model: str, content_type: str | None) -> None:
        self._reader = BedrockStreamReader(content_type, "invoke")
        self._model = model
        self._usage: dict[str, t.Any] = {}
        self._stopping = False  # a message_delta was seen
        self.done = False  # message_stop or an error was sent: nothing more follows

    def feed(self, chunk: bytes) -> list[bytes]:
        return self._translate(self._reader.feed(chunk))

    def finish(self) -> list[bytes]:
        out = self._translate(self._reader.finish())
        if not self.done:
            self.done = True
            if self._stopping:
                out.append(_MESSAGE_STOP)
            else:
                out.append(error_event("SAP AI Core ended the stream before the message was complete."))
        return out

    def token_counts(self) -> tuple[int | None, int | None]:
        """(prompt tokens including cache reads and writes, completion tokens), once reported."""
        return usage_counts(self._usage)

    def _translate(self, events: list[BedrockEvent]) -> list[bytes]:
        out = []
        for event in events:
            if self.done:
                break
            kind, body = event.type, event.body
            if kind == "exception":
                out.append(self._exception(body))
            elif kind == "message_start":
                out.append(self._message_start(body))
            elif kind == "message_stop":
                self.done = True
                body = {key: value for key, value in body.items() if key != "amazon-bedrock-invocationMetrics"}
                out.append(_MESSAGE_STOP if body == {"type": "message_stop"} else _event(b"message_stop", body))
            elif kind.isidentifier():  # ping, content_block_*, message_delta, and event types yet to come
                if kind == "message_delta":
                    self._stopping = True
                    self._take_usage(body.get("usage"))
                else:
                    self.done = kind == "error"  # an error ends the stream (the reader mostly makes it an exception)
                raw = event.raw
                if raw is not None and b"\n" not in raw and b"\r" not in raw:
                    out.append(b"event: " + kind.encode() + b"\ndata: " + raw + b"\n\n")  # as upstream sent it
                else:
                    out.append(_event(kind.encode(), body))
        return out

    def _message_start(self, body: dict[str, t.Any]) -> bytes:
        message = body.get("message")
        if isinstance(message, dict):
            self._take_usage(message.get("usage"))
            body = {**body, "message": {**message, "model": self._model}}
        return _event(b"message_start", body)

    def _take_usage(self, usage: t.Any) -> None:
        if isinstance(usage, dict):
            self._usage.update((key, value) for key, value in usage.items() if value is not None)

    def _exception(self, body: dict[str, t.Any]) -> bytes:
        self.done = True
        kind = str(body.get("exceptionType") or "exception")
        message = str(body.get("message") or "SAP AI Core reported an error in the stream.")
        if kind in ANTHROPIC_ERROR_TYPES:
            return error_event(message, kind)
        return error_event(f"{message} ({kind})", ERROR_TYPES.get(kind.lower(), "api_error"))
