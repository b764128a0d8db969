"""The WSGI callable: route → authenticate → endpoint → response, and every error rendered.

Settings are loaded and validated when the app is created; the per-process state (upstream
pool, token caches, round-robin counters) is created on the first request of each process, so
the app can be imported before gunicorn forks its workers.

Requests are routed with werkzeug, but werkzeug is imported only for the rare request that the
exact-route table does not answer (see :data:`EXACT_ROUTES`): importing it costs each worker
megabytes (``werkzeug/__init__`` pulls in its server, test client and wrappers).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import socket
import time
import typing as t

from . import process
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
    from werkzeug.routing import Map

    from .streaming import Pushable

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

#: The URL rules as data, (path in werkzeug's rule syntax, endpoint, methods): the exact-route
#: table is built from them at import, werkzeug's ``Map`` (:func:`url_map`) on first need.
RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("/health", "health", ("GET",)),
    ("/metrics", "metrics", ("GET",)),
    ("/v1/models", "models", ("GET",)),
    ("/v1/models/<path:model>", "model", ("GET",)),
    ("/v1/chat/completions", "chat", ("POST",)),
    ("/v1/embeddings", "embeddings", ("POST",)),
    ("/v1/messages", "messages", ("POST",)),
    ("/v1/messages/count_tokens", "count_tokens", ("POST",)),
    ("/", "root", ("GET",)),
    ("/api/event_logging/batch", "event_logging", ("POST",)),
)


def _with_head(methods: tuple[str, ...]) -> tuple[str, ...]:
    """The methods a rule answers: HEAD wherever GET is, as werkzeug's ``Rule`` adds it."""
    return (*methods, "HEAD") if "GET" in methods and "HEAD" not in methods else methods


