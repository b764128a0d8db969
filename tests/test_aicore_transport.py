"""The urllib3 transport against scripted loopback sockets: errors mapped, streams prompt, pool clean."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import typing as t

import pytest

from wsgiproxy.aicore.transport import READ_SIZE, Transport, discard, release
from wsgiproxy.errors import UpstreamTimeout, UpstreamUnreachable


class Scripted(socketserver.ThreadingTCPServer):
    """A loopback HTTP server whose handler is a function of the socket."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handle: t.Callable[[socket.socket], None]) -> None:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                handle(self.request)

        self.connections = 0
        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def read_request(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length:
        rest += sock.recv(65536)
    return head


@pytest.fixture
def server() -> t.Iterator[t.Callable[[t.Callable[[socket.socket], None]], Scripted]]:
    started: list[Scripted] = []

    def start(handle: t.Callable[[socket.socket], None]) -> Scripted:
        started.append(Scripted(handle))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def send(transport: Transport, url: str, *, stream: bool = False, read_timeout: float = 5.0) -> t.Any:
    return transport.request("POST", url, headers={"Content-Type": "application/json"}, body=b"{}",
                             connect_timeout=2, read_timeout=read_timeout, stream=stream)


def test_connection_refused_is_unreachable() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(UpstreamUnreachable, match="cannot connect"):
        send(Transport(), f"http://127.0.0.1:{port}/x")


def test_silent_upstream_is_a_timeout(server: t.Any) -> None:
    s = server(lambda sock: (read_request(sock), time.sleep(2)))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        send(Transport(), s.url + "/x", read_timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_reset_before_response_is_unreachable_and_post_is_not_resent(server: t.Any) -> None:
    s = server(lambda sock: (read_request(sock), sock.close()))
    with pytest.raises(UpstreamUnreachable, match="broke"):
        send(Transport(), s.url + "/x")
    assert s.connections == 1


def test_close_delimited_stream_arrives_event_by_event(server: t.Any) -> None:
    gate = threading.Event()

    def handle(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        sock.sendall(b"data: one\n\n")
        gate.wait(5)
        sock.sendall(b"data: two\n\n")
        sock.close()

    s = server(handle)
    response = send(Transport(), s.url + "/x", stream=True)
    assert response.read1(READ_SIZE) == b"data: one\n\n"  # before the second event even exists
    gate.set()
    rest = b""
    while chunk := response.read1(READ_SIZE):
        rest += chunk
    assert rest == b"data: two\n\n"
    release(response)


def keepalive_sse(sock: socket.socket) -> None:
    while read_request(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"b\r\ndata: one\n\n\r\n")
        sock.sendall(b"b\r\ndata: two\n\n\r\n")
        sock.sendall(b"0\r\n\r\n")


def test_discarding_a_half_read_stream_keeps_the_pool_healthy(server: t.Any) -> None:
    s = server(keepalive_sse)
    transport = Transport(maxsize=1, pool_timeout=1)
    response = send(transport, s.url + "/x", stream=True)
    assert response.read1(READ_SIZE).startswith(b"data: one")
    discard(response)  # the client went away mid-stream
    again = send(transport, s.url + "/x", stream=True)
    body = b""
    while chunk := again.read1(READ_SIZE):
        body += chunk
    assert body == b"data: one\n\ndata: two\n\n"
    release(again)
    assert s.connections == 2  # the half-read connection was not reused


def test_fully_read_connections_are_reused(server: t.Any) -> None:
    s = server(keepalive_sse)
    transport = Transport(maxsize=1, pool_timeout=1)
    for _ in range(5):
        response = send(transport, s.url + "/x", stream=True)
        while response.read1(READ_SIZE):
            pass
        release(response)
    assert s.connections == 1


def test_exhausted_pool_waits_then_fails_clearly(server: t.Any) -> None:
    s = server(keepalive_sse)
    transport = Transport(maxsize=1, pool_timeout=0.2)
    held = send(transport, s.url + "/x", stream=True)
    with pytest.raises(UpstreamUnreachable, match="pool exhausted"):
        send(transport, s.url + "/x", stream=True)
    discard(held)


def test_pool_is_recreated_after_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = Transport()
    first = transport.manager
    assert transport.manager is first
    monkeypatch.setattr("os.getpid", lambda: -42)
    assert transport.manager is not first
