"""``POST /v1/embeddings``: every field passed through (``dimensions``, ``encoding_format``...)."""

from __future__ import annotations

import typing as t

from ..answers import Answer
from ..body import json_object, require_model
from ..errors import bad_request
from ._upstream import openai_deployment, passthrough, post

if t.TYPE_CHECKING:
    from . import Call


def embeddings(call: Call) -> Answer:
    raw = call.body()
    body = json_object(raw)
    model = require_model(body)
    value = body.get("input")
    if value is None or value == "" or value == []:
        raise bad_request("'input' must be a non-empty string or array.", param="input")
    if not isinstance(value, (str, list)):
        raise bad_request("'input' must be a string, an array of strings, or an array of token arrays.", param="input")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    deployment = openai_deployment(call, model)
    call.record.use(deployment)
    response = post(call, deployment, "/embeddings", raw, query={"api-version": call.settings.api_version})
    return passthrough(response, call.record)
