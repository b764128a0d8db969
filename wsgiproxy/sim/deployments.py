"""The AI API's deployment discovery: ``GET /v2/lm/deployments[/{id}]`` (protocol §3).

Records carry ``deploymentUrl`` built from the URL the request came in on, so the
same catalog works on any port and over TLS.
"""

from __future__ import annotations

from werkzeug.wrappers import Request, Response

from .catalog import Deployment
from .effects import after_answer, before_answer
from .errors import Rejected, ai_api_error, custom, json_response
from .faults import Fault
from .state import SimState
from .tokens import require_token

DEFAULT_RESOURCE_GROUP = "default"
STATUSES = ("PENDING", "RUNNING", "COMPLETED", "DEAD", "STOPPING", "STOPPED", "UNKNOWN")


def list_deployments(state: SimState, request: Request, request_id: str) -> Response:
    """List the resource group's deployments, filtered and paged like the AI API."""
    state.count("deployments")
    _gate(state, request, request_id)
    args = request.args
    group = resource_group(request)
    found = [d for d in state.deployments if d.resource_group == group]
    if "scenarioId" in args:
        found = [d for d in found if d.scenario_id == args["scenarioId"]]
    if "configurationId" in args:
        found = [d for d in found if d.configuration_id == args["configurationId"]]
    if "executableIds" in args:
        wanted = {e.strip() for e in args["executableIds"].split(",") if e.strip()}
        found = [d for d in found if d.executable_id in wanted]
    if "status" in args:
        if args["status"] not in STATUSES:
            raise Rejected(_invalid(request, request_id, f"Invalid status {args['status']!r}"))
        found = [d for d in found if d.status == args["status"]]
    skip = _paging(request, request_id, "$skip", 0)
    top = _paging(request, request_id, "$top", len(found))
    base = request.host_url
    return json_response(
        {"count": len(found), "resources": [d.record(base) for d in found[skip : skip + top]]}
    )


def get_deployment(state: SimState, request: Request, request_id: str, deployment_id: str) -> Response:
    """One deployment's record, or the AI API's 404."""
    state.count("deployment")
    _gate(state, request, request_id)
    deployment = find_deployment(state, request, request_id, deployment_id)
    return json_response(deployment.record(request.host_url))


def resource_group(request: Request) -> str:
    """The request's resource group; the AI API treats a missing header as ``default``."""
    return request.headers.get("AI-Resource-Group", DEFAULT_RESOURCE_GROUP)


def find_deployment(state: SimState, request: Request, request_id: str, deployment_id: str) -> Deployment:
    """The deployment *deployment_id* in the request's resource group, else a 404."""
    deployment = state.deployment(deployment_id)
    if deployment is None or deployment.resource_group != resource_group(request):
        raise Rejected(
            ai_api_error(
                404,
                "NotFound",
                f"Deployment {deployment_id} not found in resource group {resource_group(request)!r}",
                request_id=request_id,
                target=request.path,
            )
        )
    return deployment


def _gate(state: SimState, request: Request, request_id: str) -> None:
    require_token(state, request)
    fault = state.take_fault("lm", request.path)

    def error(fault: Fault) -> Response:
        if fault.body is not None:
            return custom(fault.status, fault.body)
        return ai_api_error(
            fault.status, "SimulatedFault", f"Simulated AI API failure (HTTP {fault.status})",
            request_id=request_id, target=request.path,
        )

    failed = before_answer(fault, error)
    if failed is not None:
        raise Rejected(failed)
    after_answer(fault, request.environ)


def _paging(request: Request, request_id: str, name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise Rejected(_invalid(request, request_id, f"Query parameter {name} must be a non-negative integer"))
    return int(raw)


def _invalid(request: Request, request_id: str, message: str) -> Response:
    return ai_api_error(400, "InvalidRequest", message, request_id=request_id, target=request.path)
