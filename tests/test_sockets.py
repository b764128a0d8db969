"""wsgiproxy.sockets: waits on gevent sockets end at their deadline without a gevent Timeout per wait.

The gevent cases run in a child interpreter (this test process is not monkey-patched).
"""

from __future__ import annotations

import errno
import json
import socket
import textwrap

from tests._stack import python_child
from wsgiproxy.sockets import Deadlines, send_all, wait_readable

_GEVENT_SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, socket, time
    import gevent
    from wsgiproxy.sockets import TICK, Deadlines
    from wsgiproxy.aicore.http11 import Pool
    from wsgiproxy.errors import UpstreamTimeout

    out = {}
    deadlines = Deadlines()
    a, b = socket.socketpair()
    deadlines.adopt(a)
    out["blocking"] = a.gettimeout() is None

    def seconds_to_timeout():
        start = time.monotonic()
        try:
            a.recv(10)
            return "no timeout"
        except TimeoutError:
            return round(time.monotonic() - start, 2)

    # a wait past its deadline raises TimeoutError, about on time
    deadlines.arm(a, 0.3)
    out["expired"] = seconds_to_timeout()
    out["forgotten_after_expiry"] = len(deadlines)

    # re-arming before each read extends the deadline; data before it is read normally
    def trickle():
        for _ in range(4):
            gevent.sleep(0.15)
            b.sendall(b"x")
    writer = gevent.spawn(trickle)
    got = b""
    for _ in range(4):
        deadlines.arm(a, 0.4)
        got += a.recv(10)
    writer.join()
    out["trickled"] = got.decode()

    # disarmed: no deadline at all (bounded here by gevent's own timeout)
    deadlines.arm(a, 0.2)
    deadlines.disarm(a)
    try:
        with gevent.Timeout(0.6):
            a.recv(10)
        out["disarmed"] = "data?"
    except gevent.Timeout:
        out["disarmed"] = "waited"

    # wait_readable parks until bytes arrive (no failing recv first), and deadlines bound it too
    from wsgiproxy.sockets import wait_readable
    gevent.spawn_later(0.1, b.sendall, b"y")
    start = time.monotonic()
    wait_readable(a)
    out["waited_for_data"] = [round(time.monotonic() - start, 2), a.recv(10).decode()]
    deadlines.arm(a, 0.2)
    try:
        wait_readable(a)
        out["wait_deadline"] = "no"
    except TimeoutError:
        out["wait_deadline"] = "timed out"
    deadlines.disarm(a)

    # a second greenlet waiting on the same socket is refused, as gevent's own waits refuse it;
    # the first waiter is still woken by data
    first = gevent.spawn(wait_readable, a)
    gevent.sleep(0.01)
    try:
        wait_readable(a)
        out["second_waiter"] = "allowed"
    except Exception as exc:
        out["second_waiter"] = type(exc).__name__
    b.sendall(b"z")
    first.join(1)
    out["first_waiter"] = [first.successful(), a.recv(10).decode()]

    # the socket closed by another greenlet while one waits on it: the waiter gets an error
    c, d = socket.socketpair()
    gevent.spawn_later(0.05, c.close)
    try:
        wait_readable(c)
        out["closed_under_waiter"] = "returned"
    except OSError as exc:  # gevent's cancel_wait_ex: EBADF, "closed in another greenlet"
        out["closed_under_waiter"] = exc.errno
    d.close()

    # a socket with its own timeout waits with gevent's Timeout, as before
    e, f = socket.socketpair()
    e.settimeout(0.1)
    try:
        wait_readable(e)
        out["socket_timeout"] = "no"
    except TimeoutError:
        out["socket_timeout"] = "timed out"
    e.close()
    f.close()

    # a deadline that passes while nobody waits is applied to the next wait, then dropped
    deadlines.arm(a, 0.1)
    time.sleep(0.35)  # gevent's sleep: the sweeper runs meanwhile, finds nobody waiting, keeps the entry
    out["late_wait"] = seconds_to_timeout()
    out["left"] = len(deadlines)
    a.close()
    b.close()

    # the upstream client: a server that accepts and never answers is a 504-style UpstreamTimeout
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    pool = Pool(4, 5.0, None)
    start = time.monotonic()
    try:
        pool.request("POST", "http://127.0.0.1:%d/x" % listener.getsockname()[1], {}, b"{}", 2.0, 0.5, False)
        out["upstream"] = "answered?"
    except UpstreamTimeout as exc:
        out["upstream"] = [str(exc), round(time.monotonic() - start, 2)]
    out["pool_deadlines_left"] = len(pool.deadlines)
    listener.close()
    out["tick"] = TICK
    print(json.dumps(out))