#: The rules without variables, by (path, method), HEAD included wherever GET is: most requests
#: are routed by this one lookup. Anything else (a trailing slash, ``/v1/models/<model>``, an
#: unknown path or method) goes through :func:`url_map`, which also words the 404 and 405 answers.
EXACT_ROUTES: dict[tuple[str, str], tuple[str, Route]] = {
    (path, method): (endpoint, ROUTES[endpoint])
    for path, endpoint, methods in RULES
    if "<" not in path
    for method in _with_head(methods)
}
#: Load-balancer and scraper probes: counted in ``wsgiproxy_requests_total`` (and in flight while
#: answered, in single-process mode), but no latency histograms (every dashboard panel excludes
#: them), no usage line and no body wrapper: their answer is complete when the endpoint returns.
PROBES = frozenset({"health", "metrics"})
_NO_ARGS: t.Mapping[str, str] = {}

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class _ProcessState:
    """What each process owns: created after fork, on first use."""

    def __init__(self, settings: Settings, transport: Transport | None) -> None:
        self.pid = process.pid()
        self.catalog = Catalog(settings)
        self.metrics = Metrics.for_settings(settings)
        self.client = AICoreClient(settings, transport, self.metrics)
        # Request ids: 24 random hex digits per process and a counter, 32 in all (the form uuid4().hex
        # had); unique without a getrandom() system call per request.
        self._id_prefix = os.urandom(12).hex()
        self._id_count = itertools.count()

    def request_id(self, environ: WSGIEnvironment) -> str:
        """The client's ``X-Request-Id`` when it is sane, else a new one."""
        given: str | None = environ.get("HTTP_X_REQUEST_ID")
        if given and _REQUEST_ID.fullmatch(given):
            return given
        return f"{self._id_prefix}{next(self._id_count) & 0xFFFFFFFF:08x}"


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

    def flush_logs(self) -> None:
        """Write the usage lines still waiting for the event loop to turn (a worker about to exit)."""
        self.usage.flush()

    @property
    def state(self) -> _ProcessState:
        state = self._state
        if state is None or state.pid != process.pid():
            state = self._state = _ProcessState(self.settings, self._transport)
        return state

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        state = self.state
        request_id = state.request_id(environ)
        record = RequestRecord(request_id)
        REQUEST_ID.set(request_id)
        metrics = state.metrics
        exact = EXACT_ROUTES.get((environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")))
        if exact is not None and exact[0] in PROBES:
            return self._probe(environ, start_response, record, exact, state)
        metrics.request_started()
        observed = _ObservedBody(record, metrics, self.usage, start_response)
        try:
            response = self._respond(environ, record, exact, state)
            observed.body = response(environ, observed.start_response)
        except BaseException:
            record.status = record.status or 500
            _finish(record, metrics, self.usage)
            raise
        return observed

    def _probe(self, environ: WSGIEnvironment, start_response: StartResponse, record: RequestRecord,
               exact: tuple[str, Route], state: _ProcessState) -> t.Iterable[bytes]:
        """``/health`` and ``/metrics``: answered whole, then counted once."""
        metrics = state.metrics
        metrics.probe_started()
        request_id = record.request_id

        def start_with_id(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
            record.status = int(status[:3])
            headers.append(("X-Request-Id", request_id))
            return start_response(status, headers, exc_info)

        try:
            response = self._respond(environ, record, exact, state)
            body: t.Iterable[bytes] = response(environ, start_with_id)
        except BaseException:
            record.status = record.status or 500
            raise
        finally:
            try:
                metrics.probe_done(record)
            except Exception:
                log.exception("recording request %s failed", request_id)
            REQUEST_ID.set(None)
        return body

    def _respond(self, environ: WSGIEnvironment, record: RequestRecord, exact: tuple[str, Route] | None,
                 state: _ProcessState) -> t.Any:
        request_id = record.request_id
        try:
            if exact is not None:
                (endpoint, route), args = exact, _NO_ARGS
            else:
                endpoint, args = _match(environ)
                route = ROUTES[endpoint]
            environ[FACE_KEY] = route.face
            record.endpoint = endpoint
            record.key_id = self.keys.check(environ) if route.authenticated else "-"
            call = Call(environ, self.settings, state.catalog, state.client, record, args)
            return route.handler(call)
        except ApiError as exc:
            return exc.detached()
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


@functools.cache
def url_map() -> Map:
    """werkzeug's map of :data:`RULES`, built (and werkzeug imported) once per process, on first need."""
    from werkzeug.routing import Map, Rule

    return Map([Rule(path, endpoint=endpoint, methods=list(methods)) for path, endpoint, methods in RULES],
               strict_slashes=False, merge_slashes=False)


def _match(environ: WSGIEnvironment) -> tuple[str, t.Mapping[str, str]]:
    """Route a request the exact-route table does not know with werkzeug: (endpoint, arguments).

    :raises ApiError: 405 (with ``Allow``) for a known path and another method, 404 for an unknown path.
    """
    routes = url_map()
    from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

    try:
        endpoint, args = routes.bind_to_environ(environ).match()
    except MethodNotAllowed as exc:
        allowed = ", ".join(exc.valid_methods or ())
        raise ApiError(405, f"Method {environ.get('REQUEST_METHOD')} is not allowed here; use {allowed}.",
                       headers={"Allow": allowed}) from None
    except NotFound:
        path = environ.get("PATH_INFO", "")
        raise ApiError(404, f"Unknown path {path!r}; this proxy serves /v1/chat/completions, "
                       "/v1/embeddings, /v1/models, /v1/messages, /v1/messages/count_tokens and /health.",
                       code="unknown_url") from None
    except HTTPException as exc:
        raise ApiError(exc.code or 400, exc.description or exc.name) from None
    return t.cast(str, endpoint), args


class _ObservedBody:
    """The response as the server sees it: adds the request id header, notes the status and the
    first byte; ``close()`` reports the request. One object per request, no closures.

    Iterated, or pushed by a server that can (:class:`~wsgiproxy.streaming.Pushable`, when the body
    is). A ``close()`` while the body was still being sent means the client went away.
    """

    __slots__ = ("body", "over", "_record", "_metrics", "_usage", "_start_response", "_chunks", "_pushed",
                 "_complete", "_failed", "_closed")

    def __init__(self, record: RequestRecord, metrics: Metrics, usage: UsageLog, start_response: StartResponse) -> None:
        self.body: t.Iterable[bytes] = ()
        self.over = False
        self._record = record
        self._metrics = metrics
        self._usage = usage
        self._start_response = start_response
        self._chunks: t.Generator[bytes, None, None] | None = None
        self._pushed: Pushable | None = None
        self._complete = False
        self._failed = False
        self._closed = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
        """What the endpoint's response calls: the server's ``start_response`` plus ``X-Request-Id``."""
        record = self._record
        record.status = int(status[:3])
        headers.append(("X-Request-Id", record.request_id))
        return self._start_response(status, headers, exc_info)

    def __iter__(self) -> t.Iterator[bytes]:
        if self._chunks is None:
            self._chunks = self._relay()
        return self._chunks

    def _relay(self) -> t.Generator[bytes, None, None]:
        chunks = iter(self.body)
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

    # --- Pushable, when the body is -------------------------------------------------------------

    def upstream(self) -> tuple[socket.socket, float] | None:
        upstream = getattr(self.body, "upstream", None)
        if upstream is None or self._chunks is not None:
            return None
        found: tuple[socket.socket, float] | None = upstream()
        if found is not None:
            self._pushed = t.cast("Pushable", self.body)
        return found

    def step(self) -> bytes:
        return self._pushed_bytes(False)

    def expire(self) -> bytes:
        return self._pushed_bytes(True)

    def _pushed_bytes(self, expired: bool) -> bytes:
        body = self._pushed
        assert body is not None, "upstream() first"
        try:
            data = body.expire() if expired else body.step()
        except Exception:
            self._failed = self.over = True
            raise
        if data and self._record.first_byte is None:
            self._record.first_byte = time.perf_counter()
        if body.over:
            self._complete = self.over = True
        return data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        record = self._record
        try:
            if self._chunks is not None:
                self._chunks.close()
            if self._chunks is not None or self._pushed is not None:
                record.disconnected = not (self._complete or self._failed)
            close = getattr(self.body, "close", None)
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


def create_app(settings: Settings | None = None, *, transport: Transport | None = None) -> WsgiProxy:
    """Build the WSGI app; settings default to :func:`~wsgiproxy.config.load_settings`."""
    settings = settings or load_settings()
    logging.getLogger("wsgiproxy").setLevel(settings.log_level)
    return WsgiProxy(settings, transport)
