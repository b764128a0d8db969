# ruff: noqa: E402  (gevent must patch before anything else is imported)
# Gunicorn configuration for wsgiproxy:
#
#     gunicorn -c conf/gunicorn.conf.py wsgiproxy:app
#
# Every value can be overridden from the environment (command-line flags win over both):
#
# | variable                      | setting             | default                                 |
# |-------------------------------|---------------------|-----------------------------------------|
# | WSGIPROXY_BIND                | bind                | 0.0.0.0:3001 (comma-separate several)   |
# | WSGIPROXY_BACKLOG             | backlog             | 2048                                    |
# | WSGIPROXY_WORKERS             | workers             | $WEB_CONCURRENCY, else 2 x cores + 1    |
# | WSGIPROXY_WORKER_CLASS        | worker_class        | servers.gevent_worker.LeanGeventWorker  |
# | WSGIPROXY_WORKER_CONNECTIONS  | worker_connections  | 1000                                    |
# | WSGIPROXY_TIMEOUT             | timeout             | 60 (worker heartbeat, not a deadline)   |
# | WSGIPROXY_GRACEFUL_TIMEOUT    | graceful_timeout    | 120 (stream drain on TERM and HUP)      |
# | WSGIPROXY_KEEPALIVE           | keepalive           | 5                                       |
# | WSGIPROXY_MAX_REQUESTS        | max_requests        | 0 (workers are never recycled)          |
# | WSGIPROXY_MAX_REQUESTS_JITTER | max_requests_jitter | 0                                       |
# | WSGIPROXY_GC_THRESHOLD        | (worker GC, gen. 0) | 10000 allocations; 0 = Python's 700     |
# | WSGIPROXY_RELAY_SLICE_MS      | (lean worker, load) | 10 ms of relays per loop turn; 0 = off  |
# | WSGIPROXY_ACCESSLOG           | accesslog           | - (stdout); "off" disables it           |
# | WSGIPROXY_ERRORLOG            | errorlog            | - (stderr)                              |
# | WSGIPROXY_LOG_LEVEL           | loglevel            | info (also the app's log level)         |
# | WSGIPROXY_PIDFILE             | pidfile             | none                                    |
# | WSGIPROXY_PRELOAD             | preload_app         | true                                    |
# | WSGIPROXY_WORKER_TMP_DIR      | worker_tmp_dir      | /dev/shm if it exists, else the tmp dir |
# | WSGIPROXY_FORWARDED_ALLOW_IPS | forwarded_allow_ips | 127.0.0.1,::1                           |
# | PROMETHEUS_MULTIPROC_DIR      | (metrics directory) | <worker tmp dir>/wsgiproxy-metrics-<pid> |
#
# The worker class is always a gevent one: this file monkey-patches for it. The file is executed
# again on every HUP, so it must stay free of side effects other than the patch (idempotent).

from gevent import monkey

monkey.patch_all()
# ^ Keep those two statements first. preload_app imports wsgiproxy (and with it ssl) in the
#   master, before gunicorn's gevent worker would patch; a module holding the unpatched
#   ssl.SSLContext then makes every HTTPS call to SAP AI Core die with RecursionError.
#   Patching here, before anything imports the app, avoids that (ops-notes §1.6, pitfall 2).

import os
import sys
import tempfile
from pathlib import Path

# Prometheus multiprocess mode is chosen when prometheus_client is first imported, so the
# directory is named here, before the hooks or a preloaded app can import it (ops-notes §2).
# The operator's PROMETHEUS_MULTIPROC_DIR wins (it is emptied at start); otherwise each master
# gets its own directory on the worker tmp dir (tmpfs), removed when it exits. The variable
# survives HUP (same master, same directory); a USR2 child starts from the original environment.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip():
    _metrics_parent = os.environ.get("WSGIPROXY_WORKER_TMP_DIR", "").strip() or (
        "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(_metrics_parent, f"wsgiproxy-metrics-{os.getpid()}")

# `servers` (the hooks) lives next to `conf/`; make it importable when gunicorn runs from a
# checkout that is not pip-installed, whatever the working directory.
_ROOT = str(Path(__file__).resolve().parent.parent)
if (Path(_ROOT) / "servers" / "__init__.py").is_file() and _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from servers import gunicorn_hooks, pump

# The app's own log lines go to gunicorn's error log; done here, before preload imports the app.
gunicorn_hooks.route_app_logs_to_gunicorn()


def _env(name, default):
    value = os.environ.get(name, "").strip()
    return value if value else default


def _env_int(name, default, minimum=0):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise SystemExit(f"gunicorn.conf.py: {name}={value!r}: expected an integer >= {minimum}")
    return number


def _env_bool(name, default):
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"gunicorn.conf.py: {name}={value!r}: expected true or false")


def _cores():
    try:
        return len(os.sched_getaffinity(0))  # honours CPU pinning (containers, taskset)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --- sockets -----------------------------------------------------------------------------
