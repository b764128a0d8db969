"""Running the simulator: a threaded in-process server for tests, and the gevent server of the CLI.

:class:`SimServer` needs no gevent: a werkzeug threaded server in a daemon thread,
started by the constructor and stopped by :meth:`SimServer.stop` or the ``with``
block.  :func:`serve_gevent` is what ``python -m wsgiproxy.sim`` runs after
monkey-patching.  Both expose the connection's socket to the app (werkzeug as
``werkzeug.socket``, ours as ``wsgiproxy.sim.socket``) so a ``reset`` fault can break it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .app import SimApp, create_app
from .catalog import DEFAULT_DEPLOYMENTS, Deployment
from .service_key import service_key, write_config
from .settings import Settings
from .state import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimState

if TYPE_CHECKING:
    from gevent.pywsgi import WSGIServer

SOCKET_KEY = "wsgiproxy.sim.socket"


def base_url(host: str, port: int, tls: bool) -> str:
    """The URL clients use to reach a server bound to *host*:*port*."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's handler without the per-request access log line."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class SimServer:
    """The simulator on a loopback port, in a background thread.

    :param port: ``0`` picks a free port; read the result from :attr:`url`.
    :param certfile: with *keyfile*, serve HTTPS.
    :param settings: initial :class:`~.settings.Settings` fields, e.g. ``chunk_delay_ms=5``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        deployments: Iterable[Deployment] = DEFAULT_DEPLOYMENTS,
        **settings: Any,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ValueError("certfile and keyfile go together")
        self.client_id = client_id
        self.client_secret = client_secret
        self.state = SimState(
            client_id=client_id, client_secret=client_secret, deployments=deployments, settings=Settings(**settings)
        )
        self.app: SimApp = create_app(self.state)
        ssl_context = (os.fspath(certfile), os.fspath(keyfile)) if certfile and keyfile else None
        self._server: BaseWSGIServer = make_server(
            host, port, self.app, threaded=True, request_handler=_QuietHandler, ssl_context=ssl_context
        )
        self.host = host
        self.port: int = self._server.server_address[1]
        self.url = base_url(host, self.port, ssl_context is not None)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="wsgiproxy-sim", daemon=True
        )
        self._thread.start()
        self._stopped = False

    def deployment_url(self, model_or_id: str) -> str:
        """The deployment URL of a default model name or a deployment id."""
        for deployment in self.state.deployments:
            if model_or_id in (deployment.model, deployment.id):
                return self.url + deployment.path
        raise KeyError(model_or_id)

    def token(self) -> str:
        """A fresh valid bearer token, without a round trip to the token endpoint."""
        return self.state.issue_token().value

    def service_key(self) -> dict[str, object]:
        """A §1.1 service key pointing at this server."""
        return service_key(self.url, self.client_id, self.client_secret)

    def write_config(self, directory: str | os.PathLike[str], proxy_keys: Iterable[str] = ()) -> Path:
        """Write ``sim-service-key.json`` and ``config.json`` into *directory*; returns the config path."""
        return write_config(
            directory, self.url, self.client_id, self.client_secret, self.state.deployments, proxy_keys
        )

    def stop(self) -> None:
        """Stop accepting and close the listener; streams in flight end with their threads."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_gevent(
    app: SimApp,
    host: str,
    port: int,
    certfile: str | None = None,
    keyfile: str | None = None,
    *,
    backlog: int = 2048,
) -> WSGIServer:
    """Start a gevent ``WSGIServer`` (one greenlet per connection) and return it, listening.

    Call it only after ``gevent.monkey.patch_all()``, as the CLI does.
    """
    from gevent.pywsgi import WSGIHandler, WSGIServer

    class SocketHandler(WSGIHandler):  # type: ignore[misc]
        """Puts the connection's socket into the environ, for the ``reset`` fault."""

        def get_environ(self) -> dict[str, Any]:
            environ: dict[str, Any] = super().get_environ()
            environ[SOCKET_KEY] = self.socket
            return environ

    tls: dict[str, str] = {"certfile": certfile, "keyfile": keyfile} if certfile and keyfile else {}
    server = WSGIServer((host, port), app, handler_class=SocketHandler, log=None, backlog=backlog, **tls)
    server.start()
    return server
