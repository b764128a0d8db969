"""``GET /health``: cheap liveness for load balancers; never calls upstream."""

from __future__ import annotations

import time
import typing as t

from werkzeug.wrappers import Response

if t.TYPE_CHECKING:
    from . import Call

_STARTED = time.time()


def health(call: Call) -> Response:
    body = b'{"status":"ok","uptime_seconds":%d}' % int(time.time() - _STARTED)
    return Response(body, content_type="application/json", headers={"Cache-Control": "no-store"})
