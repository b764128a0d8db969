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
    from ..record import RequestRecord


@dataclass
class Call:
    """Everything an endpoint needs about one request, bound after routing and auth."""

    environ: WSGIEnvironment
    settings: Settings
    catalog: Catalog
    client: AICoreClient
    record: RequestRecord
    args: t.Mapping[str, str] = field(default_factory=dict)
    _body: bytes | None = None

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def key_id(self) -> str:
        return self.record.key_id

    def body(self) -> bytes:
        if self._body is None:
            self._body = read_body(self.environ, self.settings.max_body_bytes)
        return self._body
