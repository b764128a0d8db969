"""``GET /health``: cheap liveness for load balancers; never calls upstream."""

from __future__ import annotations

import time
import typing as t

from ..answers import Reply

if t.TYPE_CHECKING:
    from . import Call

_STARTED = time.time()
_HEADERS = (("Cache-Control", "no-store"), ("Content-Type", "application/json"))


def health(call: Call) -> Reply:
    body = b'{"status":"ok","uptime_seconds":%d}' % int(time.time() - _STARTED)
    return Reply(200, _HEADERS, body)