bind = [address.strip() for address in _env("WSGIPROXY_BIND", "0.0.0.0:3001").split(",") if address.strip()]
backlog = _env_int("WSGIPROXY_BACKLOG", 2048, minimum=1)
# Requests from these addresses may set X-Forwarded-Proto/For (the nginx in front).
forwarded_allow_ips = _env("WSGIPROXY_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# --- workers -----------------------------------------------------------------------------
workers = _env_int("WSGIPROXY_WORKERS", _env_int("WEB_CONCURRENCY", 2 * _cores() + 1, minimum=1), minimum=1)
# The lean gevent worker (servers/gevent_worker.py) serves HTTP/1.x with a fraction of the stock
# worker's CPU per request; "gevent" selects gunicorn's own (needed for HTTP/2 or the PROXY protocol).
worker_class = _env("WSGIPROXY_WORKER_CLASS", "servers.gevent_worker.LeanGeventWorker")
if worker_class not in ("gevent", "servers.gevent_worker.LeanGeventWorker"):
    raise SystemExit(f"gunicorn.conf.py: WSGIPROXY_WORKER_CLASS={worker_class!r}: expected "
                     "servers.gevent_worker.LeanGeventWorker or gevent (this file patches for gevent)")
worker_connections = _env_int("WSGIPROXY_WORKER_CONNECTIONS", 1000, minimum=1)
# Each stream counts as one request, and a recycled worker cuts its streams after
# graceful_timeout: leave recycling off unless memory grows (ops-notes §1.5).
max_requests = _env_int("WSGIPROXY_MAX_REQUESTS", 0)
max_requests_jitter = _env_int("WSGIPROXY_MAX_REQUESTS_JITTER", 0)
# Each worker freezes its boot-time objects and runs the youngest GC generation every
# WSGIPROXY_GC_THRESHOLD allocations instead of 700 (0: Python's defaults). Checked here, set
# in post_worker_init (servers/gunicorn_hooks.py tune_gc).
gunicorn_hooks.gc_threshold()
# A busy lean worker serves new requests and response heads before it relays more events of
# the streams already flowing: WSGIPROXY_RELAY_SLICE_MS of relays per event-loop turn, the rest
# after the next turn's requests (0: every event relayed when it comes). Checked here, read by
# the worker (servers/pump.py Pacer).
pump.relay_slice()

# --- timeouts ----------------------------------------------------------------------------
# `timeout` is NOT a request deadline under gevent: it is the worker heartbeat. The gevent
# worker's main greenlet touches its heartbeat file every second, so a 30-minute stream is
# fine as long as nothing blocks the hub. What 600 s (the deployment guide's value) would buy
# is ten minutes before a wedged worker (CPU loop, unpatched blocking call) is killed and
# respawned. Keep it short; streams are bounded by WSGIPROXY_READ_TIMEOUT (per upstream read)
# and, on deploys, by graceful_timeout (ops-notes §1.4, pitfall 4).
timeout = _env_int("WSGIPROXY_TIMEOUT", 60)
# How long in-flight streams may finish after TERM or HUP before their worker is killed.
# Keep systemd TimeoutStopSec / Docker stop_grace_period / k8s terminationGracePeriodSeconds above it.
graceful_timeout = _env_int("WSGIPROXY_GRACEFUL_TIMEOUT", 120)
keepalive = _env_int("WSGIPROXY_KEEPALIVE", 5)

# --- logging -----------------------------------------------------------------------------
accesslog = _env("WSGIPROXY_ACCESSLOG", "-")
if accesslog.lower() in ("off", "none"):
    accesslog = None
errorlog = _env("WSGIPROXY_ERRORLOG", "-")
loglevel = _env("WSGIPROXY_LOG_LEVEL", "info").lower()
# remote, time, request line, status, bytes, duration in microseconds, user agent, request id
access_log_format = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(D)sus "%(a)s" rid=%({x-request-id}o)s'
# gunicorn's Logger with a cheaper access(): the same lines (any access_log_format), without
# building a dict of every header and environ variable and a LogRecord per request (issue #5).
logger_class = "servers.access_log.FastAccessLogger"

# --- process -----------------------------------------------------------------------------
proc_name = "wsgiproxy"
# No pidfile unless asked for: systemd (Type=notify) and Docker track the master pid
# themselves, and a pidfile left by a SIGKILLed master blocks the next start whenever its
# pid has been reused ("Already running on PID N"), which in containers is likely.
# Set WSGIPROXY_PIDFILE for init scripts or `kill -HUP $(cat ...)`.
pidfile = _env("WSGIPROXY_PIDFILE", None)
# Import the app once in the master: a bad config stops the start before any worker forks,
# and workers fork faster. Safe with gevent because of the patch at the top of this file.
# Note: HUP then restarts the workers but does not re-read config.json; restart (or USR2).
preload_app = _env_bool("WSGIPROXY_PRELOAD", True)
# The heartbeat file on a tmpfs: heartbeat I/O on a disk-backed /tmp can stall (gunicorn FAQ).
worker_tmp_dir = _env("WSGIPROXY_WORKER_TMP_DIR", "/dev/shm" if os.path.isdir("/dev/shm") else None)
# gunicorn >= 25.1 opens a control socket under $XDG_RUNTIME_DIR or ~/.gunicorn by default;
# a second instance of the same user steals it. We do not use it.
control_socket_disable = True

# --- hooks (servers/gunicorn_hooks.py) ---------------------------------------------------
on_starting = gunicorn_hooks.on_starting
on_reload = gunicorn_hooks.on_reload
when_ready = gunicorn_hooks.when_ready
post_worker_init = gunicorn_hooks.post_worker_init
worker_int = gunicorn_hooks.worker_int
worker_exit = gunicorn_hooks.worker_exit
worker_abort = gunicorn_hooks.worker_abort
child_exit = gunicorn_hooks.child_exit
on_exit = gunicorn_hooks.on_exit
