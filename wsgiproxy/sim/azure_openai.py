"""The Azure OpenAI dialect (protocol §4a): chat completions and embeddings.

Served for ``azure-openai`` deployments and the OpenAI-compatible SAP-hosted ones
(``aicore-*``, ``perplexity-ai``).  Azure deployments add Azure's extras (content
filter results, the leading ``choices: []`` stream chunk); SAP-hosted ones answer
like vLLM (``tool_calls: []``, ``reasoning_content``, ``stop_reason``).  Any
``api-version`` is accepted, and none.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from werkzeug.wrappers import Request, Response

from .call import Call, Dialect, Route
from .effects import retry_after_seconds
from .errors import Rejected, custom, json_response
from .faults import Fault
from .streaming import sse_event, sse_response
from .text import answer_text, count_tokens, float32_base64, split_chunks, truncate, unit_vector

_SAFE = {"filtered": False, "severity": "safe"}
CHOICE_FILTERS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_JAILBREAK = {"jailbreak": {"filtered": False, "detected": False}}
PROMPT_FILTERS = [{"prompt_index": 0, "content_filter_results": {**CHOICE_FILTERS, **_JAILBREAK}}]
NATIVE_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
DEFAULT_DIMENSIONS = 1536
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_OPERATIONS = {"chat": "chatCompletion", "embedding": "embeddings"}


# -- errors ------------------------------------------------------------------------------
def openai_error(status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type_: str | None = "invalid_request_error") -> Response:
    """An error in the OpenAI/Azure shape."""
    return json_response({"error": {"code": code, "message": message, "param": param, "type": type_}}, status)


def _invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> Rejected:
    return Rejected(openai_error(400, message, code=code, param=param))


def _fault_error(fault: Fault, call: Call) -> Response:
    if fault.body is not None:
        return custom(fault.status, fault.body)
    if fault.status == 429:
        version = call.request.args.get("api-version", "2025-03-01-preview")
        message = (
            f"Requests to the {call.route.operation} Operation under Azure OpenAI API version {version} have "
            "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
            f"{retry_after_seconds(fault)} seconds. Please go here: https://aka.ms/oai/quotaincrease if you "
            "would like to further increase the default rate limit."
        )
        return openai_error(429, message, code="429", type_="requests")
    if fault.status >= 500:
        message = "The server had an error while processing your request. Sorry about that!"
        return openai_error(fault.status, message, code="internal_error", type_="server_error")
    return openai_error(fault.status, f"Simulated failure (HTTP {fault.status})", code=str(fault.status))


def _not_found(request: Request, suffix: str) -> Response:
    return json_response({"error": {"code": "404", "message": "Resource not found"}}, 404)


# -- request parsing ---------------------------------------------------------------------
def _body(call: Call, operation: str) -> dict[str, object]:
    if call.deployment.kind != operation:
        word = _OPERATIONS[operation]
        raise Rejected(openai_error(
            400,
            f"The {word} operation does not work with the specified model, {call.deployment.model}. "
            "Please choose different model and try again.",
            code="OperationNotSupported",
        ))
    if call.body_error is not None:
        raise _invalid(
            f"We could not parse the JSON body of your request. ({call.body_error})", code="invalid_json"
        )
    if not isinstance(call.body, dict):
        raise _invalid("The request body must be a JSON object.", code="invalid_type")
    return call.body


def _optional_int(body: dict[str, object], name: str, low: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _invalid(f"Invalid '{name}': expected an integer >= {low}, got {value!r}.", param=name)
    return value


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _messages(body: dict[str, object]) -> list[dict[str, object]]:
    messages = body.get("messages")
    if messages is None:
        raise _invalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _invalid("Invalid 'messages': expected a non-empty array.", "messages", "empty_array")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"Invalid 'messages[{index}]': expected an object.", f"messages[{index}]", "invalid_type")
        if message.get("role") not in _ROLES:
            raise _invalid(
                f"Invalid value for 'messages[{index}].role': {message.get('role')!r}.", f"messages[{index}].role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _invalid(
                f"Invalid type for 'messages[{index}].content': expected a string or an array.",
                f"messages[{index}].content", "invalid_type",
            )
    return messages


# -- chat --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Answer:
    """What one chat call answers, before it is shaped as JSON or as stream chunks."""

    id: str
    created: int
    model: str
    fingerprint: str
    text: str
    finish_reason: str
    usage: dict[str, object]
    azure: bool


def chat_completions(call: Call) -> Response:
    """``POST {deploymentUrl}/chat/completions``."""
    body = _body(call, "chat")
    messages = _messages(body)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("Invalid 'stream': expected a boolean.", "stream", "invalid_type")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                           "stream_options")
        if not isinstance(options, dict):
            raise _invalid("Invalid 'stream_options': expected an object.", "stream_options", "invalid_type")
    limits = [v for v in (_optional_int(body, "max_tokens"), _optional_int(body, "max_completion_tokens"))
              if v is not None]
    said = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    deployment = call.deployment
    text, cut = truncate(answer_text(deployment.model, said), min(limits) if limits else None)
    prompt_tokens = max(1, sum(count_tokens(_text_of(m.get("content"))) for m in messages))
    completion_tokens = count_tokens(text)
    azure = deployment.executable_id == "azure-openai"
    answer = _Answer(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=f"{deployment.model}-{deployment.version}" if azure and "-" in deployment.version else deployment.model,
        fingerprint="fp_" + hashlib.sha256(deployment.model.encode()).hexdigest()[:10],
        text=text,
        finish_reason="length" if cut else "stop",
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        azure=azure,
    )
    if stream:
        include_usage = bool(options and options.get("include_usage"))
        return sse_response(call, _chunks(answer, split_chunks(text, call.settings.chunks), include_usage))
    return json_response(_completion(answer))


def _completion(answer: _Answer) -> dict[str, object]:
    message: dict[str, object] = {"role": "assistant", "content": answer.text}
    choice: dict[str, object] = {"index": 0, "message": message, "finish_reason": answer.finish_reason,
                                 "logprobs": None}
    if answer.azure:
        message["refusal"] = None
        choice["content_filter_results"] = CHOICE_FILTERS
    else:
        message.update(tool_calls=[], reasoning_content=None)
        choice["stop_reason"] = None
    completion: dict[str, object] = {
        "id": answer.id, "object": "chat.completion", "created": answer.created, "model": answer.model,
        "system_fingerprint": answer.fingerprint, "choices": [choice], "usage": answer.usage,
    }
    if answer.azure:
        completion["prompt_filter_results"] = PROMPT_FILTERS
    return completion


def _chunks(answer: _Answer, pieces: list[str], include_usage: bool) -> Iterator[bytes]:
    """The stream in Azure's order: filters, role, content, finish, usage, ``[DONE]``."""
    extra: dict[str, object] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, object], finish: str | None = None, filters: object = None) -> bytes:
        choice: dict[str, object] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        if answer.azure:
            choice["content_filter_results"] = filters if filters is not None else {}
        return sse_event({
            "id": answer.id, "object": "chat.completion.chunk", "created": answer.created, "model": answer.model,
            "system_fingerprint": answer.fingerprint, "choices": [choice], **extra,
        })

    if answer.azure:
        yield sse_event({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                         "prompt_filter_results": PROMPT_FILTERS, **extra})
    yield chunk({"role": "assistant", "content": ""})
    for piece in pieces:
        yield chunk({"content": piece}, filters=CHOICE_FILTERS)
    yield chunk({}, answer.finish_reason)
    if include_usage:
        yield sse_event({
            "id": answer.id, "object": "chat.completion.chunk", "created": answer.created, "model": answer.model,
            "system_fingerprint": answer.fingerprint, "choices": [], "usage": answer.usage,
        })
    yield sse_event("[DONE]")


