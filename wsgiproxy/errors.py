"""Every error wsgiproxy raises, and how a client sees it.

Internal signals are plain exceptions; only :mod:`wsgiproxy.proxy` and the endpoints turn them
into :class:`ApiError`, the one client-facing class, which renders itself in the client's own
API format (the *face* of the route: OpenAI or Anthropic)::

    WsgiproxyError
     ├── ConfigError            a setting is wrong: startup stops with one line
     └── UpstreamError          SAP AI Core could not be used for this request
          ├── UpstreamUnreachable   no connection, or it broke before the response (502)
          ├── UpstreamTimeout       connect or read timed out (504)
          └── TokenError            no OAuth token for the subaccount (502)

    Exception
     └── ApiError               a WSGI app: OpenAI or Anthropic error JSON, with status and headers
"""

from __future__ import annotations

import json
import typing as t

from .answers import status_line

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

FACE_KEY = "wsgiproxy.face"


class WsgiproxyError(Exception):
    """Base of wsgiproxy's own exceptions."""


class ConfigError(WsgiproxyError):
    """A setting is missing or wrong; the message is one line naming source, key and expectation."""


class UpstreamError(WsgiproxyError):
    """SAP AI Core could not be used; ``upstream_saw_it`` tells whether a retry could repeat work."""

    upstream_saw_it = True


class UpstreamUnreachable(UpstreamError):
    upstream_saw_it = False


class UpstreamTimeout(UpstreamError):
    pass


class TokenError(UpstreamError):
    upstream_saw_it = False


# OpenAI's error "type" per status, as the official API answers.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}


# Anthropic's error "type" per status (https://docs.anthropic.com/en/api/errors); its SDK picks the
# exception class from the status, Claude Code reads the type.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

ANTHROPIC = "anthropic"


def anthropic_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


class ApiError(Exception):
    """An error answered to a client, as JSON in the format of the API it called.

    Endpoints raise it (or return it); it is itself the WSGI app that answers: the status, the
    extra ``headers``, ``Content-Type: application/json`` and the payload in the request's *face*
    (``environ[FACE_KEY]``), no body to a ``HEAD`` request (``Content-Length`` still tells the
    size), as werkzeug's ``HTTPException`` answered before.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: t.Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = status
        self.message = message
        self.error_code = code
        self.param = param
        self.error_type = type or _OPENAI_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        self.extra_headers = dict(headers or {})

    def detached(self) -> ApiError:
        """This error without its traceback and the exception it replaced, to be kept as the answer.

        A caught error's traceback holds the frames it went through, and those frames hold the
        variable the answer is kept in: a reference cycle per failed request, which only the
        garbage collector would free, request body and all.
        """
        self.__traceback__ = self.__context__ = self.__cause__ = None
        return self

    def payload(self, face: str = "openai") -> dict[str, t.Any]:
        if face == ANTHROPIC:
            return {"type": "error", "error": {"type": anthropic_type(self.code or 500), "message": self.message}}
        error = {"message": self.message, "type": self.error_type, "param": self.param, "code": self.error_code}
        return {"error": error}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        body = json.dumps(self.payload(environ.get(FACE_KEY, "openai"))).encode()
        start_response(status_line(self.code), [("Content-Type", "application/json"), *self.extra_headers.items(),
                                                ("Content-Length", str(len(body)))])
        return () if environ.get("REQUEST_METHOD") == "HEAD" else (body,)

    def __str__(self) -> str:
        return f"{self.code} {self.error_type}: {self.message}"


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)
