"""Gunicorn server hooks for wsgiproxy, installed by ``conf/gunicorn.conf.py``.

Which process runs each hook, and when (gunicorn 27, ops-notes §1.1):

=================  ======  ===============================================================
hook               runs in when
=================  ======  ===============================================================
on_starting        master  once, after the pidfile is written, before listening or forking
when_ready         master  listening; before the first worker is forked
on_reload          master  SIGHUP, after the config file was re-executed, before new workers
post_worker_init   worker  after gevent patched and the app loaded
worker_int         worker  SIGINT/SIGQUIT (quick shutdown)
worker_abort       worker  SIGABRT: the master's WORKER TIMEOUT kill
child_exit         master  after a worker was reaped, SIGKILLed ones included
=================  ======  ===============================================================

Rules: no import of gunicorn here (the server objects come in as arguments), no upstream
I/O anywhere (a socket opened before the fork is blocking and shared by every worker), and
nothing slow in a worker hook.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
import typing as t

# gunicorn ships no type information; these name what the hooks receive.
Arbiter = t.Any  # gunicorn.arbiter.Arbiter: the master
Worker = t.Any  # gunicorn.workers.base.Worker: a worker, in its own process


def on_starting(server: Arbiter) -> None:
    """Validate the configuration before anything listens or forks.

    With ``preload_app`` the app import has already done this (a bad config ends gunicorn
    with the app's one-line message before this hook); without it, this is the only check
    that runs in the master, and it keeps a bad config from becoming a worker boot loop.
    """
    from wsgiproxy.config import load_settings
    from wsgiproxy.errors import ConfigError

    try:
        settings = load_settings()
    except ConfigError as exc:
        server.log.error("configuration error: %s", exc)
        if server.pidfile is not None:
            server.pidfile.unlink()
        # SystemExit(int) prints nothing more: the line above is the whole story.
        raise SystemExit(1) from None
    server.log.info(
        "wsgiproxy: configuration from %s: %d subaccount(s), %d client key(s)",
        settings.source, len(settings.subaccounts), len(settings.api_keys),
    )


class _ToGunicornErrorLog(logging.Handler):
    """Hands ``wsgiproxy`` records to gunicorn's error log, whatever handlers it has now.

    Looked up per record, so the handlers gunicorn rebuilds on HUP or USR1 are the ones used.
    """

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("gunicorn.error").handle(record)


def route_app_logs_to_gunicorn() -> None:
    """The app logs through gunicorn's error log (its file, format and level), in every worker."""
    app_log = logging.getLogger("wsgiproxy")
    if not any(isinstance(handler, _ToGunicornErrorLog) for handler in app_log.handlers):
        app_log.addHandler(_ToGunicornErrorLog())
    app_log.propagate = False


def when_ready(server: Arbiter) -> None:
    cfg = server.cfg
    listeners = ", ".join(str(listener) for listener in server.LISTENERS) or "(none)"
    server.log.info(
        "wsgiproxy: listening on %s; %d %s worker(s) x %d connections; timeout %ss, "
        "graceful_timeout %ss, preload_app %s",
        listeners, server.num_workers, cfg.worker_class_str, cfg.worker_connections,
        cfg.timeout, cfg.graceful_timeout, cfg.preload_app,
    )


def on_reload(server: Arbiter) -> None:
    cfg = server.cfg
    server.log.info(
        "wsgiproxy: reload (HUP): starting %d new worker(s); old workers finish their streams "
        "for up to %ss", server.num_workers, cfg.graceful_timeout,
    )
    if cfg.preload_app:
        server.log.info("wsgiproxy: preload_app is on: config.json and code are not re-read by HUP; "
                        "restart (or USR2) to apply them")
        return
    # Without preload the new workers load config.json afresh: say now if that will fail.
    from wsgiproxy.config import load_settings
    from wsgiproxy.errors import ConfigError

    try:
        load_settings()
    except ConfigError as exc:
        server.log.error("configuration error: %s (the new workers will fail to boot)", exc)


def post_worker_init(worker: Worker) -> None:
    # Per-worker state (upstream pool, token cache) is created lazily on the first request;
    # nothing to do here but say the worker is up. No network I/O (ops-notes pitfall 3).
    worker.log.debug("wsgiproxy: worker %s ready", worker.pid)


def worker_int(worker: Worker) -> None:
    worker.log.warning("wsgiproxy: worker %s interrupted (INT/QUIT); stacks follow:\n%s",
                       worker.pid, dump_stacks())


def worker_abort(worker: Worker) -> None:
    worker.log.critical(
        "wsgiproxy: worker %s aborted (WORKER TIMEOUT: the gevent hub was blocked for more than "
        "timeout=%ss); stacks follow:\n%s", worker.pid, worker.cfg.timeout, dump_stacks(),
    )


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A worker was reaped (any cause, SIGKILL included).

    Placeholder for per-worker cleanup such as prometheus-client's ``mark_process_dead``;
    it must stay cheap and never raise, as it runs in the master's main loop.
    """


def dump_stacks() -> str:
    """The stack of every greenlet and thread of this process, as text for the log."""
    try:
        if "gevent" in sys.modules:
            from gevent.util import format_run_info

            return "\n".join(format_run_info())
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        parts = []
        for ident, frame in sys._current_frames().items():
            parts.append(f"--- thread {names.get(ident, '?')} ({ident})\n" + "".join(traceback.format_stack(frame)))
        return "\n".join(parts)
    except Exception as exc:  # a diagnostic must never take the worker's exit path down
        return f"(could not format stacks: {exc!r})"
