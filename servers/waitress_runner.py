"""Run wsgiproxy under Waitress with settings that suit long streams.

    wsgiproxy-waitress                        # or: python -m servers.waitress_runner
    wsgiproxy-waitress --listen 127.0.0.1:8080 --threads 128

Waitress gives every open response a thread for its whole life, so its default of 4 threads
means 4 concurrent streams; here the default is 64. Listen addresses come from ``--listen``,
else ``$WSGIPROXY_LISTEN`` (space- or comma-separated ``host:port``), else the ``host`` and
``port`` of config.json (127.0.0.1:3001 by default).

| variable                    | waitress setting   | default                                     |
|-----------------------------|--------------------|---------------------------------------------|
| WSGIPROXY_LISTEN            | listen             | config.json host:port                       |
| WSGIPROXY_THREADS           | threads            | 64 (= concurrent streams)                   |
| WSGIPROXY_CONNECTION_LIMIT  | connection_limit   | 256 (Windows select() handles about 500)    |
| WSGIPROXY_CHANNEL_TIMEOUT   | channel_timeout    | 120 s; closes idle keep-alive connections only |

``max_request_body_size`` is the ``max_body_bytes`` tunable. Waitress has no graceful drain:
SIGTERM or Ctrl-C stops it within a few seconds, cutting open streams. Metrics are this one
process's (``PROMETHEUS_MULTIPROC_DIR`` is ignored), and app log lines name their request id.

This module imports neither gunicorn nor gevent, so it runs on Windows.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import typing as t

DEFAULT_THREADS = 64
DEFAULT_CONNECTION_LIMIT = 256
DEFAULT_CHANNEL_TIMEOUT = 120


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"wsgiproxy-waitress: {name}={value!r}: expected a positive integer")
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgiproxy-waitress",
        description="Serve wsgiproxy:app with Waitress, sized for concurrent streams.",
    )
    parser.add_argument("--listen", action="append", metavar="HOST:PORT",
                        help="address to listen on; repeat for several (default: $WSGIPROXY_LISTEN, "
                             "else host:port from config.json)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"worker threads = concurrent streams (default: $WSGIPROXY_THREADS or {DEFAULT_THREADS})")
    return parser


def server_options(settings: t.Any, listen: list[str] | None = None, threads: int | None = None) -> dict[str, t.Any]:
    """The keyword arguments for ``waitress.create_server`` (exposed for tests)."""
    if not listen:
        listen = os.environ.get("WSGIPROXY_LISTEN", "").replace(",", " ").split()
    if not listen:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        listen = [f"{host}:{settings.port}"]
    threads = threads or _env_int("WSGIPROXY_THREADS", DEFAULT_THREADS)
    return {
        "listen": " ".join(listen),
        "threads": threads,
        "connection_limit": max(_env_int("WSGIPROXY_CONNECTION_LIMIT", DEFAULT_CONNECTION_LIMIT), threads),
        "channel_timeout": _env_int("WSGIPROXY_CHANNEL_TIMEOUT", DEFAULT_CHANNEL_TIMEOUT),
        "max_request_body_size": settings.max_body_bytes,
        "ident": "wsgiproxy",
        "expose_tracebacks": False,
    }


def _stop(signum: int, frame: t.Any) -> None:
    raise KeyboardInterrupt  # waitress closes its sockets and threads on KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise SystemExit("wsgiproxy-waitress: --threads: expected a positive integer")
    # One process: plain metrics. prometheus_client reads this when first imported (below).
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

    from wsgiproxy import create_app
    from wsgiproxy.config import load_settings
    from wsgiproxy.errors import ConfigError
    from wsgiproxy.logs import RequestIdFilter

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"wsgiproxy: configuration error: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    options = server_options(settings, args.listen, args.threads)
    if settings.pool_maxsize < options["threads"]:
        logging.getLogger("wsgiproxy").warning(
            "pool_maxsize %d is below threads %d: streams beyond it wait for an upstream connection",
            settings.pool_maxsize, options["threads"])

    waitress = importlib.import_module("waitress")  # untyped; imported late so --help is instant

    app = create_app(settings)
    server = waitress.create_server(app, **options)
    signal.signal(signal.SIGTERM, _stop)
    log = logging.getLogger("wsgiproxy")
    for host, port in server.effective_listen if hasattr(server, "effective_listen") else [
            (server.effective_host, server.effective_port)]:
        log.info("wsgiproxy-waitress: serving on http://%s:%s with %d threads", f"[{host}]" if ":" in host else host,
                 port, options["threads"])
    try:
        server.run()  # returns after KeyboardInterrupt (Ctrl-C, SIGTERM)
    except KeyboardInterrupt:
        pass
    log.info("wsgiproxy-waitress: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
