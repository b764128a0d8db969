"""Reading a client's request body: size-limited, chunked or not, and parsed into a JSON object.

werkzeug's ``get_data`` silently truncates a chunked body at ``max_content_length`` under
gunicorn, so the body is read from ``wsgi.input`` here, with the limit enforced on what arrives.
"""

from __future__ import annotations

import json
import typing as t

from .errors import ApiError, bad_request

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

_BLOCK = 65536
_decode = json.JSONDecoder().decode  # what json.loads uses once it has the text


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")


def read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """The whole body, or 413 as soon as it exceeds ``limit`` bytes; 400 if it cannot be read.

    Servers raise ``OSError`` (the client went away, a read timed out) or ``ValueError`` (a
    malformed chunked body) from ``wsgi.input``: the client's doing, never a 500.
    """
    try:
        return _read_body(environ, limit)
    except (OSError, ValueError) as exc:
        raise bad_request(f"The request body could not be read: {exc or type(exc).__name__}.") from None


def _read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    stream = environ.get("wsgi.input")
    length_header = environ.get("CONTENT_LENGTH", "").strip()
    if length_header:
        if not length_header.isdigit():
            raise bad_request("Invalid Content-Length header.")
        length = int(length_header)
        if length > limit:
            raise too_large(limit)
        if length == 0 or stream is None:
            return b""
        data = _read_exactly(stream, length)
        if len(data) < length:
            raise bad_request("Request body ended before Content-Length bytes arrived.")
        return data
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if stream is None or not (chunked or environ.get("wsgi.input_terminated")):
        return b""  # no length and no framing: no body (WSGI forbids reading past it)
    parts: list[bytes] = []
    size = 0
    while True:
        block = stream.read(_BLOCK)
        if not block:
            return b"".join(parts)
        size += len(block)
        if size > limit:
            raise too_large(limit)
        parts.append(block)


def _read_exactly(stream: t.Any, length: int) -> bytes:
    parts: list[bytes] = []
    remaining = length
    while remaining > 0:
        block = stream.read(min(remaining, _BLOCK))
        if not block:
            break
        parts.append(block)
        remaining -= len(block)
    return b"".join(parts)


def json_object(raw: bytes) -> dict[str, t.Any]:
    """Parse a request body that must be a JSON object; 400 with the reason otherwise."""
    if not raw.strip():
        raise bad_request("Request body is empty; expected a JSON object.")
    try:
        value = _loads(raw)
    except UnicodeDecodeError:
        raise bad_request("Request body is not UTF-8 text; expected a JSON object.") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise bad_request(f"Request body is not valid JSON: {exc.msg} at {where}.") from None
    except RecursionError:  # arrays or objects nested thousands deep: the decoder recurses per level
        raise bad_request("Request body is nested too deeply to parse; expected a JSON object.") from None
    if not isinstance(value, dict):
        raise bad_request(f"Request body is a JSON {type(value).__name__}; expected a JSON object.")
    return value


def _loads(raw: bytes) -> object:
    """``json.loads(raw)``: an object's first two bytes already say UTF-8 by its encoding rules."""
    if raw[:1] == b"{" and raw[1:2] != b"\x00":  # not a BOM, not UTF-16 or UTF-32
        return _decode(raw.decode("utf-8", "surrogatepass"))
    return json.loads(raw)


def require_model(body: t.Mapping[str, t.Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("You must provide a model parameter: a non-empty string.", param="model")
    return model


def optional_bool(body: t.Mapping[str, t.Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"'{key}' must be a boolean, got {json.dumps(value)[:40]}.", param=key)
    return value


def is_int(value: object) -> t.TypeGuard[int]:
    """Whether a decoded JSON value is an integer (``bool`` is an ``int`` subclass, but not one)."""
    return isinstance(value, int) and not isinstance(value, bool)
