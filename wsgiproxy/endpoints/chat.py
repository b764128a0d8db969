"""``POST /v1/chat/completions``, streamed or not: forwarded to OpenAI-format deployments,
translated to Bedrock Converse for Claude and the other Bedrock models."""

from __future__ import annotations

import json
import time
import typing as t
import uuid

from ..aicore.catalog import BEDROCK, OPENAI
from ..answers import Answer, json_answer, sse_answer
from ..body import json_object, optional_bool, require_model
from ..dialects import converse
from ..dialects.bedrock import ACCEPT
from ..dialects.openai import ChatStream, chat_upstream_body, error_event
from ..errors import ApiError, bad_request
from ..streaming import RelayedStream
from ._upstream import passthrough, pick_deployment, post

if t.TYPE_CHECKING:
    from ..aicore.catalog import Deployment
    from . import Call

def chat_completions(call: Call) -> Answer:
    raw = call.body()
    body = json_object(raw)
    model = require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array of messages.", param="messages")
    stream = optional_bool(body, "stream")
    deployment = pick_deployment(call, model)
    call.record.use(deployment, streamed=stream)
    if deployment.family == OPENAI:
        return _openai(call, deployment, body, raw, stream)
    if deployment.family == BEDROCK:
        return _converse(call, deployment, body, model, stream)
    raise ApiError(400, f"The model '{model}' is a {deployment.family} model; this proxy does not serve that "
                   "family yet.", code="model_not_supported", param="model")


def _openai(call: Call, deployment: Deployment, body: dict[str, t.Any], raw: bytes, stream: bool) -> Answer:
    upstream_body, client_wants_usage = chat_upstream_body(body, raw)
    response = post(call, deployment, "/chat/completions", upstream_body, stream=stream,
                    accept="text/event-stream" if stream else "application/json",
                    query={"api-version": call.settings.api_version})
    if not stream:
        return passthrough(response, call.record)
    return sse_answer(RelayedStream(response, ChatStream(client_wants_usage), error_event, call.record))


def _converse(call: Call, deployment: Deployment, body: dict[str, t.Any], model: str, stream: bool) -> Answer:
    upstream_body = json.dumps(converse.converse_request(body), ensure_ascii=False, separators=(",", ":")).encode()
    # Why the binary event-stream: see wsgiproxy.dialects.bedrock.ACCEPT.
    response = post(call, deployment, "/converse-stream" if stream else "/converse", upstream_body, stream=stream,
                    accept=ACCEPT if stream else "application/json")
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if not stream:
        try:
            answer = json.loads(response.data)
        except (ValueError, RecursionError):
            raise ApiError(502, "SAP AI Core answered the Converse call with a body that is not JSON.",
                           code="upstream_error") from None
        call.record.tokens(*converse.usage_counts(answer))
        completion = converse.chat_completion(answer, model, completion_id, created)
        return json_answer(json.dumps(completion, ensure_ascii=False).encode())
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    translator = converse.ConverseChatStream(model, completion_id, created, wants_usage,
                                             response.headers.get("content-type"))
    return sse_answer(RelayedStream(response, translator, error_event, call.record))


