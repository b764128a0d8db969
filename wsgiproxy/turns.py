"""Log lines of one turn of the event loop, written together.

A gevent worker finishes tens of requests in one turn of its event loop under load. Writing each
one's log line with its own system call (and, on a pipe, waking its reader each time) costs
more than formatting the line; keeping the lines of a turn and writing them when the loop turns
costs one call. A line waits at most for the rest of its turn, and :meth:`TurnBuffer.flush`
writes what waits (gunicorn's ``worker_exit`` hook calls it), so only a process killed outright
loses the lines of its last turn. Without gevent (waitress, a script, the tests) every line is
written at once.
"""

from __future__ import annotations

import typing as t

from . import process


class TurnBuffer:
    """Lines handed to ``write`` once per turn of this process's gevent loop, in order.

    :param write: writes a list of lines (without newlines) in one go; called in the process
        that added them, never with lines a parent left behind before a ``fork``.
    """

    __slots__ = ("_write", "_pending", "_loop", "_pid")

    def __init__(self, write: t.Callable[[list[str]], None]) -> None:
        self._write = write
        self._pending: list[str] = []
        self._loop: t.Any = None  # this process's gevent loop, False without gevent
        self._pid = 0

    def add(self, line: str) -> None:
        loop = self._loop if self._pid == process.pid() else self._this_process()
        if not loop:
            self._write([line])
            return
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            loop.run_callback(self.flush)

    def flush(self) -> None:
        """Write the lines still waiting for the loop to turn."""
        lines, self._pending = self._pending, []
        if lines and self._pid == process.pid():
            self._write(lines)

    def _this_process(self) -> t.Any:
        self._pid = process.pid()
        self._pending = []  # lines of the parent, before a fork: the parent writes them
        self._loop = False
        if process.gevent_patched():
            import gevent

            self._loop = gevent.get_hub().loop
        return self._loop
