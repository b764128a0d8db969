"""One module per client surface; each turns a :class:`Call` into a WSGI response."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass, field

from ..body import read_body

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from ..aicore.catalog import Catalog
    from ..aicore.client import AICoreClient
    from ..config import Settings


@dataclass
class Call:
    """Everything an endpoint needs about one request, bound after routing and auth."""

    environ: WSGIEnvironment
    settings: Settings
    catalog: Catalog
    client: AICoreClient
    request_id: str
    key_id: str
    args: t.Mapping[str, str] = field(default_factory=dict)
    _body: bytes | None = None

    def body(self) -> bytes:
        if self._body is None:
            self._body = read_body(self.environ, self.settings.max_body_bytes)
        return self._body
