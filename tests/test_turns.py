"""wsgiproxy/turns.py: the log lines of one event-loop turn written together under gevent, at once without.

This test process is not gevent-patched; the gevent cases run in a child interpreter that is.
"""

from __future__ import annotations

from tests._stack import python_child
from wsgiproxy.turns import TurnBuffer


def test_without_gevent_every_line_is_written_at_once() -> None:
    writes: list[list[str]] = []
    turn = TurnBuffer(writes.append)
    turn.add("a")
    turn.add("b")
    assert writes == [["a"], ["b"]]
    turn.flush()
    assert writes == [["a"], ["b"]]


_UNDER_GEVENT = r'''
from gevent import monkey
monkey.patch_all()
import os
import gevent
from wsgiproxy.turns import TurnBuffer

writes = []
turn = TurnBuffer(writes.append)
for line in ("a", "b", "c"):
    turn.add(line)
print("before the loop turns:", writes)
gevent.sleep(0)
print("after:", writes)
turn.add("d")
turn.flush()
print("flushed:", writes[-1])
gevent.sleep(0)
print("nothing twice:", len(writes))
turn.add("e")
child = os.fork()
if child == 0:
    turn.flush()
    turn.add("f")
    turn.flush()
    os._exit(0 if writes[-1] == ["f"] and ["e"] not in writes else 1)
_, status = os.waitpid(child, 0)
print("the child wrote only its own line:", status == 0)
turn.flush()
print("the parent's:", writes[-1])
'''


def test_under_gevent_the_lines_of_one_turn_go_out_in_one_write() -> None:
    assert python_child(_UNDER_GEVENT).splitlines() == [
        "before the loop turns: []",
        "after: [['a', 'b', 'c']]",
        "flushed: ['d']",
        "nothing twice: 2",
        "the child wrote only its own line: True",
        "the parent's: ['e']",
    ]
