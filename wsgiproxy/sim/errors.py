"""Error responses in the shapes AI Core's layers use, and the exception that carries them.

- the gateway answers authentication failures in plain text (``Jwt is expired``);
- the AI API uses the ``AiApiError`` envelope (protocol §5);
- providers answer in their own shape (the dialect modules build those);
- XSUAA uses ``{"error", "error_description"}``.

Handlers raise :class:`Rejected` deep inside validation; the app turns it into the
response it carries.
"""

from __future__ import annotations

import json

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

JSON = "application/json"


class Rejected(HTTPException):
    """A finished error response raised from inside a handler."""

    def __init__(self, response: Response) -> None:
        super().__init__(response=response)
        self.code = response.status_code


def json_response(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialise *payload* compactly, as the real services do."""
    body = json.dumps(payload, separators=(",", ":"))
    return Response(body, status=status, mimetype=JSON, headers=headers)


def plain(status: int, text: str) -> Response:
    """A plain-text answer, the gateway's style."""
    return Response(text, status=status, mimetype="text/plain")


def ai_api_error(status: int, code: str, message: str, *, request_id: str, target: str) -> Response:
    """An ``AiApiError`` envelope, used for everything the AI API itself rejects."""
    return json_response(
        {"error": {"code": code, "message": message, "requestId": request_id, "target": target, "details": {}}},
        status,
    )


def uaa_error(status: int, error: str, description: str) -> Response:
    """An XSUAA OAuth error."""
    return json_response({"error": error, "error_description": description}, status)


def custom(status: int, body: object) -> Response:
    """A fault's own body: a string is sent as plain text, anything else as JSON."""
    if isinstance(body, str):
        return plain(status, body)
    return json_response(body, status)
