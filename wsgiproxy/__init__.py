"""wsgiproxy: OpenAI- and Anthropic-compatible clients in front of SAP AI Core.

``wsgiproxy:app`` is the WSGI callable that gunicorn, waitress or any WSGI server runs. It is
built on first access, so importing the package never reads configuration by accident.
"""

from __future__ import annotations

import typing as t

from .app import create_app

__all__ = ["app", "create_app"]


def __getattr__(name: str) -> t.Any:
    if name == "app":
        from .errors import ConfigError

        try:
            application = create_app()
        except ConfigError as exc:
            raise SystemExit(f"wsgiproxy: configuration error: {exc}") from None
        globals()["app"] = application
        return application
    raise AttributeError(f"module 'wsgiproxy' has no attribute {name!r}")
