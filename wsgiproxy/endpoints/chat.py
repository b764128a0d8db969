"""``POST /v1/chat/completions`` on OpenAI-family deployments, streamed or not."""

from __future__ import annotations

import typing as t

from werkzeug.wrappers import Response

from ..body import json_object, optional_bool, require_model
from ..dialects.openai import ChatStream, chat_upstream_body, error_event
from ..errors import bad_request
from ..streaming import RelayedStream
from ._upstream import openai_deployment, passthrough, upstream_failure

if t.TYPE_CHECKING:
    from . import Call

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def chat_completions(call: Call) -> Response:
    raw = call.body()
    body = json_object(raw)
    model = require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array of messages.", param="messages")
    stream = optional_bool(body, "stream")
    deployment = openai_deployment(call, model)
    call.record.use(deployment, streamed=stream)
    upstream_body, client_wants_usage = chat_upstream_body(body, raw)
    response = call.client.post(
        deployment,
        "/chat/completions",
        upstream_body,
        query={"api-version": call.settings.api_version},
        stream=stream,
        accept="text/event-stream" if stream else "application/json",
    )
    if response.status >= 400:
        raise upstream_failure(response, deployment)
    if not stream:
        return passthrough(response, call.record)
    relay = RelayedStream(response, ChatStream(client_wants_usage), error_event, call.record)
    return Response(relay, status=200, content_type="text/event-stream; charset=utf-8",
                    headers=SSE_HEADERS, direct_passthrough=True)
