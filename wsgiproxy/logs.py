"""The usage log (one JSON line per request) and the request id on every app log line.

Usage lines go to the ``wsgiproxy.usage`` logger, which has its own handler and does not
propagate, so they never mix into the error log. Where they go is the ``usage_log`` tunable:
``-`` is stdout (next to gunicorn's access log), ``off`` disables them, anything else is a file
path, reopened when logrotate moves it. The probes ``/health`` and ``/metrics`` get no usage line.

While a request is served its id sits in a context variable (per thread under waitress, per
greenlet under gevent); :func:`add_request_id` appends `` rid=<id>`` to app log records, the
same form the access log uses, so every line about a request can be found by its id.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import sys
import time
import typing as t

if t.TYPE_CHECKING:
    from .record import RequestRecord

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("wsgiproxy_request_id", default=None)
UNLOGGED_ENDPOINTS = frozenset({"health", "metrics"})

usage_log = logging.getLogger("wsgiproxy.usage")
_HANDLER_NAME = "wsgiproxy-usage"  # marks the handler configure_usage_log installed


def add_request_id(record: logging.LogRecord) -> None:
    """Appends the current request's id to ``record`` once, whatever handler formats it."""
    request_id = REQUEST_ID.get()
    if request_id is not None and not hasattr(record, "request_id"):
        record.request_id = request_id
        record.msg = f"{record.msg} rid={request_id}"


class RequestIdFilter(logging.Filter):
    """For handlers of app records: see :func:`add_request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        add_request_id(record)
        return True


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stdout`` as it is at each record: servers and test runners swap it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def configure_usage_log(destination: str) -> None:
    """Send usage lines to ``destination``: ``-`` (stdout), ``off``, or a file path."""
    for installed in list(usage_log.handlers):
        if installed.get_name() == _HANDLER_NAME:
            usage_log.removeHandler(installed)
            installed.close()
    usage_log.propagate = False
    if destination == "off":
        usage_log.disabled = True
        return
    usage_log.disabled = False
    usage_log.setLevel(logging.INFO)  # independent of log_level: usage is data, not diagnostics
    handler: logging.Handler
    if destination == "-":
        handler = _StdoutHandler(sys.stdout)
    else:
        handler = logging.handlers.WatchedFileHandler(destination, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.set_name(_HANDLER_NAME)
    usage_log.addHandler(handler)


def usage_line(record: RequestRecord, now: float) -> str:
    """The JSON usage line of a finished request; ``now`` is the wall-clock end time."""
    started = record.started
    ended = record.ended or started
    duration = ended - started
    begun = now - duration
    deployment = record.deployment
    return json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(begun)) + f".{int(begun % 1 * 1000):03d}Z",
        "request_id": record.request_id,
        "key_id": record.key_id,
        "endpoint": record.endpoint,
        "model": record.model,
        "subaccount": deployment.subaccount.name if deployment is not None else None,
        "deployment": deployment.id if deployment is not None else None,
        "status": record.status,
        "streamed": record.streamed,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "duration_ms": round(duration * 1000, 1),
        "ttfb_ms": None if record.first_byte is None else round((record.first_byte - started) * 1000, 1),
        "disconnected": record.disconnected,
    }, separators=(",", ":"))


def write_usage(record: RequestRecord) -> None:
    if record.endpoint in UNLOGGED_ENDPOINTS or usage_log.disabled or not usage_log.handlers:
        return
    usage_log.info(usage_line(record, time.time()))
