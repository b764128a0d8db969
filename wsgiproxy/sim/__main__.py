"""``python -m wsgiproxy.sim`` / ``wsgiproxy-sim``: serve the simulator under gevent.

gevent monkey-patches first, before anything else is imported, so ``time.sleep`` in
the pacing and fault code yields to other greenlets and hundreds of streams run at
once.  Importing this module therefore patches the process: tests run it as a
subprocess and never import it.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from .app import create_app  # noqa: E402
from .server import base_url, serve_gevent  # noqa: E402
from .service_key import write_atomically, write_config  # noqa: E402
from .settings import DEFAULT_TOKEN_TTL, Settings  # noqa: E402
from .state import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimState  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line, every default stated in its help."""
    parser = argparse.ArgumentParser(prog="wsgiproxy-sim", description="SAP AI Core simulator.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=4000,
                        help="port to bind, 0 for any free one (default: %(default)s)")
    parser.add_argument("--certfile", help="PEM certificate chain: serve HTTPS (needs --keyfile)")
    parser.add_argument("--keyfile", help="PEM private key for --certfile")
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID, help="accepted client id (default: %(default)s)")
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET,
                        help="accepted client secret (default: %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="sleep before each inference answer, ms (default: %(default)s)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0,
                        help="sleep between stream events, ms (default: %(default)s)")
    parser.add_argument("--token-latency-ms", type=float, default=0.0,
                        help="sleep before each token answer, ms (default: %(default)s)")
    parser.add_argument("--token-ttl", type=int, default=DEFAULT_TOKEN_TTL,
                        help="token lifetime, s (default: %(default)s)")
    parser.add_argument("--write-config", metavar="DIR",
                        help="write DIR/sim-service-key.json and DIR/config.json once listening")
    parser.add_argument("--proxy-key", action="append", default=[], metavar="KEY",
                        help="client key to list in config.json (repeatable)")
    parser.add_argument("--ready-file", metavar="PATH", help="write the base URL to PATH once listening")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then stop and return 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    try:
        settings = Settings(latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms,
                            token_latency_ms=args.token_latency_ms, token_ttl=args.token_ttl)
    except ValueError as exc:
        parser.error(str(exc))
    state = SimState(client_id=args.client_id, client_secret=args.client_secret, settings=settings)
    server = serve_gevent(create_app(state), args.host, args.port, args.certfile, args.keyfile)
    url = base_url(args.host, server.server_port, bool(args.certfile))

    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    if args.write_config:
        write_config(args.write_config, url, args.client_id, args.client_secret, state.deployments, args.proxy_key)
    if args.ready_file:
        write_atomically(Path(args.ready_file), url)
    print(f"wsgiproxy-sim listening on {url}", flush=True)

    stop.wait()
    server.stop(timeout=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
