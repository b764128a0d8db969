"""The gate in front of every inference call: ``POST /v2/inference/deployments/{id}/...``.

In the order AI Core's layers act: count and record the request, check the bearer
token (gateway, plain-text 401), find the deployment and check ``AI-Resource-Group``
(404 ``AiApiError``), pick the dialect (501 when the simulator has none), draw a
fault and sleep the configured latency, then let the dialect answer.
"""

from __future__ import annotations

import json
import time

from werkzeug.wrappers import Request, Response

from .call import Call
from .dialects import dialect_for
from .effects import after_answer, before_answer
from .errors import Rejected, ai_api_error
from .state import SimState
from .streaming import EventStream
from .tokens import require_token


def inference(state: SimState, request: Request, request_id: str, deployment_id: str, suffix: str) -> Response:
    """Serve one inference call through the dialect of the deployment's executable."""
    body, body_error = _parse_json(request)
    deployment = state.deployment(deployment_id)
    dialect = dialect_for(deployment.executable_id) if deployment else None
    route = dialect.route(suffix) if dialect else None
    if route is not None:
        name = route.name
    else:
        name = "unimplemented" if deployment is not None and dialect is None else "unknown"
    state.count(name, inference=True)
    state.record_inference(_snapshot(request, body))

    require_token(state, request)
    group = request.headers.get("AI-Resource-Group")
    if deployment is None or group != deployment.resource_group:
        message = (
            f"Deployment {deployment_id} not found"
            if deployment is None
            else f"Deployment {deployment_id} not found in resource group {group!r}"
            + ("" if group else " (header AI-Resource-Group is missing)")
        )
        raise Rejected(ai_api_error(404, "NotFound", message, request_id=request_id, target=request.path))
    if dialect is None:
        raise Rejected(ai_api_error(
            501, "NotImplemented",
            f"The simulator does not implement the {deployment.executable_id} dialect yet "
            f"(deployment {deployment_id}, model {deployment.model}).",
            request_id=request_id, target=request.path,
        ))
    if route is None:
        return dialect.not_found(request, suffix)

    fault = state.take_fault("inference", request.path)
    settings = state.settings
    call = Call(request=request, deployment=deployment, state=state, settings=settings, route=route,
                request_id=request_id, body=body, body_error=body_error, fault=fault)
    if settings.latency_ms:
        time.sleep(settings.latency_ms / 1000)
    deferred = fault is not None and dialect.defers_fault(fault, call)
    failed = None if deferred else before_answer(fault, lambda f: dialect.fault_error(f, call))
    if failed is not None:
        return failed
    response = route.handler(call)
    if not isinstance(response.response, EventStream):
        after_answer(fault, request.environ)
    return response


def _parse_json(request: Request) -> tuple[object, str | None]:
    raw = request.get_data(cache=True)
    if not raw.strip():
        return None, "the body is empty"
    try:
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"invalid JSON: {exc}"


def _snapshot(request: Request, body: object) -> dict[str, object]:
    """What ``last_inference`` shows: the request with its credentials redacted."""
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        if key.lower() == "authorization":
            value = value.split(" ", 1)[0] + " ***"
        headers[key.lower()] = value
    return {"path": request.path, "query": request.args.to_dict(), "headers": headers, "json": body}
