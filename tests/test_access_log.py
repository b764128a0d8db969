"""servers.access_log.FastAccessLogger writes exactly the lines gunicorn's own Logger.access writes.

Both loggers share the ``gunicorn.access`` logger (gunicorn configures it globally), so each
comparison sends one request through the stock logger and then through the fast one, into the
same handler, and compares what arrived.
"""

from __future__ import annotations

import ast
import base64
import datetime
import io
import logging
import os
import socket
import sys
import time
import typing as t
from pathlib import Path

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from servers import access_log
from servers.access_log import FastAccessLogger, format_keys
from tests._stack import ROOT, python_child

SHIPPED = ast.literal_eval(next(
    line.split("=", 1)[1].strip() for line in (ROOT / "conf" / "gunicorn.conf.py").read_text().splitlines()
    if line.startswith("access_log_format =")))
EVERY_ATOM = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(m)s %(U)s %(q)s %(H)s %(b)s %(B)s %(f)s "%(a)s" ' \
             '%(T)s %(D)s %(M)s %(L)s %(p)s'
FORMATS = [
    SHIPPED,
    Config().access_log_format,  # gunicorn's default
    EVERY_ATOM,
    "%({x-request-id}o)s %({X-Request-Id}O)s %({user-agent}i)s %({Content-Type}i)s %({missing}i)s "
    "%({remote_addr}e)s %({HTTP_HOST}e)s %({wsgi.version}e)s %({nothere}e)s %({bad})s %({)s %(Z)s %()s",
    "%(D)d %(D)10d|%(h)-15s|%(T)03d %(L).3s %(s)r %(b)5s %%literal 100%% %(B)s %(a)a %(D)x %(D).2f %(m)s%(m)s",
    "%({a(b)}i)s %({x-dup}o)s %({x-dup}i)s",
    "%({x\\'\"y}i)s %({'}o)s %({\\n}e)s %({__import__('os')}i)s",  # keys are data in the compiled line, never code
    "plain text, no atoms",
    "",
]


class Resp:
    def __init__(self, status: object = "200 OK", headers: object = None, sent: object = 812) -> None:
        self.status = status
        self.headers = [("Content-Type", "application/json"), ("Content-Length", "812"),
                        ("X-Request-Id", "4f1c2b7a9e0d"), ("Server", "gunicorn")] if headers is None else headers
        if sent is not ...:
            self.sent = sent


class Req:
    def __init__(self, headers: object = None) -> None:
        self.headers = [("HOST", "127.0.0.1:3001"), ("USER-AGENT", "OpenAI/Python 1.51.0"),
                        ("CONTENT-TYPE", "application/json"), ("AUTHORIZATION", "Bearer sk-x")] if headers is None \
            else headers


def environ(**changes: object) -> dict[str, object]:
    env: dict[str, object] = {
        "wsgi.version": (1, 0), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http", "SERVER_SOFTWARE": "gunicorn",
        "REQUEST_METHOD": "POST", "QUERY_STRING": "", "RAW_URI": "/v1/chat/completions", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:3001", "HTTP_USER_AGENT": "OpenAI/Python 1.51.0", "CONTENT_TYPE": "application/json",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "51234", "PATH_INFO": "/v1/chat/completions", "SCRIPT_NAME": "",
    }
    for key, value in changes.items():
        if value is ...:
            env.pop(key, None)
        else:
            env[key] = value
    return env


