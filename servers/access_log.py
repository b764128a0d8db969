"""A cheaper gunicorn access log with the same lines: ``logger_class`` in ``conf/gunicorn.conf.py``.

Gunicorn's own ``Logger.access`` builds, for every request, a dict of every atom plus every
request header, response header and environ variable (``Logger.atoms``), copies it into a
``SafeAtoms`` (escaping every string), %-formats the configured format against it, and hands
the result to ``logging`` (a LogRecord, the handler's lock, its formatter, write, flush).

``FastAccessLogger.access`` writes the same bytes for less:

* the configured ``access_log_format`` is read once (per ``setup``, which a HUP reload runs) for
  the atoms it names; a request computes only those, with gunicorn's rules (``"`` escaped as
  ``\\"`` in strings, ``-`` for an absent header or an unknown atom, header and environ names
  matched case-insensitively, the last of several equal names wins) and formats the same format
  string against a plain dict, so flags, widths and conversions behave exactly as before;
* ``%(t)s`` is formatted once per second, not per request;
* when the access log's handlers are gunicorn's own stream or file handlers with its
  ``%(message)s`` formatter, the line goes straight to the stream under the handler's lock,
  as ``logging`` would write it; other stock gunicorn handlers (syslog) get ``info(line)``;
  anything configured by hand (logconfig, dictConfig, extra handlers or filters) gets the
  parent's ``access`` unchanged, because its formatters may read the record's atoms.

Anything unusual (a format with a positional ``%s``, an error while formatting, a request
missing what gunicorn reads on every request) is handed to the parent's ``access``, so its
behaviour, error messages included, is gunicorn's. The streams are looked up on every write,
so USR1 (``reopen_files``) needs nothing special; the cached handler check is reset anyway.

In a gevent worker the lines of one turn of the event loop are written together, in order,
with one lock, one ``write`` and one flush, when the loop turns (the way nginx's ``access_log
... buffer=`` works, without its timer): under load that is tens of lines per write instead of a
lock, a write and a flush per request (about 18 µs of CPU per request with `make bench`'s 64
clients). A line waits at most for the requests the loop is serving in that turn. ``flush_access``
writes what is pending; the ``worker_exit`` hook and ``reopen_files`` call it, so only a worker
killed outright can lose the lines of its last turn.
"""

from __future__ import annotations

import logging
import os
import re
import time
import typing as t

from gunicorn.glogging import Logger

from wsgiproxy.turns import TurnBuffer

Getter = t.Callable[[t.Any, t.Any, t.Any, t.Any], object]
# (how, the handlers seen, for "direct": (handler, is a FileHandler, its formatter) each)
Sinks = tuple[str, list[logging.Handler], list[tuple[logging.Handler, bool, t.Any]]]

_INFO = logging.INFO
_GUNICORN_TIME = "[%d/%b/%Y:%H:%M:%S %z]"  # Logger.now()
# After "%(key)": flags, width, precision, length modifier, conversion (CPython's printf-style syntax).
_SPEC_TAIL = re.compile(r"[-+ #0]*(?:\d+|\*)?(?:\.(?:\d+|\*)?)?[hlL]?[diouxXeEfFgGcrsa]")
_MESSAGE_ONLY = "%(message)s"

_DIRECT = "direct"  # write to the handlers' streams
_INFO_LINE = "info"  # self.access_log.info(line)
_PARENT = "parent"  # Logger.access


def format_keys(fmt: str) -> list[str] | None:
    """The mapping keys ``fmt % mapping`` looks up, in order; None if it needs more than a mapping.

    Parses like CPython's ``str.__mod__``: ``%%`` is a literal, a key may hold balanced
    parentheses. A specifier without a key (``%s``) would format the whole atoms dict, and a
    malformed one raises: both are left to gunicorn's own code.
    """
    keys: list[str] = []
    length = len(fmt)
    i = fmt.find("%")
    while i >= 0:
        i += 1
        if i < length and fmt[i] == "%":
            i = fmt.find("%", i + 1)
            continue
        if i >= length or fmt[i] != "(":
            return None
        depth, j = 1, i + 1
        while depth and j < length:
            if fmt[j] == "(":
                depth += 1
            elif fmt[j] == ")":
                depth -= 1
            j += 1
        if depth:
            return None
        tail = _SPEC_TAIL.match(fmt, j)
        if tail is None:
            return None
        keys.append(fmt[i + 1:j - 1])
        i = fmt.find("%", tail.end())
    return keys


