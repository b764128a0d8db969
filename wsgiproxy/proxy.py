"""The WSGI callable: route → authenticate → endpoint → response, and every error rendered.

Settings are loaded and validated when the app is created; the per-process state (upstream
pool, token caches, round-robin counters) is created on the first request of each process, so
the app can be imported before gunicorn forks its workers.
"""

from __future__ import annotations

import logging
import os
import re
import time
import typing as t
import uuid

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from .aicore.catalog import Catalog
from .aicore.client import AICoreClient
from .aicore.transport import Transport
from .auth import KeyChecker
from .config import Settings, load_settings
from .endpoints import Call
from .endpoints.chat import chat_completions
from .endpoints.embeddings import embeddings
from .endpoints.health import health
from .endpoints.messages import count_tokens, messages
from .endpoints.meta import event_logging, root
from .endpoints.models import get_model, list_models
from .errors import FACE_KEY, ApiError, TokenError, UpstreamError, UpstreamTimeout
from .logs import REQUEST_ID, UsageLog
from .metrics import Metrics, metrics_endpoint
from .record import RequestRecord

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("wsgiproxy")

Endpoint = t.Callable[[Call], t.Any]


class Route(t.NamedTuple):
    handler: Endpoint
    face: str  # error format: "openai" or "anthropic"
    authenticated: bool


ROUTES: dict[str, Route] = {
    "health": Route(health, "openai", False),
    "metrics": Route(metrics_endpoint, "openai", False),
    "models": Route(list_models, "openai", True),
    "model": Route(get_model, "openai", True),
    "chat": Route(chat_completions, "openai", True),
    "embeddings": Route(embeddings, "openai", True),
    "messages": Route(messages, "anthropic", True),
    "count_tokens": Route(count_tokens, "anthropic", True),
    "root": Route(root, "openai", False),
    "event_logging": Route(event_logging, "anthropic", False),
}

URL_MAP = Map(
    [
        Rule("/health", endpoint="health", methods=["GET"]),
        Rule("/metrics", endpoint="metrics", methods=["GET"]),
        Rule("/v1/models", endpoint="models", methods=["GET"]),
        Rule("/v1/models/<path:model>", endpoint="model", methods=["GET"]),
        Rule("/v1/chat/completions", endpoint="chat", methods=["POST"]),
        Rule("/v1/embeddings", endpoint="embeddings", methods=["POST"]),
        Rule("/v1/messages", endpoint="messages", methods=["POST"]),
        Rule("/v1/messages/count_tokens", endpoint="count_tokens", methods=["POST"]),
        Rule("/", endpoint="root", methods=["GET"]),
        Rule("/api/event_logging/batch", endpoint="event_logging", methods=["POST"]),
    ],
    strict_slashes=False,
    merge_slashes=False,
)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class _ProcessState:
    """What each process owns: created after fork, on first use."""

    def __init__(self, settings: Settings, transport: Transport | None) -> None:
        self.pid = os.getpid()
        self.catalog = Catalog(settings)
        self.metrics = Metrics.for_settings(settings)
        self.client = AICoreClient(settings, transport, self.metrics)


