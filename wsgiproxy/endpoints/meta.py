"""Small answers clients expect from an API root: ``GET``/``HEAD /`` and Claude Code's telemetry sink."""

from __future__ import annotations

import json
import typing as t

from werkzeug.wrappers import Response

if t.TYPE_CHECKING:
    from . import Call

_ROOT = json.dumps({"service": "wsgiproxy", "status": "ok",
                    "endpoints": ["/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/messages",
                                  "/v1/messages/count_tokens", "/health"]})


def root(call: Call) -> Response:
    """Connectivity checks (``HEAD /``) get 200 without a key."""
    return Response(_ROOT, content_type="application/json")


def event_logging(call: Call) -> Response:
    """Claude Code may post its telemetry to the base URL: accepted and dropped, never forwarded."""
    call.body()  # read (within the size limit) so the connection stays usable
    return Response("{}", content_type="application/json")