B64 = base64.b64encode(b"alice:pw").decode()
ELAPSED = datetime.timedelta(seconds=2, microseconds=345678)
CASES: list[tuple[str, Resp, object, dict[str, object], datetime.timedelta]] = [
    ("plain", Resp(), Req(), environ(), ELAPSED),
    ("quotes-non-ascii", Resp(headers=[("X-Request-Id", 'id"1ü')]),
     Req([("USER-AGENT", 'Mozilla "quoted" 日本'), ("X-DUP", "a")]),
     environ(RAW_URI='/v1/ch"at?q=ü"x', PATH_INFO='/v1/ch"at', QUERY_STRING='q=ü"x',
             HTTP_USER_AGENT='Mozilla "quoted" 日本', HTTP_REFERER='http://x/"r"'), ELAPSED),
    ("missing", Resp(sent=None, headers=[]), Req([]),
     environ(REMOTE_ADDR=..., HTTP_USER_AGENT=..., PATH_INFO=..., QUERY_STRING=..., HTTP_HOST=...),
     datetime.timedelta(0)),
    ("no-sent-attribute", Resp(sent=...), Req(), environ(), ELAPSED),
    ("int-status", Resp(status=404, sent=0), Req(), environ(REQUEST_METHOD="GET"), datetime.timedelta(days=3)),
    ("status-words", Resp(status="503 Service Unavailable"), Req(), environ(), datetime.timedelta(microseconds=999)),
    ("duplicates", Resp(headers=[("x-dup", "1"), ("X-Dup", "2"), ("X-REQUEST-ID", "a"), ("x-request-id", "b")]),
     Req([("X-DUP", "1"), ("x-dup", "2")]), environ(**{"REMOTE_addr": "10.0.0.9"}), ELAPSED),
    ("basic-user", Resp(), Req(), environ(HTTP_AUTHORIZATION=f"Basic {B64}"), ELAPSED),
    ("bad-basic-user", Resp(), Req(), environ(HTTP_AUTHORIZATION="Basic !!!"), ELAPSED),
    ("pywsgi-style-request", Resp(headers={"X-Request-Id": "d1"}), [("User-Agent", "ua"), ("A(B)", "paren")],
     environ(), ELAPSED),
    ("dict-request-headers", Resp(), {"X-Dup": "dict", "User-Agent": "ua2"}, environ(), ELAPSED),
    ("bytes-sent-str", Resp(sent='1"2'), Req(), environ(), ELAPSED),
]


def gunicorn_handler() -> t.Any:
    """gunicorn's stream or file handler on the access log, if there is one."""
    for handler in logging.getLogger("gunicorn.access").handlers:
        if getattr(handler, "_gunicorn", False) and type(handler) in (logging.StreamHandler, logging.FileHandler):
            return handler
    return None


class Pair:
    """A stock and a fast logger on one configuration, writing into one buffer."""

    def __init__(self, fmt: str, now: t.Callable[[], str] | None = None, **settings: object) -> None:
        cfg = Config()
        cfg.set("accesslog", "-")
        cfg.set("access_log_format", fmt)
        for name, value in settings.items():
            cfg.set(name, value)
        self.stock = Logger(cfg)
        self.fast = FastAccessLogger(cfg)
        if now is not None:
            self.stock.now = self.fast.now = now
        self.buffer = io.StringIO()
        if cfg.accesslog == "-" and gunicorn_handler() is not None:
            gunicorn_handler().setStream(self.buffer)

    def line(self, logger: Logger, *request: t.Any) -> str:
        self.buffer.seek(0)
        self.buffer.truncate()
        logger.access(*request)
        return self.buffer.getvalue()

    def both(self, *request: t.Any) -> tuple[str, str]:
        for _ in range(5):  # the same second for both (and clear of the coarse clock's lag)
            if 0.05 < time.time() % 1 < 0.8:
                break
            time.sleep(0.1)
        return self.line(self.stock, *request), self.line(self.fast, *request)


@pytest.fixture(autouse=True)
def _restore_access_logger() -> t.Iterator[None]:
    log = logging.getLogger("gunicorn.access")
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    yield
    log.handlers[:] = handlers
    log.setLevel(level)
    log.propagate = propagate
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fast_line_equals_stock_line(fmt: str, case: tuple[str, Resp, object, dict[str, object], t.Any]) -> None:
    pair = Pair(fmt)
    stock, fast = pair.both(*case[1:])
    assert fast == stock
    assert stock.endswith("\n")
    assert pair.fast._sinks is not None and pair.fast._sinks[0] == "direct"


@pytest.mark.parametrize("fmt", FORMATS[:3])
def test_fixed_clock_and_replaced_now(fmt: str) -> None:
    pair = Pair(fmt, now=lambda: '[01/Jan/2024:00:00:00 +0000] "q"')
    stock, fast = pair.both(*CASES[0][1:])
    assert fast == stock
    assert '[01/Jan/2024:00:00:00 +0000] \\"q\\"' in fast or "%(t)s" not in fmt


def test_time_atom_is_formatted_once_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = Pair("%(t)s").fast
    clock = [1_700_000_000.25]
    monkeypatch.setattr(access_log.time, "time", lambda: clock[0])
    for tick in (0.0, 0.5, 0.7, 1.0, 86400.3, 86400.9):
        clock[0] = 1_700_000_000.25 + tick
        expected = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(int(clock[0])))
        assert fast.access_line(Resp(), Req(), environ(), ELAPSED) == expected