# -- embeddings --------------------------------------------------------------------------
def embeddings(call: Call) -> Response:
    """``POST {deploymentUrl}/embeddings``."""
    body = _body(call, "embedding")
    inputs = _embedding_inputs(body.get("input"))
    model = call.deployment.model
    native = NATIVE_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    dimensions = _optional_int(body, "dimensions") or native
    if dimensions > native:
        raise _invalid(f"Invalid 'dimensions': {model} supports at most {native}.", "dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _invalid("Invalid 'encoding_format': expected 'float' or 'base64'.", "encoding_format")
    data = []
    for index, item in enumerate(inputs):
        vector = unit_vector(item, dimensions)
        data.append({"object": "embedding", "index": index,
                     "embedding": float32_base64(vector) if encoding == "base64" else vector})
    tokens = sum(len(item) if isinstance(item, list) else max(1, count_tokens(item)) for item in inputs)
    return json_response({"object": "list", "data": data, "model": model,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _embedding_inputs(raw: object) -> list[str | list[int]]:
    """The inputs one per embedding: a string, strings, one token array, or token arrays."""
    if raw is None:
        raise _invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if isinstance(raw, str):
        raw = [raw]
    elif isinstance(raw, list) and raw and all(_is_token(t) for t in raw):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _invalid("Invalid 'input': expected a non-empty string or array.", "input")
    for index, item in enumerate(raw):
        valid = (isinstance(item, str) and item != "") or (
            isinstance(item, list) and item and all(_is_token(t) for t in item)
        )
        if not valid:
            raise _invalid(f"Invalid 'input[{index}]': expected a non-empty string or token array.", "input")
    return raw


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


DIALECT = Dialect(
    name="azure-openai",
    executables=("azure-openai", "aicore-*", "perplexity-ai"),
    routes={
        "chat/completions": Route("chat_completions", chat_completions, "ChatCompletions_Create"),
        "embeddings": Route("embeddings", embeddings, "Embeddings_Create"),
    },
    fault_error=_fault_error,
    not_found=_not_found,
)
