"""wsgiproxy: OpenAI- and Anthropic-compatible clients in front of SAP AI Core.

``wsgiproxy:app`` is the WSGI callable that gunicorn, waitress or any WSGI server runs. Both
names are resolved on first access, so importing the package (or ``wsgiproxy.sim``) neither
reads configuration nor imports socket and ssl (the upstream client's) before gevent can patch them.
"""

from __future__ import annotations

import typing as t

__all__ = ["app", "create_app"]

if t.TYPE_CHECKING:
    from .proxy import WsgiProxy, create_app

    app: WsgiProxy


def __getattr__(name: str) -> t.Any:
    if name == "create_app":
        from .proxy import create_app

        return create_app
    if name == "app":
        from .errors import ConfigError
        from .proxy import create_app

        try:
            application = create_app()
        except ConfigError as exc:
            raise SystemExit(f"wsgiproxy: configuration error: {exc}") from None
        globals()["app"] = application
        return application
    raise AttributeError(f"module 'wsgiproxy' has no attribute {name!r}")