@pytest.mark.parametrize("fmt", ["%s %(h)s", "bad %", "%(h", "%(h)*s", "%(h)y", "%(a)d", "%(D)c"])
def test_formats_left_to_gunicorn(fmt: str) -> None:
    pair = Pair(fmt)
    stock, fast = pair.both(*CASES[0][1:])
    assert fast == stock


def test_requests_gunicorn_cannot_log_are_left_to_it() -> None:
    pair = Pair("%(h)s")  # the request line is not in the format; gunicorn reads it all the same
    for request, error in [((Resp(), Req(), environ(RAW_URI=...), ELAPSED), KeyError),
                           ((Resp(status=""), Req(), environ(), ELAPSED), IndexError)]:
        for logger in (pair.stock, pair.fast):
            with pytest.raises(error):
                logger.access(*request)
        assert pair.buffer.getvalue() == ""


def test_format_keys() -> None:
    assert format_keys(SHIPPED) == ["h", "t", "r", "s", "b", "D", "a", "{x-request-id}o"]
    assert format_keys("%%(h)s %({a(b)}i)-3s 100%%") == ["{a(b)}i"]
    assert format_keys("%s") is None and format_keys("%(h)") is None and format_keys("x %") is None


def test_file_log_and_usr1_reopen(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    pair = Pair(SHIPPED, accesslog=str(path))
    request = CASES[0][1:]
    pair.stock.access(*request)
    pair.fast.access(*request)
    first, second = path.read_text().splitlines()
    assert first.split(" ", 3)[3] == second.split(" ", 3)[3]  # all but the time, which may have ticked
    path.rename(tmp_path / "access.log.1")
    pair.fast.reopen_files()  # what USR1 runs in each worker
    pair.fast.access(*request)
    assert path.read_text().endswith("rid=4f1c2b7a9e0d\n") and len(path.read_text().splitlines()) == 1
    # a reopen done behind the logger's back (another Logger instance) is followed as well
    path.rename(tmp_path / "access.log.2")
    pair.stock.reopen_files()
    pair.fast.access(*request)
    assert len(path.read_text().splitlines()) == 1
    assert [len((tmp_path / f"access.log.{n}").read_text().splitlines()) for n in (1, 2)] == [2, 1]


def test_access_log_off_costs_nothing() -> None:
    cfg = Config()
    cfg.set("access_log_format", SHIPPED)
    fast = FastAccessLogger(cfg)
    assert cfg.accesslog is None and not logging.getLogger("gunicorn.access").handlers
    fast.access(Resp(), Req(), environ(), ELAPSED)
    assert fast._sinks is None and fast._plan is None


def test_handler_level_and_logging_disable() -> None:
    pair = Pair(SHIPPED)
    gunicorn_handler().setLevel(logging.WARNING)
    assert pair.both(*CASES[0][1:]) == ("", "")
    gunicorn_handler().setLevel(logging.NOTSET)
    logging.disable(logging.INFO)
    assert pair.both(*CASES[0][1:]) == ("", "")


def test_custom_handlers_get_gunicorns_record() -> None:
    """A handler added by hand may read the atoms from record.args: the parent's access serves it."""
    pair = Pair(SHIPPED)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logging.getLogger("gunicorn.access").addHandler(Keep())
    stock, fast = pair.both(*CASES[0][1:])
    assert fast == stock and fast
    assert pair.fast._sinks is not None and pair.fast._sinks[0] == "parent"
    assert [r.args["h"] for r in records] == ["127.0.0.1", "127.0.0.1"]  # type: ignore[call-overload, index]
    # a formatter swapped on gunicorn's handler after the first line is noticed too
    gunicorn_handler().setFormatter(logging.Formatter("X %(message)s"))
    logging.getLogger("gunicorn.access").handlers.pop()
    stock, fast = pair.both(*CASES[0][1:])
    assert fast == stock and fast.startswith("X ")


def test_logconfig_dict_is_left_to_gunicorn() -> None:
    pair = Pair(SHIPPED, logconfig_dict={"root": {"level": "CRITICAL", "handlers": []}})
    pair.fast.access(*CASES[0][1:])
    assert pair.fast._sinks is not None and pair.fast._sinks[0] == "parent"


@pytest.mark.parametrize("redirect", [True, False])
def test_syslog(redirect: bool) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    try:
        pair = Pair(SHIPPED, now=lambda: "[fixed]", syslog=True,
                    syslog_addr=f"udp://127.0.0.1:{receiver.getsockname()[1]}",
                    disable_redirect_access_to_syslog=not redirect)
        request = CASES[1][1:]
        stock, fast = pair.both(*request)
        assert fast == stock and 'rid=id\\"1ü' in fast
        if redirect:
            datagrams = [receiver.recv(65536) for _ in range(2)]
            assert datagrams[0] == datagrams[1] and b"gunicorn." in datagrams[0]
            assert datagrams[0].endswith(fast.rstrip("\n").encode()) or fast.rstrip("\n").encode() in datagrams[0]
            assert pair.fast._sinks is not None and pair.fast._sinks[0] == "info"
        else:
            assert pair.fast._sinks is not None and pair.fast._sinks[0] == "direct"
    finally:
        receiver.close()
        for name in ("gunicorn.access", "gunicorn.error"):
            for handler in list(logging.getLogger(name).handlers):
                if isinstance(handler, logging.handlers.SysLogHandler):
                    handler.close()
                    logging.getLogger(name).removeHandler(handler)


def test_pid_atom_after_fork_is_the_childs() -> None:
    pair = Pair("%(p)s")
    assert pair.fast.access_line(Resp(), Req(), environ(), ELAPSED) == f"<{os.getpid()}>"


def test_reload_recompiles_the_format() -> None:
    pair = Pair("%(h)s")
    assert pair.both(*CASES[0][1:])[1] == "127.0.0.1\n"
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", "%(m)s %(U)s")
    pair.fast.setup(cfg)  # what a HUP runs
    gunicorn_handler().setStream(pair.buffer)
    assert pair.line(pair.fast, *CASES[0][1:]) == "POST /v1/chat/completions\n"


_BATCHED = r'''
from gevent import monkey
monkey.patch_all()
import io, os, sys
import gevent
sys.path.insert(0, os.getcwd())
from gunicorn.config import Config
from servers.access_log import FastAccessLogger
from tests.test_access_log import ELAPSED, Req, Resp, environ, gunicorn_handler

class Counting(io.StringIO):
    writes = 0
    def write(self, text):
        Counting.writes += 1
        return super().write(text)

cfg = Config()
cfg.set("accesslog", "-")
fast = FastAccessLogger(cfg)
out = Counting()
gunicorn_handler().setStream(out)
for path in ("/a", "/b", "/c"):
    fast.access(Resp(), Req(), environ(RAW_URI=path), ELAPSED)
print("before the loop turns:", repr(out.getvalue()))
gevent.sleep(0)
lines = out.getvalue().splitlines()
print("after:", [line.split('"')[1] for line in lines], "writes:", Counting.writes)
fast.access(Resp(), Req(), environ(RAW_URI="/d"), ELAPSED)
fast.flush_access()
print("flushed:", out.getvalue().splitlines()[-1].split('"')[1])
fast.access(Resp(), Req(), environ(RAW_URI="/e"), ELAPSED)
child = os.fork()
if child == 0:
    fast.flush_access()
    os._exit(0 if "/e" not in out.getvalue() else 1)
_, status = os.waitpid(child, 0)
print("child wrote the parent's line:", status != 0)
'''


def test_a_gevent_worker_writes_the_lines_of_one_loop_turn_at_once(tmp_path: Path) -> None:
    assert python_child(_BATCHED).splitlines() == [
        "before the loop turns: ''",
        "after: ['POST /a HTTP/1.1', 'POST /b HTTP/1.1', 'POST /c HTTP/1.1'] writes: 1",
        "flushed: POST /d HTTP/1.1",
        "child wrote the parent's line: False",
    ]


def test_the_worker_exit_hook_writes_the_pending_usage_and_access_lines() -> None:
    from servers import gunicorn_hooks
    from wsgiproxy.proxy import WsgiProxy

    calls: list[object] = []

    class Log:
        def flush_access(self) -> None:
            calls.append("access flushed")

        def warning(self, *args: object) -> None:
            calls.append(args)

    class App:  # what WsgiProxy.flush_logs is to the hook
        def flush_logs(self) -> None:
            calls.append("usage flushed")

    class Worker:
        log = Log()
        pid = 1
        wsgi = App()

    gunicorn_hooks.worker_exit(None, Worker())
    assert calls == ["usage flushed", "access flushed"]
    assert callable(WsgiProxy.flush_logs)