class WsgiProxy:
    """The proxy as a WSGI application."""

    def __init__(self, settings: Settings, transport: Transport | None = None) -> None:
        self.settings = settings
        self.keys = KeyChecker(settings.api_keys)
        self.usage = UsageLog(settings.usage_log)
        self._transport = transport  # test shim: a fake upstream
        self._state: _ProcessState | None = None
        if not self.keys.enabled:
            log.warning("no client keys configured (secret_authentication_tokens, WSGIPROXY_API_KEYS): "
                        "authentication is disabled, every client is accepted")

    @property
    def state(self) -> _ProcessState:
        state = self._state
        if state is None or state.pid != os.getpid():
            state = self._state = _ProcessState(self.settings, self._transport)
        return state

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        request_id = _request_id(environ)
        record = RequestRecord(request_id)
        REQUEST_ID.set(request_id)
        metrics = self.state.metrics
        metrics.request_started()

        def start_with_id(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
            record.status = int(status[:3])
            headers.append(("X-Request-Id", request_id))
            return start_response(status, headers, exc_info)

        try:
            response = self._respond(environ, record)
            body: t.Iterable[bytes] = response(environ, start_with_id)
        except BaseException:
            record.status = record.status or 500
            _finish(record, metrics, self.usage)
            raise
        return _ObservedBody(body, record, metrics, self.usage)

    def _respond(self, environ: WSGIEnvironment, record: RequestRecord) -> t.Any:
        request_id = record.request_id
        try:
            adapter = URL_MAP.bind_to_environ(environ)
            endpoint, args = adapter.match()
            route = ROUTES[endpoint]
            environ[FACE_KEY] = route.face
            record.endpoint = endpoint
            record.key_id = self.keys.check(environ) if route.authenticated else "-"
            state = self.state
            call = Call(environ, self.settings, state.catalog, state.client, record, args)
            return route.handler(call)
        except ApiError as exc:
            return exc
        except MethodNotAllowed as exc:
            allowed = ", ".join(exc.valid_methods or ())
            return ApiError(405, f"Method {environ.get('REQUEST_METHOD')} is not allowed here; use {allowed}.",
                            headers={"Allow": allowed})
        except NotFound:
            path = environ.get("PATH_INFO", "")
            return ApiError(404, f"Unknown path {path!r}; this proxy serves /v1/chat/completions, "
                            "/v1/embeddings, /v1/models, /v1/messages, /v1/messages/count_tokens and /health.",
                            code="unknown_url")
        except HTTPException as exc:
            return ApiError(exc.code or 400, exc.description or exc.name)
        except TokenError as exc:
            log.warning("request %s: %s", request_id, exc)
            return ApiError(502, f"The proxy could not get a SAP AI Core token: {exc}.", code="upstream_auth_failed")
        except UpstreamTimeout as exc:
            log.warning("request %s: %s", request_id, exc)
            return ApiError(504, f"SAP AI Core did not answer in time: {exc}.", code="upstream_timeout")
        except UpstreamError as exc:
            log.warning("request %s: %s", request_id, exc)
            return ApiError(502, f"SAP AI Core could not be reached: {exc}.", code="upstream_unreachable")
        except Exception:
            log.exception("request %s failed", request_id)
            return ApiError(500, f"Internal error in the proxy (request id {request_id}); the proxy log has details.",
                            code="internal_error")


class _ObservedBody:
    """The response body as the server sees it: notes the first byte; ``close()`` reports the request.

    A ``close()`` while the body was still being sent means the client went away.
    """

    __slots__ = ("_body", "_record", "_metrics", "_usage", "_chunks", "_complete", "_failed", "_closed")

    def __init__(self, body: t.Iterable[bytes], record: RequestRecord, metrics: Metrics, usage: UsageLog) -> None:
        self._body = body
        self._record = record
        self._metrics = metrics
        self._usage = usage
        self._chunks: t.Generator[bytes, None, None] | None = None
        self._complete = False
        self._failed = False
        self._closed = False

    def __iter__(self) -> t.Iterator[bytes]:
        if self._chunks is None:
            self._chunks = self._relay()
        return self._chunks

    def _relay(self) -> t.Generator[bytes, None, None]:
        chunks = iter(self._body)
        try:
            for chunk in chunks:
                if chunk:
                    self._record.first_byte = time.perf_counter()
                    yield chunk
                    break
                yield chunk
            for chunk in chunks:  # a plain loop, not `yield from`: close() closes the body exactly once
                yield chunk
            self._complete = True
        except Exception:
            self._failed = True
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        record = self._record
        try:
            if self._chunks is not None:
                self._chunks.close()
                record.disconnected = not (self._complete or self._failed)
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            _finish(record, self._metrics, self._usage)


def _finish(record: RequestRecord, metrics: Metrics, usage: UsageLog) -> None:
    """The request is over: metrics and usage line; a failure here must not reach the server."""
    record.ended = time.perf_counter()
    try:
        metrics.request_done(record)
        usage.write(record)
    except Exception:
        log.exception("recording request %s failed", record.request_id)
    finally:
        REQUEST_ID.set(None)


def _request_id(environ: WSGIEnvironment) -> str:
    given = environ.get("HTTP_X_REQUEST_ID", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def create_app(settings: Settings | None = None, *, transport: Transport | None = None) -> WsgiProxy:
    """Build the WSGI app; settings default to :func:`~wsgiproxy.config.load_settings`."""
    settings = settings or load_settings()
    logging.getLogger("wsgiproxy").setLevel(settings.log_level)
    return WsgiProxy(settings, transport)
