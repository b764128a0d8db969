"""``GET /v1/models`` and ``GET /v1/models/{model}`` in the OpenAI list format."""

from __future__ import annotations

import json
import time
import typing as t

from ..answers import Reply
from ..errors import ApiError

if t.TYPE_CHECKING:
    from . import Call

_CREATED = int(time.time())
_HEADERS = (("Content-Type", "application/json"),)


def _model(model_id: str) -> dict[str, t.Any]:
    return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "sap-ai-core"}


def list_models(call: Call) -> Reply:
    payload = {"object": "list", "data": [_model(m) for m in call.catalog.models()]}
    return Reply(200, _HEADERS, json.dumps(payload).encode())


def get_model(call: Call) -> Reply:
    model = call.args["model"]
    if model not in call.catalog:
        available = ", ".join(call.catalog.models())
        raise ApiError(404, f"The model '{model}' does not exist. Available models: {available}.",
                       code="model_not_found", param="model")
    return Reply(200, _HEADERS, json.dumps(_model(model)).encode())
