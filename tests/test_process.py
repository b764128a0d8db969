"""The cached process id follows ``fork``, as the per-process pool, deadlines and state rely on."""

from __future__ import annotations

import os

from wsgiproxy import process


def test_pid_is_this_process() -> None:
    assert process.pid() == os.getpid()


def test_pid_in_a_forked_child_is_the_childs() -> None:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write_end, f"{process.pid()} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        reported, actual = os.read(read_end, 100).decode().split()
    finally:
        os.close(read_end)
        os.waitpid(child, 0)
    assert reported == actual
    assert int(reported) != os.getpid()
    assert process.pid() == os.getpid()
