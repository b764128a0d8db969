"""The XSUAA token endpoint (protocol §2) and the gateway's bearer-token check.

Clients differ in how they ask: the SDKs put ``grant_type`` and the credentials in a
form body, pjq sends HTTP Basic with ``?grant_type=client_credentials`` and no body.
XSUAA accepts both, so the simulator does too.
"""

from __future__ import annotations

import hmac
import time

from werkzeug.wrappers import Request, Response

from .effects import after_answer, before_answer
from .errors import Rejected, custom, json_response, plain, uaa_error
from .faults import Fault
from .state import SimState

GRANT_TYPE = "client_credentials"
SCOPE = "uaa.resource aicore!b540.deployments.read aicore!b540.inference.execute"


def token_endpoint(state: SimState, request: Request) -> Response:
    """``POST /oauth/token``: issue a bearer token for the configured client."""
    state.count("token", token=True)
    fault = state.take_fault("token", request.path)
    latency = state.settings.token_latency_ms
    if latency:
        time.sleep(latency / 1000)
    failed = before_answer(fault, _fault_error)
    if failed is not None:
        return failed
    after_answer(fault, request.environ)

    client_id, client_secret = _credentials(request)
    if not (
        hmac.compare_digest(client_id.encode(), state.client_id.encode())
        and hmac.compare_digest(client_secret.encode(), state.client_secret.encode())
    ):
        return uaa_error(401, "unauthorized", "Bad credentials")
    grant_type = request.form.get("grant_type") or request.args.get("grant_type")
    if grant_type != GRANT_TYPE:
        return uaa_error(400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}")

    token = state.issue_token()
    return json_response(
        {
            "access_token": token.value,
            "token_type": "bearer",
            "expires_in": token.expires_in,
            "scope": SCOPE,
            "jti": token.jti,
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def require_token(state: SimState, request: Request) -> None:
    """Reject the request the way the AI Core gateway does unless it bears a live token."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    verdict = state.check_token(value.strip()) if scheme.lower() == "bearer" and value.strip() else "unknown"
    if verdict == "expired":
        raise Rejected(plain(401, "Jwt is expired"))
    if verdict != "valid":
        raise Rejected(plain(401, "Unauthorized"))


def _credentials(request: Request) -> tuple[str, str]:
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        return auth.username or "", auth.password or ""
    return request.form.get("client_id", ""), request.form.get("client_secret", "")


def _fault_error(fault: Fault) -> Response:
    if fault.body is not None:
        return custom(fault.status, fault.body)
    error = "temporarily_unavailable" if fault.status in (429, 503) else "server_error"
    return uaa_error(fault.status, error, f"Simulated token endpoint failure (HTTP {fault.status})")
