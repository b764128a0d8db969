"""Shared by the endpoints: pick a deployment, call it, turn failures into ApiErrors."""

from __future__ import annotations

import json
import logging
import re
import typing as t

from ..aicore.catalog import OPENAI, Deployment, UnknownModel
from ..aicore.transport import discard
from ..answers import Answer, json_answer
from ..errors import ApiError

if t.TYPE_CHECKING:
    from ..aicore.transport import UpstreamResponse
    from ..record import RequestRecord
    from . import Call

log = logging.getLogger("wsgiproxy.upstream")

# Response headers of SAP AI Core worth handing to the client.
_PASSED_HEADERS = ("retry-after", "retry-after-ms", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                   "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens")


def pick_deployment(call: Call, model: str) -> Deployment:
    """The deployment for a client's model name (SAP name or alias); 404 names the models that exist."""
    try:
        return call.catalog.pick(model)
    except UnknownModel as exc:
        available = ", ".join(exc.available) or "(none configured)"
        raise ApiError(404, f"The model '{model}' does not exist or is not served by this proxy. "
                       f"Available models: {available}.", code="model_not_found", param="model") from None


def openai_deployment(call: Call, model: str) -> Deployment:
    """The deployment for a request forwarded as is to an OpenAI-format deployment."""
    deployment = pick_deployment(call, model)
    if deployment.family != OPENAI:
        raise ApiError(400, f"The model '{model}' is a {deployment.family} model; this proxy does not serve "
                       "that family on this endpoint yet.", code="model_not_supported", param="model")
    return deployment


def post(call: Call, deployment: Deployment, suffix: str, body: bytes, *, stream: bool = False,
         accept: str = "application/json", query: t.Mapping[str, str] | None = None) -> UpstreamResponse:
    """POST to the deployment; an error status comes back as the client's error (raised)."""
    response = call.client.post(deployment, suffix, body, query=query, stream=stream, accept=accept)
    if response.status >= 400:
        raise upstream_failure(response, deployment)
    return response


def upstream_failure(response: UpstreamResponse, deployment: Deployment) -> ApiError:
    """An upstream error status as the client's error: 4xx and 5xx keep their status and message.

    401/403 mean the proxy's own SAP AI Core credentials are wrong, not the client's key, so they
    become 502; a 429 keeps its ``Retry-After``.
    """
    try:
        raw = response.data or b""  # error bodies are small; the message is capped below
    except Exception:  # a broken error body must not hide the status
        raw = b""
    finally:
        discard(response)
    message, err_type, code = _error_fields(raw)
    status = response.status
    headers = {name: value for name in _PASSED_HEADERS if (value := response.headers.get(name))}
    log.warning("SAP AI Core answered %s for model %s (subaccount %s, deployment %s): %s",
                status, deployment.model, deployment.subaccount.name, deployment.id, message[:200])
    if status in (401, 403):
        return ApiError(502, f"SAP AI Core rejected the proxy's credentials for subaccount "
                        f"'{deployment.subaccount.name}' ({status}: {message}).", code="upstream_auth_failed")
    if status < 400 or status > 599:
        return ApiError(502, f"SAP AI Core answered with unexpected status {status}.", code="upstream_error")
    return ApiError(status, message, type=err_type, code=code, headers=headers)


def _error_fields(raw: bytes) -> tuple[str, str | None, str | None]:
    text = raw.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return text[:2000] or "SAP AI Core returned an error without a message.", None, None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            message = error.get("message") or json.dumps(error)[:2000]
            code = error.get("code")
            return str(message), _str_or_none(error.get("type")), None if code is None else str(code)
        if isinstance(error, str):
            return payload.get("error_description") or error, None, None
        if isinstance(payload.get("message"), str):
            return payload["message"], None, _str_or_none(payload.get("__type") or payload.get("code"))
    return text[:2000], None, None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def passthrough(response: UpstreamResponse, record: RequestRecord | None = None) -> Answer:
    """A complete (non-streamed) upstream JSON answer, relayed as is; its usage goes into ``record``."""
    content_type = response.headers.get("content-type", "application/json")
    data = response.data
    if record is not None:
        record.tokens(*usage_tokens(data))
    return json_answer(data, response.status, content_type)


def usage_tokens(data: bytes) -> tuple[int | None, int | None]:
    """Token counts of the last ``"usage"`` object, found without parsing the whole body.

    Embedding answers are large and usage comes last; an unescaped ``"usage"`` can only be a
    JSON key or value, never text inside a string.
    """
    start = data.rfind(b'"usage"')
    if start < 0:
        return None, None
    window = data[start:start + 600]
    prompt, completion = _PROMPT_TOKENS.search(window), _COMPLETION_TOKENS.search(window)
    return (int(prompt[1]) if prompt else None, int(completion[1]) if completion else None)
