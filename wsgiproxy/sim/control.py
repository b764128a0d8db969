"""The runtime control API under ``/_sim/`` (no authentication; bind the simulator to loopback).

- ``GET|POST /_sim/settings``: read or change :class:`~.settings.Settings`; returns them.
- ``GET|POST|DELETE /_sim/faults``: list, append (``{"faults": [...]}``) or clear faults.
- ``POST /_sim/reset``: clear faults and counters, restore the startup settings.
- ``GET /_sim/stats``: the counters of :meth:`~.state.SimState.stats`.
"""

from __future__ import annotations

import json

from werkzeug.wrappers import Request, Response

from .errors import json_response
from .faults import Fault
from .state import SimState


def settings(state: SimState, request: Request) -> Response:
    """Return the settings, after applying a POSTed JSON object of changes."""
    if request.method == "POST":
        changes = _json_object(request)
        if isinstance(changes, Response):
            return changes
        try:
            state.update_settings(changes)
        except (TypeError, ValueError) as exc:
            return _bad(str(exc))
    return json_response(state.settings.as_dict())


def faults(state: SimState, request: Request) -> Response:
    """List the pending faults, append POSTed ones, or DELETE them all."""
    if request.method == "POST":
        payload = _json_object(request)
        if isinstance(payload, Response):
            return payload
        raw = payload.get("faults")
        if not isinstance(raw, list):
            return _bad('expected {"faults": [...]}')
        try:
            parsed = [Fault.parse(item) for item in raw]
        except ValueError as exc:
            return _bad(str(exc))
        state.add_faults(parsed)
    elif request.method == "DELETE":
        state.clear_faults()
    return json_response({"faults": state.pending_faults()})


def reset(state: SimState, request: Request) -> Response:
    """Back to a fresh simulator, except that issued tokens stay valid."""
    state.reset()
    return json_response({"reset": True, "settings": state.settings.as_dict()})


def stats(state: SimState, request: Request) -> Response:
    """The counters as JSON."""
    return json_response(state.stats())


def _json_object(request: Request) -> dict[str, object] | Response:
    try:
        payload = json.loads(request.get_data() or b"{}")
    except ValueError as exc:
        return _bad(f"invalid JSON: {exc}")
    if not isinstance(payload, dict):
        return _bad("expected a JSON object")
    return payload


def _bad(message: str) -> Response:
    return json_response({"error": message}, 400)
