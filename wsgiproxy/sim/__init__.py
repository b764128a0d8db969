"""A faithful, deterministic SAP AI Core simulator with fault injection.

Its own WSGI app (``create_app``) speaking the contract of
``shared/spec/aicore-protocol.md``: the XSUAA token endpoint, deployment discovery
and the provider dialects, plus a control API under ``/_sim/``.  Run it with
``python -m wsgiproxy.sim`` or, in tests, with :class:`~.server.SimServer`.

Names are imported lazily so that ``python -m wsgiproxy.sim`` can monkey-patch with
gevent before anything else is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import SimApp, create_app
    from .catalog import DEFAULT_DEPLOYMENTS, DEPLOYMENT_IDS, Deployment
    from .server import SimServer
    from .settings import Settings
    from .state import SimState

__all__ = [
    "DEFAULT_DEPLOYMENTS", "DEPLOYMENT_IDS", "Deployment", "Settings", "SimApp", "SimServer", "SimState",
    "create_app",
]

_HOMES = {
    "SimApp": "app", "create_app": "app",
    "DEFAULT_DEPLOYMENTS": "catalog", "DEPLOYMENT_IDS": "catalog", "Deployment": "catalog",
    "SimServer": "server", "Settings": "settings", "SimState": "state",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{home}"), name)
