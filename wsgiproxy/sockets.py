"""Socket waits and sends on the hot path, cheaper under gevent than its own socket calls.

:class:`Deadlines`: a gevent socket with a timeout creates, starts and cancels a
``gevent.Timeout`` on every wait that blocks: about 10 µs each on a bench core, paid on every
upstream stream event and twice per request. With :class:`Deadlines` sockets stay blocking
(timeout ``None``); the deadline of the wait to come is one dict entry, and a sweeper greenlet
waking every :data:`TICK` seconds throws ``TimeoutError`` into a greenlet still waiting on that
socket past it (``Hub.cancel_wait``, as gevent does when a socket is closed under a waiting
greenlet). A deadline is kept to within ``TICK``. Without gevent (waitress threads) the same
calls set the socket's own timeout, which costs nothing extra there.

:func:`send_all`: gevent's ``sendall`` asks the kernel for the send buffer size
(``getsockopt``) and slices a memoryview on every call; one ``send`` takes a whole response
head, request or stream event.

:func:`wait_readable`: gevent's ``recv`` first tries the system call and, when it fails with
EAGAIN, raises and catches that error before it waits. For a read that cannot have an answer
yet (the response right after a request was sent, a client's next request right after its
response) waiting first saves both. The wait itself starts the socket's read watcher with the
greenlet's own ``switch`` as its callback, without the ``Waiter`` object gevent makes per wait;
``Hub.cancel_wait`` (a deadline, the socket closed by another greenlet) still throws into it.
"""

from __future__ import annotations

import functools
import socket
import ssl
import time
import typing as t

from . import process

TICK = 0.1  # seconds between sweeps: the precision of a deadline
_GIVE_UP = 5.0  # seconds past its deadline an entry nobody waits on is dropped (never re-armed)


class Deadlines:
    """Deadlines for waits on sockets; one per process (the sweeper starts on first use, after fork)."""

    def __init__(self) -> None:
        self._due: dict[socket.socket, float] = {}
        self._pid = 0

    def adopt(self, sock: socket.socket) -> None:
        """Make a connected gevent socket blocking: its waits are bounded by :meth:`arm` from now on."""
        if getattr(sock, "_read_event", None) is not None:
            sock.settimeout(None)

    def arm(self, sock: socket.socket, seconds: float | None) -> None:
        """The next waits on ``sock`` (reads and writes) end with ``TimeoutError`` after ``seconds``."""
        if getattr(sock, "_read_event", None) is None:  # not a gevent socket
            sock.settimeout(seconds)
            return
        if seconds is None:
            self._due.pop(sock, None)
            return
        if self._pid != process.pid():
            self._start()
        self._due[sock] = time.monotonic() + seconds

    def disarm(self, sock: socket.socket) -> None:
        """No deadline for ``sock`` (idle in a pool, or closing)."""
        self._due.pop(sock, None)

    def __len__(self) -> int:
        return len(self._due)

    def _start(self) -> None:
        import gevent

        self._pid = process.pid()
        self._due.clear()  # entries inherited over fork belong to the parent's sockets
        gevent.spawn(self._sweep)

    def _sweep(self) -> t.NoReturn:
        import gevent

        due = self._due
        while True:
            gevent.sleep(TICK)
            if not due:
                continue
            now = time.monotonic()
            for sock in [sock for sock, deadline in due.items() if deadline <= now]:
                if _cancel_waits(sock) or now - due[sock] > _GIVE_UP:
                    del due[sock]


def _cancel_waits(sock: t.Any) -> bool:
    """Throw ``TimeoutError`` into the greenlet waiting on ``sock``; whether one was waiting (or it is closed)."""
    read, write = getattr(sock, "_read_event", None), getattr(sock, "_write_event", None)
    if read is None:
        return True  # closed: nothing will wait on it again
    waiting = False
    for watcher in (read, write):
        if watcher is not None and watcher.callback is not None:
            sock.hub.cancel_wait(watcher, TimeoutError("timed out"))
            waiting = True
    return waiting


def send_all(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall(data)``: one ``send`` when the socket takes it all (the usual case)."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


@functools.cache
def _getcurrent() -> t.Callable[[], t.Any]:
    from gevent import getcurrent  # imported once a gevent socket waits

    return t.cast("t.Callable[[], t.Any]", getcurrent)


def wait_readable(sock: socket.socket) -> None:
    """Under gevent, wait until ``sock`` has bytes or EOF (a no-op for a plain blocking socket)."""
    event = getattr(sock, "_read_event", None)
    if event is None:
        return
    # TLS: bytes already decrypted need no wait. (ssl.SSLSocket is gevent's class once patched; a
    # getattr of a missing attribute would go through gevent socket's __getattr__ and an exception.)
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return
    if event.callback is not None or sock.gettimeout() is not None:
        sock._wait(event)  # type: ignore[attr-defined]  # gevent's: its timeout, or its error for a second waiter
        return
    event.start(_getcurrent()().switch)
    try:
        sock.hub.switch()  # type: ignore[attr-defined]
    finally:
        event.stop()
