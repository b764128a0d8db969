"""Small answers clients expect from an API root: ``GET``/``HEAD /`` and Claude Code's telemetry sink."""

from __future__ import annotations

import json
import typing as t

from ..answers import Reply

if t.TYPE_CHECKING:
    from . import Call

_HEADERS = (("Content-Type", "application/json"),)
_ROOT = json.dumps({"service": "wsgiproxy", "status": "ok",
                    "endpoints": ["/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/messages",
                                  "/v1/messages/count_tokens", "/health"]}).encode()


def root(call: Call) -> Reply:
    """Connectivity checks (``HEAD /``) get 200 without a key."""
    return Reply(200, _HEADERS, _ROOT)


def event_logging(call: Call) -> Reply:
    """Claude Code may post its telemetry to the base URL: accepted and dropped, never forwarded."""
    call.body()  # read (within the size limit) so the connection stays usable
    return Reply(200, _HEADERS, b"{}")
