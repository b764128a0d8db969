"""The Anthropic face: ``POST /v1/messages`` and ``/v1/messages/count_tokens`` on Claude deployments.

A Messages request is already Bedrock's ``invoke`` body bar a few fields, so it is sanitized and
forwarded (see :mod:`wsgiproxy.dialects.anthropic`); streams come back as Anthropic SSE. Errors on
these routes render as Anthropic error JSON (the route's face), so the anthropic SDK raises its own
classes and Claude Code reads the type.
"""

from __future__ import annotations

import json
import typing as t

from ..answers import Answer, json_answer, sse_answer
from ..body import json_object, optional_bool, require_model
from ..dialects import anthropic
from ..dialects.bedrock import ACCEPT
from ..errors import ApiError, bad_request
from ..streaming import RelayedStream
from ._upstream import pick_deployment, post

if t.TYPE_CHECKING:
    from ..aicore.catalog import Deployment
    from . import Call


def claude_deployment(call: Call, model: str) -> Deployment:
    deployment = pick_deployment(call, model)
    if not deployment.is_claude:
        raise ApiError(400, f"The model '{model}' ({deployment.model}) is not a Claude model; /v1/messages serves "
                       "Claude models only. Use /v1/chat/completions for it.", param="model")
    return deployment


def messages(call: Call) -> Answer:
    body = json_object(call.body())
    model = require_model(body)
    stream = optional_bool(body, "stream")
    deployment = claude_deployment(call, model)
    upstream_body = anthropic.invoke_body(body, call.environ.get("HTTP_ANTHROPIC_BETA"),
                                          adaptive_thinking=anthropic.knows_adaptive_thinking(deployment.model))
    call.record.use(deployment, streamed=stream)
    response = post(call, deployment, "/invoke-with-response-stream" if stream else "/invoke", upstream_body,
                    stream=stream, accept=ACCEPT if stream else "application/json")
    if not stream:
        answer = anthropic.message_response(response.data, model)
        call.record.tokens(*anthropic.usage_counts(answer.get("usage")))
        return json_answer(anthropic.to_json(answer))
    translator = anthropic.MessagesStream(model, response.headers.get("content-type"))
    return sse_answer(RelayedStream(response, translator, anthropic.error_event, call.record))


def count_tokens(call: Call) -> Answer:
    """An estimate: SAP AI Core has no token-counting endpoint (the method is in the dialect's docstring)."""
    body = json_object(call.body())
    model = require_model(body)
    if not isinstance(body.get("messages"), list):
        raise bad_request("'messages' must be an array of messages.", param="messages")
    claude_deployment(call, model)
    return json_answer(json.dumps({"input_tokens": anthropic.count_tokens(body)}).encode())
