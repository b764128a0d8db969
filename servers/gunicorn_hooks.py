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
worker_exit        worker  after the worker's loop ended (stop, reload, max_requests)
worker_abort       worker  SIGABRT: the master's WORKER TIMEOUT kill
child_exit         master  after a worker was reaped, SIGKILLed ones included
on_exit            master  last step of a shutdown
=================  ======  ===============================================================

Metrics: ``conf/gunicorn.conf.py`` names the prometheus multiprocess directory
(``PROMETHEUS_MULTIPROC_DIR``) before anything imports prometheus-client; ``on_starting``
creates and empties it (once per master: never on HUP, which would reset every counter),
``child_exit`` drops a dead worker's live gauges, ``on_exit`` removes a directory the conf
file chose itself.

Rules: no import of gunicorn here (the server objects come in as arguments), no upstream
I/O anywhere (a socket opened before the fork is blocking and shared by every worker), and
nothing slow in a worker hook.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import traceback
import typing as t

# gunicorn ships no type information; these name what the hooks receive.
Arbiter = t.Any  # gunicorn.arbiter.Arbiter: the master
Worker = t.Any  # gunicorn.workers.base.Worker: a worker, in its own process

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_METRICS_PREFIX = "wsgiproxy-metrics-"  # + master pid: the conf file's default directory


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
    prepare_metrics_dir(server)


def prepare_metrics_dir(server: Arbiter) -> None:
    """Create and empty the multiprocess metrics directory; exit at once if that fails."""
    path = os.environ.get(MULTIPROC_ENV, "")
    if not path:
        server.log.info("wsgiproxy: %s is not set: metrics count this process only", MULTIPROC_ENV)
        return
    try:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))
    except OSError as exc:
        server.log.error("metrics directory %s (%s): %s; expected a writable directory", path, MULTIPROC_ENV,
                         exc.strerror or exc)
        if server.pidfile is not None:
            server.pidfile.unlink()
        raise SystemExit(1) from None
    _remove_dead_default_dirs(os.path.dirname(os.path.abspath(path)))
    server.log.info("wsgiproxy: metrics: prometheus multiprocess mode in %s", path)


def _remove_dead_default_dirs(parent: str) -> None:
    """Default directories of masters that died without on_exit (SIGKILL) would pile up on tmpfs."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid = name[len(DEFAULT_METRICS_PREFIX):]
        if not name.startswith(DEFAULT_METRICS_PREFIX) or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except OSError:
            pass  # alive, owned by another user


class _ToGunicornErrorLog(logging.Handler):
    """Hands ``wsgiproxy`` records to gunicorn's error log, whatever handlers it has now.

    Looked up per record, so the handlers gunicorn rebuilds on HUP or USR1 are the ones used.
    A record logged while a request is served gets its ``rid=`` (``wsgiproxy.logs``, looked
    up lazily: this module must not import the app before the conf file set the metrics mode).
    """

    def emit(self, record: logging.LogRecord) -> None:
        logs = sys.modules.get("wsgiproxy.logs")
        if logs is not None:
            logs.add_request_id(record)
        logging.getLogger("gunicorn.error").handle(record)


def route_app_logs_to_gunicorn() -> None:
    """The app logs through gunicorn's error log (its file, format and level), in every worker."""
    app_log = logging.getLogger("wsgiproxy")
    if not any(isinstance(handler, _ToGunicornErrorLog) for handler in app_log.handlers):
        app_log.addHandler(_ToGunicornErrorLog())
    app_log.propagate = False


def _worker_kind(worker_class: str) -> str:
    return "gevent (lean HTTP/1.1)" if worker_class.endswith("gevent_worker.LeanGeventWorker") else worker_class