""")


def test_gevent_waits_end_at_their_deadline() -> None:
    out = json.loads(python_child(_GEVENT_SCRIPT).strip().splitlines()[-1])
    tick = out["tick"]
    assert out["blocking"] is True
    assert 0.3 <= out["expired"] <= 0.3 + tick + 0.3
    assert out["forgotten_after_expiry"] == 0
    assert out["trickled"] == "xxxx"  # 0.15 s gaps under a 0.4 s per-read deadline: no timeout
    assert out["disarmed"] == "waited"
    assert out["waited_for_data"][1] == "y" and 0.05 <= out["waited_for_data"][0] <= 0.5
    assert out["wait_deadline"] == "timed out"
    assert out["second_waiter"] == "ConcurrentObjectUseError" and out["first_waiter"] == [True, "z"]
    assert out["closed_under_waiter"] == errno.EBADF
    assert out["socket_timeout"] == "timed out"
    assert out["late_wait"] <= tick + 0.3  # the overdue deadline ends the next wait at the next sweep
    assert out["left"] == 0
    message, elapsed = out["upstream"]
    assert "did not answer in time" in message
    assert 0.5 <= elapsed <= 0.5 + tick + 0.5
    assert out["pool_deadlines_left"] == 0


def test_without_gevent_the_socket_timeout_is_set() -> None:
    deadlines = Deadlines()
    a, b = socket.socketpair()
    with a, b:
        deadlines.arm(a, 0.2)
        assert a.gettimeout() == 0.2
        assert len(deadlines) == 0  # no sweeper, no entry: the kernel enforces it
        try:
            a.recv(1)
            raise AssertionError("recv should time out")
        except TimeoutError:
            pass
        deadlines.arm(a, None)
        assert a.gettimeout() is None
        deadlines.adopt(a)  # a plain socket is left as it is
        assert a.gettimeout() is None


class _PartialSocket:
    """send() takes at most ``room`` bytes; sendall() records the rest."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.sent: list[bytes] = []
        self.sendall_calls: list[bytes] = []

    def send(self, data: bytes) -> int:
        taken = bytes(data[:self.room])
        self.sent.append(taken)
        return len(taken)

    def sendall(self, data: memoryview) -> None:
        self.sendall_calls.append(bytes(data))


def test_send_all_is_one_send_when_the_socket_takes_everything() -> None:
    sock = _PartialSocket(room=1 << 20)
    send_all(sock, b"HTTP/1.1 200 OK\r\n\r\nhello")  # type: ignore[arg-type]
    assert sock.sent == [b"HTTP/1.1 200 OK\r\n\r\nhello"] and sock.sendall_calls == []


def test_send_all_hands_the_rest_of_a_partial_send_to_sendall() -> None:
    sock = _PartialSocket(room=4)
    send_all(sock, b"0123456789")  # type: ignore[arg-type]
    assert sock.sent == [b"0123"] and sock.sendall_calls == [b"456789"]


def test_wait_readable_is_a_no_op_for_a_plain_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        wait_readable(a)  # returns at once: a blocking recv does its own waiting
        b.sendall(b"x")
        assert a.recv(1) == b"x"
