"""Facts about this process: its id, kept up to date across ``fork``, and whether it runs under gevent.

Per-process state (the upstream pool, the socket deadlines, the app's process state) is rebuilt
when the pid it was made in is not the current one. ``os.getpid()`` is a system call, asked
several times per request and once per relayed stream event; this asks the kernel once per process.
"""

from __future__ import annotations

import os
import sys

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """``os.getpid()``, without the system call."""
    return _pid


def gevent_patched() -> bool:
    """Whether gevent has monkey-patched this process (a gevent worker): one thread, greenlets.

    Asked without importing gevent, which a process that does not use it need not load.
    """
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))