def when_ready(server: Arbiter) -> None:
    cfg = server.cfg
    listeners = ", ".join(str(listener) for listener in server.LISTENERS) or "(none)"
    server.log.info(
        "wsgiproxy: listening on %s; %d %s worker(s) x %d connections; timeout %ss, "
        "graceful_timeout %ss, preload_app %s",
        listeners, server.num_workers, _worker_kind(cfg.worker_class_str), cfg.worker_connections,
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
    # only the metrics count the worker now. No network I/O (ops-notes pitfall 3).
    from wsgiproxy.metrics import worker_started

    worker_started()
    tune_gc(gc_threshold())
    worker.log.debug("wsgiproxy: worker %s ready", worker.pid)


GC_THRESHOLD_ENV = "WSGIPROXY_GC_THRESHOLD"
DEFAULT_GC_THRESHOLD = 10_000


def gc_threshold() -> int:
    """``WSGIPROXY_GC_THRESHOLD``: the worker's first-generation GC threshold (0: Python's own settings)."""
    value = os.environ.get(GC_THRESHOLD_ENV, "").strip()
    if not value:
        return DEFAULT_GC_THRESHOLD
    if not value.isdigit():
        raise SystemExit(f"gunicorn.conf.py: {GC_THRESHOLD_ENV}={value!r}: expected an integer >= 0")
    return int(value)


def tune_gc(threshold: int) -> None:
    """Freeze what the worker holds at boot and collect the youngest generation less often.

    A worker with many requests in flight holds tens of thousands of young objects (greenlets,
    sockets, generators) that live for the length of a stream. With Python's threshold of 700
    allocations, the collector scans them again and again before they die, about 7 % of the
    CPU of a worker relaying 1000 streams (``make bench``). The objects of the imports and the
    config are frozen: never scanned again. The proxy makes no reference cycles per request, so a
    later collection frees no more memory, and one pass over ``threshold`` young objects takes
    a few milliseconds. 0 leaves Python's settings as they are.
    """
    if threshold <= 0:
        return
    import gc

    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(threshold, second, third)


def worker_exit(server: Arbiter, worker: Worker) -> None:
    """The worker is exiting (stop, reload, max_requests): write the metrics it summed in memory
    and the usage and access lines of its last turn of the event loop."""
    from wsgiproxy.metrics import flush_pending

    try:
        flush_pending()
    except Exception as exc:
        worker.log.warning("wsgiproxy: writing the metrics of worker %s failed: %r", worker.pid, exc)
    flush_logs = getattr(getattr(worker, "wsgi", None), "flush_logs", None)
    if flush_logs is not None:
        try:
            flush_logs()
        except Exception as exc:
            worker.log.warning("wsgiproxy: writing the usage log of worker %s failed: %r", worker.pid, exc)
    flush_access = getattr(worker.log, "flush_access", None)
    if flush_access is not None:
        try:
            flush_access()
        except Exception as exc:
            worker.log.warning("wsgiproxy: writing the access log of worker %s failed: %r", worker.pid, exc)


def worker_int(worker: Worker) -> None:
    worker.log.warning("wsgiproxy: worker %s interrupted (INT/QUIT); stacks follow:\n%s",
                       worker.pid, dump_stacks())


def worker_abort(worker: Worker) -> None:
    worker.log.critical(
        "wsgiproxy: worker %s aborted (WORKER TIMEOUT: the gevent hub was blocked for more than "
        "timeout=%ss); stacks follow:\n%s", worker.pid, worker.cfg.timeout, dump_stacks(),
    )


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A worker was reaped (any cause, SIGKILL included): its in-flight gauge must stop counting.

    Its counters stay (they are totals); runs in the master's main loop, so it never raises.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)
    except Exception as exc:
        server.log.warning("wsgiproxy: metrics cleanup for worker %s failed: %r", worker.pid, exc)


def on_exit(server: Arbiter) -> None:
    """Remove the metrics directory if the conf file chose it for this master."""
    path = os.environ.get(MULTIPROC_ENV, "")
    if path and os.path.basename(os.path.normpath(path)) == f"{DEFAULT_METRICS_PREFIX}{os.getpid()}":
        shutil.rmtree(path, ignore_errors=True)


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