def _esc(value: object) -> object:
    """SafeAtoms: strings get their double quotes backslash-escaped; other values stay as they are."""
    return value.replace('"', '\\"') if isinstance(value, str) else value


def _header_items(headers: t.Any) -> t.Any:
    if hasattr(headers, "items"):
        return headers.items()
    return headers


def _last_named(name: str, items: t.Callable[[t.Any, t.Any, t.Any], t.Iterable[tuple[str, object]]]) -> Getter:
    """The last of ``items`` whose key is ``name`` (any case), escaped; ``-`` when there is none."""
    def get(resp: t.Any, req: t.Any, environ: t.Any, request_time: t.Any) -> object:
        value: object = "-"
        for key, item in items(resp, req, environ):
            if key.lower() == name:
                value = item
        return _esc(value)
    return get


def _request_headers(resp: t.Any, req: t.Any, environ: t.Any) -> t.Iterable[tuple[str, object]]:
    return _header_items(req.headers if hasattr(req, "headers") else req)


def _response_headers(resp: t.Any, req: t.Any, environ: t.Any) -> t.Iterable[tuple[str, object]]:
    return _header_items(resp.headers)


def _environ_items(resp: t.Any, req: t.Any, environ: t.Any) -> t.Iterable[tuple[str, object]]:
    return t.cast("t.Iterable[tuple[str, object]]", environ.items())


def _status(resp: t.Any) -> object:
    status = resp.status
    if isinstance(status, str):
        return _esc(status.split(None, 1)[0])
    return status


def _bytes_or_dash(resp: t.Any) -> object:
    sent = getattr(resp, "sent", None)
    return _esc(sent is not None and str(resp.sent) or "-")


# Each atom of Logger.atoms as an expression over resp, req, environ and request_time (and the
# helpers in _HELPERS): compiled into one function per format, so a line costs no call per atom.
_FIXED: dict[str, str] = {
    "h": "_esc(environ.get('REMOTE_ADDR', '-'))",
    "l": "'-'",
    "r": "_esc(f\"{environ['REQUEST_METHOD']!s} {environ['RAW_URI']!s} {environ['SERVER_PROTOCOL']!s}\")",
    "s": "_status(resp)",
    "m": "_esc(environ.get('REQUEST_METHOD'))",
    "U": "_esc(environ.get('PATH_INFO'))",
    "q": "_esc(environ.get('QUERY_STRING'))",
    "H": "_esc(environ.get('SERVER_PROTOCOL'))",
    "b": "_bytes_or_dash(resp)",
    "B": "_esc(getattr(resp, 'sent', None))",
    "f": "_esc(environ.get('HTTP_REFERER', '-'))",
    "a": "_esc(environ.get('HTTP_USER_AGENT', '-'))",
    "T": "request_time.seconds",
    "D": "request_time.seconds * 1000000 + request_time.microseconds",
    "M": "request_time.seconds * 1000 + int(request_time.microseconds / 1000)",
    "L": "'%d.%06d' % (request_time.seconds, request_time.microseconds)",  # gunicorn's exact rule
    "p": "f'<{_getpid()}>'",
}
_HELPERS = {"_esc": _esc, "_status": _status, "_bytes_or_dash": _bytes_or_dash, "_getpid": os.getpid}


