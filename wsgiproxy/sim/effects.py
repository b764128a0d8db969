"""What a consumed fault does to a request: sleep, answer an error, or break the connection.

Breaking the connection needs the raw socket.  The threaded werkzeug server puts it in
``environ["werkzeug.socket"]``, gunicorn in ``environ["gunicorn.socket"]``, and the
simulator's own gevent handler (``server.py``) in ``environ["wsgiproxy.sim.socket"]``.
:func:`abort_connection` shuts that socket down with ``SO_LINGER`` 0 (so the final close
sends RST), then raises ``ConnectionResetError``: every one of those servers treats it
as a dropped client, logs nothing, and closes the connection without finishing the body.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from werkzeug.wrappers import Response

from .faults import Fault

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

SOCKET_KEYS = ("wsgiproxy.sim.socket", "werkzeug.socket", "gunicorn.socket")


def abort_connection(environ: WSGIEnvironment) -> NoReturn:
    """Kill the client connection mid-response and unwind the WSGI call."""
    sock = next((environ[key] for key in SOCKET_KEYS if environ.get(key) is not None), None)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    raise ConnectionResetError(errno.ECONNRESET, "simulated connection reset")


def before_answer(fault: Fault | None, error: Callable[[Fault], Response]) -> Response | None:
    """Apply the parts of *fault* that act before the answer starts.

    ``delay`` sleeps, ``status`` returns the error response built by *error*, and a
    ``reset`` on a non-streaming path is left to :func:`after_answer`.
    """
    if fault is None:
        return None
    if fault.kind == "delay":
        time.sleep(fault.seconds)
    elif fault.kind == "status":
        response = error(fault)
        if fault.retry_after is not None or fault.status == 429:
            response.headers["Retry-After"] = _seconds(fault.retry_after if fault.retry_after is not None else 1)
        for name, value in fault.headers.items():
            response.headers[name] = value
        return response
    return None


def after_answer(fault: Fault | None, environ: WSGIEnvironment) -> None:
    """Apply ``reset`` and ``stall`` to an answer that is not a stream.

    A reset drops the connection before any response byte (a failover test's
    "upstream never answered"); a stall is a delay before the answer.
    """
    if fault is None:
        return
    if fault.kind == "reset":
        abort_connection(environ)
    if fault.kind == "stall":
        time.sleep(fault.seconds)


def retry_after_seconds(fault: Fault) -> int:
    """The whole seconds a default 429 message should mention."""
    return int(round(fault.retry_after)) if fault.retry_after is not None else 1


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
