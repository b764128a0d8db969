"""The usage log (one JSON line per request) and the request id on every app log line.

Where usage lines go is the ``usage_log`` tunable: ``-`` is stdout (next to gunicorn's access
log; usage lines are the ones that are JSON objects), ``off`` disables them, anything else is a
file path, reopened when logrotate moves it. They never mix into the error log. The probes
``/health`` and ``/metrics`` get no usage line.

While a request is served its id sits in a context variable (per thread under waitress, per
greenlet under gevent); :func:`add_request_id` appends `` rid=<id>`` to app log records, the
same form the access log uses, so every line about a request can be found by its id.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
import typing as t

from .turns import TurnBuffer

if t.TYPE_CHECKING:
    from .record import RequestRecord

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("wsgiproxy_request_id", default=None)
UNLOGGED_ENDPOINTS = frozenset({"health", "metrics"})



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


class UsageLog:
    """Where usage lines go: ``-`` (stdout), ``off``, or a file path.

    Not a logging handler: logging's record machinery cost about 40 us per line, one write
    about 3 us, and this runs for every request. Under gevent the lines of one turn of the event
    loop go out in one write (:class:`wsgiproxy.turns.TurnBuffer`). A file is opened with
    O_APPEND, so each write is of whole lines even with many workers appending, and it is
    reopened when logrotate has moved it (checked at most once a second).
    """

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.enabled = destination != "off"
        self._fd = -1
        self._identity = (0, 0)
        self._checked = 0.0
        self._turn = TurnBuffer(self._write_lines)
        if self.enabled and destination != "-":
            self._open()

    def _open(self) -> None:
        fd = os.open(self.destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        stat = os.fstat(fd)
        old, self._fd, self._identity = self._fd, fd, (stat.st_dev, stat.st_ino)
        if old >= 0:
            os.close(old)

    def write(self, record: RequestRecord) -> None:
        if not self.enabled or record.endpoint in UNLOGGED_ENDPOINTS:
            return
        if self._fd >= 0:
            now = record.ended or 0.0
            if now - self._checked > 1.0:
                self._checked = now
                self._reopen_if_moved()
        self._turn.add(usage_line(record, time.time()))

    def flush(self) -> None:
        """Write the lines still waiting for the event loop to turn (gunicorn's ``worker_exit``)."""
        self._turn.flush()

    def _write_lines(self, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n"
        try:
            if self._fd < 0:
                out = sys.stdout
                out.write(text)
                out.flush()
                return
            data = memoryview(text.encode())
            while data:
                data = data[os.write(self._fd, data):]
        except (OSError, ValueError):  # ValueError: stdout closed
            logging.getLogger("wsgiproxy").exception("writing %d usage lines to %s failed", len(lines),
                                                     self.destination)

    def _reopen_if_moved(self) -> None:
        try:
            stat = os.stat(self.destination)
        except FileNotFoundError:
            self._open()
            return
        if (stat.st_dev, stat.st_ino) != self._identity:
            self._open()

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.enabled = False


_string = json.encoder.encode_basestring_ascii  # the C escaper json.dumps uses for str
_last_second = (-1, "")  # the last whole second formatted, and its text: lines of one second share it


def _json(value: str | None) -> str:
    return "null" if value is None else _string(value)


def _number(value: float | None) -> str:
    return "null" if value is None else repr(value)


def usage_line(record: RequestRecord, now: float) -> str:
    """The JSON usage line of a finished request; ``now`` is the wall-clock end time.

    Formatted directly rather than through ``json.dumps`` of a dict (a third of the cost); the
    request id, key id and endpoint are from fixed alphabets, every other string is escaped.
    Milliseconds are rounded to one decimal as ``round(x, 1)`` would, without the float it makes.
    """
    started = record.started
    ended = record.ended or started
    duration = ended - started
    begun = now - duration
    global _last_second
    cached = _last_second  # one read: another thread may replace it meanwhile
    second = int(begun)
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    deployment = record.deployment
    first_byte = record.first_byte
    return (
        f'{{"time":"{cached[1]}.{int(begun % 1 * 1000):03d}Z","request_id":"{record.request_id}",'
        f'"key_id":"{record.key_id}","endpoint":"{record.endpoint}","model":{_json(record.model)},'
        f'"subaccount":{_json(deployment.subaccount.name if deployment is not None else None)},'
        f'"deployment":{_json(deployment.id if deployment is not None else None)},"status":{record.status},'
        f'"streamed":{"true" if record.streamed else "false"},"prompt_tokens":{_number(record.prompt_tokens)},'
        f'"completion_tokens":{_number(record.completion_tokens)},"duration_ms":{duration * 1000:.1f},'
        f'"ttfb_ms":{"null" if first_byte is None else f"{(first_byte - started) * 1000:.1f}"},'
        f'"disconnected":{"true" if record.disconnected else "false"}}}'
    )
