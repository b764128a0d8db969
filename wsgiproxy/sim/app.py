"""The simulator's WSGI application: routing, the request id, and error rendering.

Routes are declared once in ``_RULES``; every handler takes the shared
:class:`~.state.SimState` and the request and returns a response or raises an
``HTTPException`` (such as :class:`~.errors.Rejected`), which is itself the answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from . import control, deployments, inference, tokens
from .errors import ai_api_error
from .state import SimState

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

REQUEST_ID_KEY = "wsgiproxy.sim.request_id"
MAX_BODY = 64 * 1024 * 1024

_RULES = [  # (path, endpoint, methods); a Rule binds to one Map, so Rules are made per app
    ("/oauth/token", "token", ["POST"]),
    ("/v2/lm/deployments", "deployments", ["GET"]),
    ("/v2/lm/deployments/<deployment_id>", "deployment", ["GET"]),
    ("/v2/inference/deployments/<deployment_id>/<path:suffix>", "inference", ["POST"]),
    ("/v2/<path:rest>", "v2_unknown", None),
    ("/_sim/settings", "control_settings", ["GET", "POST"]),
    ("/_sim/faults", "control_faults", ["GET", "POST", "DELETE"]),
    ("/_sim/reset", "control_reset", ["POST"]),
    ("/_sim/stats", "control_stats", ["GET"]),
]


class SimRequest(Request):
    """Requests with a generous body limit (large embedding batches)."""

    max_content_length = MAX_BODY


class SimApp:
    """The SAP AI Core simulator as one WSGI callable; ``state`` is its memory."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self.url_map = Map([Rule(path, endpoint=endpoint, methods=methods) for path, endpoint, methods in _RULES])
        self._handlers: dict[str, Callable[..., Response]] = {
            "token": lambda request, request_id: tokens.token_endpoint(state, request),
            "deployments": lambda request, request_id: deployments.list_deployments(state, request, request_id),
            "deployment": lambda request, request_id, deployment_id: deployments.get_deployment(
                state, request, request_id, deployment_id
            ),
            "inference": lambda request, request_id, **args: inference.inference(state, request, request_id, **args),
            "v2_unknown": self._v2_unknown,
            "control_settings": lambda request, request_id: control.settings(state, request),
            "control_faults": lambda request, request_id: control.faults(state, request),
            "control_reset": lambda request, request_id: control.reset(state, request),
            "control_stats": lambda request, request_id: control.stats(state, request),
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request_id = str(uuid.uuid4())
        environ[REQUEST_ID_KEY] = request_id

        def start(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> object:
            headers.append(("x-request-id", request_id))
            return start_response(status, headers, exc_info)  # type: ignore[arg-type]

        request = SimRequest(environ)
        try:
            endpoint, args = self.url_map.bind_to_environ(environ).match()
            response: Response | HTTPException = self._handlers[str(endpoint)](request, request_id, **args)
        except HTTPException as exc:
            response = exc
        return response(environ, start)  # type: ignore[arg-type]

    def _v2_unknown(self, request: Request, request_id: str, rest: str) -> Response:
        """Any other ``/v2`` path: the gateway still wants a token, then nothing is there."""
        self.state.count("unknown")
        tokens.require_token(self.state, request)
        return ai_api_error(404, "NotFound", f"No resource at {request.path}", request_id=request_id,
                            target=request.path)


def create_app(state: SimState | None = None) -> SimApp:
    """Build a simulator app around *state* (a fresh default :class:`SimState` if omitted)."""
    return SimApp(state if state is not None else SimState())