def compile_line(fmt: str, atoms: dict[str, str | Getter]) -> Getter:
    """``fmt % {key: atom}`` as one function of (resp, req, environ, request_time).

    Each atom is the source of an expression (see :data:`_FIXED`) or a getter called with the four.
    """
    namespace: dict[str, t.Any] = {**_HELPERS, "_format": fmt}
    items = []
    for number, (key, atom) in enumerate(atoms.items()):
        if not isinstance(atom, str):
            namespace[f"_get{number}"] = atom
            atom = f"_get{number}(resp, req, environ, request_time)"
        items.append(f"{key!r}: {atom}")
    source = f"def line(resp, req, environ, request_time):\n    return _format % {{{', '.join(items)}}}\n"
    exec(compile(source, "<access_log_format>", "exec"), namespace)  # noqa: S102 - keys are repr()s, atoms ours
    return t.cast(Getter, namespace["line"])


class FastAccessLogger(Logger):  # type: ignore[misc]  # gunicorn ships no type information
    """``gunicorn.glogging.Logger`` with a cheaper ``access``; the lines are byte for byte the same."""

    def setup(self, cfg: t.Any) -> None:
        self._plan: Getter | None = None  # the compiled line of the format
        self._plan_ok = True
        self._format = ""
        self._sinks: Sinks | None = None
        self._clock: tuple[int, str] = (-1, "")
        self._turn = TurnBuffer(self._write_lines)
        super().setup(cfg)

    def reopen_files(self) -> None:
        self.flush_access()
        super().reopen_files()
        self._sinks = None  # streams are read per write anyway; re-check the handlers too

    def flush_access(self) -> None:
        """Write the access lines still waiting for the event loop to turn."""
        self._turn.flush()

    def _write_lines(self, lines: list[str]) -> None:
        mode, _, direct = self._fresh_sinks()
        if mode != _DIRECT:
            for line in lines:  # the handlers changed since: one record each, the slow way
                self.access_log.info(line)
            return
        _write_direct(direct, lines)

    def _fresh_sinks(self) -> Sinks:
        """Where lines go: the cached answer, worked out again when the access logger changed."""
        log = self.access_log
        sinks = self._sinks
        if sinks is None or log.handlers != sinks[1] or log.propagate or log.filters:
            sinks = self._sinks = self._resolve_sinks()
        return sinks

    # -- the line ------------------------------------------------------------------------

    def _compile(self) -> Getter | None:
        """The line of the format, computing only the atoms it reads; None: leave it to the parent."""
        self._format = self.cfg.access_log_format
        keys = format_keys(self._format)
        if keys is None:
            return None
        plan: dict[str, str | Getter] = {}
        for key in keys:
            if key in plan:
                continue
            if key.startswith("{"):
                lowered = key.lower()
                name, kind = lowered[1:-2], lowered[-2:]
                if kind == "}i":
                    plan[key] = _last_named(name, _request_headers)
                elif kind == "}o":
                    plan[key] = _last_named(name, _response_headers)
                elif kind == "}e":
                    plan[key] = _last_named(name, _environ_items)
                else:
                    plan[key] = "'-'"
            elif key == "t":
                standard = getattr(self.now, "__func__", None) is Logger.now
                plan[key] = self._time_atom if standard else self._now_atom
            elif key == "u":
                plan[key] = self._user_atom
            else:
                plan[key] = _FIXED.get(key) or "'-'"
        return compile_line(self._format, plan)

    def _time_atom(self, resp: t.Any, req: t.Any, environ: t.Any, request_time: t.Any) -> object:
        """``Logger.now()``, formatted once per second."""
        second = int(time.time())
        cached_second, text = self._clock
        if second != cached_second:
            text = _esc(time.strftime(_GUNICORN_TIME, time.localtime(second)))  # type: ignore[assignment]
            self._clock = (second, text)
        return text

    def _now_atom(self, resp: t.Any, req: t.Any, environ: t.Any, request_time: t.Any) -> object:
        return _esc(self.now())  # a subclass (or a test) replaced now(): ask it every time

    def _user_atom(self, resp: t.Any, req: t.Any, environ: t.Any, request_time: t.Any) -> object:
        return _esc(self._get_user(environ) or "-")

    def access_line(self, resp: t.Any, req: t.Any, environ: t.Any, request_time: t.Any) -> str | None:
        """The access log line for this request (no newline); None if the parent must handle it."""
        plan = self._plan
        if plan is None:
            if not self._plan_ok:
                return None
            plan = self._compile()
            if plan is None:
                self._plan_ok = False
                return None
            self._plan = plan
        try:
            # What Logger.atoms reads for every request, whatever the format: if that fails, the
            # parent logs its error and no line, and so must this logger.
            status = resp.status
            if isinstance(status, str) and not status.split(None, 1):
                return None
            _read = (environ["REQUEST_METHOD"], environ["RAW_URI"], environ["SERVER_PROTOCOL"],
                     request_time.seconds, request_time.microseconds)
            line = t.cast(str, plan(resp, req, environ, request_time))
        except Exception:
            return None
        return line

    # -- where it goes -------------------------------------------------------------------

    def _resolve_sinks(self) -> Sinks:
        log = self.access_log
        handlers = list(log.handlers)
        if log.propagate or log.filters:
            return _PARENT, handlers, []
        direct: list[tuple[logging.Handler, bool, t.Any]] = []
        for handler in handlers:
            if handler.filters:
                return _PARENT, handlers, []
            formatter = handler.formatter or logging._defaultFormatter
            if type(formatter) is not logging.Formatter or type(formatter._style) is not logging.PercentStyle:
                return _PARENT, handlers, []
            fmt = formatter._style._fmt
            plain = type(handler) in (logging.StreamHandler, logging.FileHandler) and fmt == _MESSAGE_ONLY
            if not plain:
                # gunicorn's own syslog handler: its format uses the message, never msg or args.
                if not getattr(handler, "_gunicorn", False) or "%(msg)" in fmt or "%(args)" in fmt:
                    return _PARENT, handlers, []
                direct = []
                break
            direct.append((handler, isinstance(handler, logging.FileHandler), handler.formatter))
        else:
            return _DIRECT, handlers, direct
        return _INFO_LINE, handlers, []

    def access(self, resp: t.Any, req: t.Any, environ: t.Any, request_time: t.Any) -> None:
        if not self.access_log_enabled:
            return
        log = self.access_log
        mode, _, direct = self._fresh_sinks()
        if mode == _PARENT:
            super().access(resp, req, environ, request_time)
            return
        if not log.isEnabledFor(_INFO):
            return
        line = self.access_line(resp, req, environ, request_time)
        if line is None:
            super().access(resp, req, environ, request_time)
            return
        if mode == _INFO_LINE:
            log.info(line)
            return
        for handler, _is_file, formatter in direct:
            if handler.formatter is not formatter or handler.filters:
                self._sinks = None  # changed since the check: this line and later ones the slow way
                self.flush_access()
                super().access(resp, req, environ, request_time)
                return
        self._turn.add(line)


def _write_direct(direct: list[tuple[logging.Handler, bool, t.Any]], lines: list[str]) -> None:
    """The lines, in one write, to each handler whose level lets INFO through."""
    for handler, is_file, _formatter in direct:
        if _INFO >= handler.level:
            _write(handler, is_file, handler.terminator.join(lines))


def _write(handler: t.Any, is_file: bool, line: str) -> None:
    """What ``Handler.handle`` then ``StreamHandler.emit`` (``FileHandler.emit``) do with the message."""
    lock = handler.lock
    if lock is not None:
        lock.acquire()
    try:
        if is_file and handler.stream is None and (handler.mode != "w" or not handler._closed):
            handler.stream = handler._open()
        stream = handler.stream
        if stream or not is_file:
            stream.write(line + handler.terminator)
            if stream and hasattr(stream, "flush"):
                stream.flush()
    except RecursionError:
        raise
    except Exception:
        handler.handleError(logging.LogRecord("gunicorn.access", _INFO, __file__, 0, line, None, None))
    finally:
        if lock is not None:
            lock.release()
