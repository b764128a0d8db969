"""The transport against scripted loopback sockets: framing, keep-alive, errors mapped, streams prompt, pool clean."""

from __future__ import annotations

import gzip
import os
import socket
import socketserver
import ssl
import textwrap
import threading
import time
import typing as t

import pytest
import trustme

from tests._stack import python_child
from wsgiproxy.aicore.transport import READ_SIZE, STREAM_ERRORS, Transport, discard, read_error, release
from wsgiproxy.errors import UpstreamTimeout, UpstreamUnreachable


class Scripted(socketserver.ThreadingTCPServer):
    """A loopback HTTP server whose handler is a function of the (accepted) socket."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, handle: t.Callable[[socket.socket], None], tls: ssl.SSLContext | None = None) -> None:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                sock = self.request
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if tls is not None:
                    try:
                        sock = tls.wrap_socket(sock, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                try:
                    handle(sock)
                finally:
                    if sock is not self.request:
                        sock.close()

        self.connections = 0
        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def read_request(sock: socket.socket) -> bytes:
    """One request's head and body (b"" when the client closed the connection)."""
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
    return head + b"\r\n\r\n" + rest


def ok(body: bytes = b'{"ok":true}', *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + head.encode() + \
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def keepalive(answer: bytes) -> t.Callable[[socket.socket], None]:
    def handle(sock: socket.socket) -> None:
        while read_request(sock):
            sock.sendall(answer)

    return handle


@pytest.fixture
def server() -> t.Iterator[t.Callable[..., Scripted]]:
    started: list[Scripted] = []

    def start(handle: t.Callable[[socket.socket], None], tls: ssl.SSLContext | None = None) -> Scripted:
        started.append(Scripted(handle, tls))
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def transport() -> t.Iterator[Transport]:
    made = Transport(maxsize=4, pool_timeout=1)
    yield made
    made.clear()


def send(transport: Transport, url: str, *, stream: bool = False, read_timeout: float = 5.0,
         method: str = "POST", body: bytes | None = b"{}") -> t.Any:
    return transport.request(method, url, headers={"Content-Type": "application/json"}, body=body,
                             connect_timeout=2, read_timeout=read_timeout, stream=stream)


def read_all(response: t.Any) -> bytes:
    body = b""
    while chunk := response.read1(READ_SIZE):
        body += chunk
    return body


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return int(port)


# --- the request on the wire ------------------------------------------------------------------


def test_request_is_one_well_formed_http11_message(server: t.Any, transport: Transport) -> None:
    seen: list[bytes] = []

    def handle(sock: socket.socket) -> None:
        seen.append(read_request(sock))
        sock.sendall(ok())

    s = server(handle)
    response = transport.request("POST", s.url + "/v2/inference/deployments/d1/chat/completions?api-version=1",
                                 headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
                                 body=b'{"a":1}', connect_timeout=2, read_timeout=5, stream=False)
    assert response.status == 200 and response.data == b'{"ok":true}'
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v2/inference/deployments/d1/chat/completions?api-version=1 HTTP/1.1"
    fields = dict(line.split(b": ", 1) for line in lines[1:])
    assert fields[b"Host"] == f"127.0.0.1:{s.server_address[1]}".encode()
    assert fields[b"Authorization"] == b"Bearer t"
    assert fields[b"Content-Length"] == b"7"
    assert fields[b"Accept-Encoding"] == b"identity"
    assert body == b'{"a":1}'


def test_large_body_is_sent_whole(server: t.Any, transport: Transport) -> None:
    seen: list[bytes] = []

    def handle(sock: socket.socket) -> None:
        seen.append(read_request(sock))
        sock.sendall(ok())

    s = server(handle)
    body = os.urandom(300_000)
    assert send(transport, s.url + "/x", body=body).status == 200
    assert seen[0].partition(b"\r\n\r\n")[2] == body


def test_header_injection_is_refused(transport: Transport) -> None:
    with pytest.raises(ValueError, match="line break"):
        transport.request("POST", "http://127.0.0.1:9/x", headers={"Authorization": "Bearer t\r\nX-Evil: 1"},
                          body=b"", connect_timeout=1, read_timeout=1, stream=False)


# --- response framing -------------------------------------------------------------------------


@pytest.mark.parametrize("answer, body", [
    (ok(b"hello"), b"hello"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
     b"hello world"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n", b"abc"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", b"hi"),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", b"hi"),
])
def test_framed_bodies_read_whole_and_connection_reused(server: t.Any, transport: Transport,
                                                        answer: bytes, body: bytes) -> None:
    s = server(keepalive(answer))
    for _ in range(3):
        assert send(transport, s.url + "/x").data == body
        assert read_all(send(transport, s.url + "/x", stream=True)) == body
    assert s.connections == 1


def test_close_delimited_body_is_read_to_eof_and_not_reused(server: t.Any, transport: Transport) -> None:
    def handle(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        time.sleep(0.05)
        sock.sendall(b"the end")
        sock.close()

    s = server(handle)
    assert send(transport, s.url + "/x").data == b"until the end"
    assert send(transport, s.url + "/x").data == b"until the end"
    assert s.connections == 2


def test_headers_lowercased_and_repeated_ones_joined(server: t.Any, transport: Transport) -> None:
    s = server(keepalive(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nX-A: 1\r\nx-a: 2\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"))
    response = send(transport, s.url + "/x")
    assert response.status == 429 and response.reason == "Too Many Requests"
    assert response.headers.get("retry-after") == "3"
    assert response.headers.get("Retry-After") == "3"
    assert response.headers.get("x-a") == "1, 2"
    assert response.headers.get("content-type", "x") == "application/json"
    assert response.headers.get("missing", "default") == "default"


def test_no_body_for_head_204_and_304(server: t.Any, transport: Transport) -> None:
    answers = iter([b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"])

    def handle(sock: socket.socket) -> None:
        while read_request(sock):
            sock.sendall(next(answers))

    s = server(handle)
    assert send(transport, s.url + "/x").data == b""
    assert send(transport, s.url + "/x").data == b""
    assert send(transport, s.url + "/x", method="HEAD", body=None).data == b""
    assert s.connections == 1


def test_gzip_body_is_decoded(server: t.Any, transport: Transport) -> None:
    packed = gzip.compress(b'{"zipped":true}' * 100)
    s = server(keepalive(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n" +
                         f"Content-Length: {len(packed)}\r\n\r\n".encode() + packed))
    assert send(transport, s.url + "/x").data == b'{"zipped":true}' * 100
    assert read_all(send(transport, s.url + "/x", stream=True)) == b'{"zipped":true}' * 100


CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"b\r\ndata: one\n\n\r\n" b"19;name=value\r\ndata: {\"two\": \"second\"}\n\n\r\n" b"0\r\n\r\n")


def test_chunked_body_written_byte_by_byte(server: t.Any, transport: Transport) -> None:
    def handle(sock: socket.socket) -> None:
        while read_request(sock):
            for i in range(len(CHUNKED)):
                sock.sendall(CHUNKED[i:i + 1])
                time.sleep(0.0005)

    s = server(handle)
    for _ in range(2):
        response = send(transport, s.url + "/x", stream=True)
        pieces = []
        while chunk := response.read1(READ_SIZE):
            pieces.append(chunk)
        assert b"".join(pieces) == b'data: one\n\ndata: {"two": "second"}\n\n'
        assert all(pieces)
        release(response)
    assert s.connections == 1


# --- streaming --------------------------------------------------------------------------------


def test_close_delimited_stream_arrives_event_by_event(server: t.Any, transport: Transport) -> None:
    gate = threading.Event()

    def handle(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        sock.sendall(b"data: one\n\n")
        gate.wait(5)
        sock.sendall(b"data: two\n\n")
        sock.close()

    s = server(handle)
    response = send(transport, s.url + "/x", stream=True)
    assert response.read1(READ_SIZE) == b"data: one\n\n"  # before the second event even exists
    gate.set()
    assert read_all(response) == b"data: two\n\n"
    release(response)


def gated_sse(gate: threading.Event) -> t.Callable[[socket.socket], None]:
    """Keep-alive chunked SSE; the second event waits for ``gate``."""
    def handle(sock: socket.socket) -> None:
        while read_request(sock):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            sock.sendall(b"b\r\ndata: one\n\n\r\n")
            if not gate.wait(5):
                return
            try:
                sock.sendall(b"b\r\ndata: two\n\n\r\n0\r\n\r\n")
            except OSError:
                return

    return handle


def test_chunked_stream_arrives_event_by_event(server: t.Any, transport: Transport) -> None:
    gate = threading.Event()
    s = server(gated_sse(gate))
    response = send(transport, s.url + "/x", stream=True)
    assert response.headers.get("content-type") == "text/event-stream"
    assert response.read1(READ_SIZE) == b"data: one\n\n"
    gate.set()
    assert read_all(response) == b"data: two\n\n"
    release(response)


def test_discarding_a_half_read_stream_closes_its_connection(server: t.Any) -> None:
    gate = threading.Event()
    s = server(gated_sse(gate))
    transport = Transport(maxsize=1, pool_timeout=1)
    response = send(transport, s.url + "/x", stream=True)
    assert response.read1(READ_SIZE) == b"data: one\n\n"
    discard(response)  # the client went away mid-stream
    assert response.read1(READ_SIZE) == b""
    gate.set()
    again = send(transport, s.url + "/x", stream=True)  # the one slot was given back
    assert read_all(again) == b"data: one\n\ndata: two\n\n"
    release(again)
    assert s.connections == 2  # the half-read connection was not reused
    transport.clear()


def test_releasing_a_half_read_stream_closes_it_too(server: t.Any) -> None:
    gate = threading.Event()
    s = server(gated_sse(gate))
    transport = Transport(maxsize=1, pool_timeout=1)
    response = send(transport, s.url + "/x", stream=True)
    assert response.read1(READ_SIZE) == b"data: one\n\n"
    release(response)  # not read to its end: closed, never handed back dirty
    gate.set()
    assert read_all(send(transport, s.url + "/x", stream=True)) == b"data: one\n\ndata: two\n\n"
    assert s.connections == 2
    transport.clear()


def test_fully_read_connections_are_reused(server: t.Any) -> None:
    gate = threading.Event()
    gate.set()
    s = server(gated_sse(gate))
    transport = Transport(maxsize=1, pool_timeout=1)
    for _ in range(5):
        response = send(transport, s.url + "/x", stream=True)
        assert read_all(response) == b"data: one\n\ndata: two\n\n"
        release(response)
        release(response)  # idempotent
        discard(response)  # a no-op once the body ended: the connection is back in the pool
    for _ in range(5):
        assert send(transport, s.url + "/x").data == b"data: one\n\ndata: two\n\n"  # no release needed
    assert s.connections == 1
    transport.clear()


def test_stream_read_timeout_maps_to_upstream_timeout(server: t.Any, transport: Transport) -> None:
    gate = threading.Event()
    s = server(gated_sse(gate))
    response = send(transport, s.url + "/x", stream=True, read_timeout=0.3)
    assert response.read1(READ_SIZE) == b"data: one\n\n"
    with pytest.raises(STREAM_ERRORS) as caught:
        response.read1(READ_SIZE)
    error = read_error(caught.value)
    assert isinstance(error, UpstreamTimeout) and "read timeout" in str(error)
    discard(response)
    gate.set()


def test_body_cut_short_is_a_broken_stream(server: t.Any, transport: Transport) -> None:
    def handle(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n")
        sock.close()

    s = server(handle)
    response = send(transport, s.url + "/x", stream=True)
    assert response.read1(READ_SIZE) == b"data: one\n\n"
    with pytest.raises(STREAM_ERRORS) as caught:
        response.read1(READ_SIZE)
    error = read_error(caught.value)
    assert isinstance(error, UpstreamUnreachable) and "upstream stream broke" in str(error)
    discard(response)
    with pytest.raises(UpstreamUnreachable, match="broke"):
        send(transport, s.url + "/x")  # not streamed: the same failure while reading the body


def test_bad_chunk_size_is_a_broken_stream(server: t.Any, transport: Transport) -> None:
    s = server(keepalive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n"))
    with pytest.raises(UpstreamUnreachable, match="bad chunk size"):
        send(transport, s.url + "/x")


# --- keep-alive: stale connections, Connection: close, HTTP/1.0 -------------------------------


def test_stale_keepalive_connection_is_retried_once_on_a_new_one(server: t.Any, transport: Transport) -> None:
    served: list[int] = []

    def handle(sock: socket.socket) -> None:  # answers one request, then closes the idle connection
        if read_request(sock):
            served.append(1)
            sock.sendall(ok())
        sock.close()

    s = server(handle)
    assert send(transport, s.url + "/x").status == 200
    time.sleep(0.1)  # the server has closed the pooled connection by now
    for _ in range(3):
        assert send(transport, s.url + "/x").data == b'{"ok":true}'
        time.sleep(0.05)
    assert len(served) == 4 and s.connections == 4


def test_reset_of_a_new_connection_before_any_byte_is_not_retried(server: t.Any, transport: Transport) -> None:
    s = server(lambda sock: (read_request(sock), sock.close()))
    with pytest.raises(UpstreamUnreachable, match="broke"):
        send(transport, s.url + "/x")
    assert s.connections == 1  # the POST was not re-sent


def test_no_retry_once_a_response_byte_arrived(server: t.Any, transport: Transport) -> None:
    requests: list[int] = []

    def handle(sock: socket.socket) -> None:
        read_request(sock)
        requests.append(1)
        sock.sendall(ok())
        if read_request(sock):
            requests.append(2)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")  # a head cut short on the reused connection
        sock.close()

    s = server(handle)
    assert send(transport, s.url + "/x").status == 200
    with pytest.raises(UpstreamUnreachable, match="broke"):
        send(transport, s.url + "/x")
    assert requests == [1, 2] and s.connections == 1


def test_read_timeout_on_a_reused_connection_is_not_retried(server: t.Any, transport: Transport) -> None:
    def handle(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(ok())
        read_request(sock)
        time.sleep(1)

    s = server(handle)
    assert send(transport, s.url + "/x").status == 200
    with pytest.raises(UpstreamTimeout, match="did not answer in time"):
        send(transport, s.url + "/x", read_timeout=0.3)
    assert s.connections == 1


def blocking_after_answer(answer: bytes) -> t.Callable[[socket.socket], None]:
    """Answer one request, then keep the connection open and silent (a reuse would time out)."""
    def handle(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(answer)
        time.sleep(2)

    return handle


def test_connection_close_is_honoured(server: t.Any, transport: Transport) -> None:
    s = server(blocking_after_answer(ok(b"bye", "Connection: close")))
    for _ in range(2):
        assert send(transport, s.url + "/x", read_timeout=1).data == b"bye"
    assert s.connections == 2


def test_http10_response_is_not_reused(server: t.Any, transport: Transport) -> None:
    s = server(blocking_after_answer(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold"))
    for _ in range(2):
        assert send(transport, s.url + "/x", read_timeout=1).data == b"old"
    assert s.connections == 2


# --- errors and the pool ----------------------------------------------------------------------


def test_connection_refused_is_unreachable(transport: Transport) -> None:
    with pytest.raises(UpstreamUnreachable, match="cannot connect to 127.0.0.1"):
        send(transport, f"http://127.0.0.1:{free_port()}/x")


def test_unknown_host_is_unreachable(transport: Transport) -> None:
    with pytest.raises(UpstreamUnreachable, match="cannot connect"):
        send(transport, "http://no-such-host.invalid/x")


def test_silent_upstream_is_a_timeout(server: t.Any, transport: Transport) -> None:
    s = server(lambda sock: (read_request(sock), time.sleep(2)))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="127.0.0.1 did not answer in time"):
        send(transport, s.url + "/x", read_timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_garbage_answer_is_unreachable(server: t.Any, transport: Transport) -> None:
    s = server(keepalive(b"SSH-2.0-OpenSSH\r\n\r\n"))
    with pytest.raises(UpstreamUnreachable, match="bad status line"):
        send(transport, s.url + "/x")


def test_exhausted_pool_waits_then_fails_clearly(server: t.Any) -> None:
    gate = threading.Event()
    s = server(gated_sse(gate))
    transport = Transport(maxsize=1, pool_timeout=0.2)
    held = send(transport, s.url + "/x", stream=True)
    started = time.monotonic()
    with pytest.raises(UpstreamUnreachable, match="no free connection to 127.0.0.1 \\(pool exhausted\\)"):
        send(transport, s.url + "/x", stream=True)
    assert 0.15 < time.monotonic() - started < 1.5
    discard(held)
    gate.set()
    release(send(transport, s.url + "/x"))  # the slot came back with discard


def test_a_waiting_request_gets_the_connection_given_back(server: t.Any) -> None:
    s = server(keepalive(ok()))
    transport = Transport(maxsize=1, pool_timeout=5)
    held = send(transport, s.url + "/x", stream=True)
    results: list[int] = []
    waiter = threading.Thread(target=lambda: results.append(send(transport, s.url + "/x").status))
    waiter.start()
    time.sleep(0.2)
    assert not results  # waiting for the only connection
    assert held.data == b'{"ok":true}'  # read to the end: back in the pool
    waiter.join(5)
    assert results == [200] and s.connections == 1
    transport.clear()


def test_failed_requests_give_their_slot_back(server: t.Any) -> None:
    transport = Transport(maxsize=1, pool_timeout=0.2)
    url = f"http://127.0.0.1:{free_port()}/x"
    for _ in range(3):
        with pytest.raises(UpstreamUnreachable, match="cannot connect"):
            send(transport, url)


def test_pool_is_recreated_after_fork(monkeypatch: pytest.MonkeyPatch, server: t.Any) -> None:
    s = server(keepalive(ok()))
    transport = Transport()
    first = transport.pool
    assert transport.pool is first
    assert send(transport, s.url + "/x").status == 200
    monkeypatch.setattr("wsgiproxy.process._pid", -42)  # what the fork hook sets in a child
    assert send(transport, s.url + "/x").status == 200  # a new pool: the parent's socket is not shared
    assert transport.pool is not first
    assert s.connections == 2


# --- HTTPS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return context, str(path)


def test_https_with_a_private_ca(server: t.Any, tls: tuple[ssl.SSLContext, str]) -> None:
    context, ca_path = tls
    s = server(keepalive(ok(b"secret")), tls=context)
    transport = Transport(ca_certs=ca_path)
    port = s.server_address[1]
    for host in ("127.0.0.1", "localhost"):
        for _ in range(3):
            assert send(transport, f"https://{host}:{port}/x").data == b"secret"
    assert s.connections == 2  # one per origin, kept alive
    transport.clear()


def test_https_stale_connection_is_retried(server: t.Any, tls: tuple[ssl.SSLContext, str]) -> None:
    context, ca_path = tls

    def handle(sock: socket.socket) -> None:
        if read_request(sock):
            sock.sendall(ok())
        sock.close()

    s = server(handle, tls=context)
    transport = Transport(ca_certs=ca_path)
    url = f"https://localhost:{s.server_address[1]}/x"
    assert send(transport, url).status == 200
    time.sleep(0.1)
    assert send(transport, url).status == 200
    assert s.connections == 2
    transport.clear()


def test_https_with_an_unknown_ca_is_a_tls_error(server: t.Any, tls: tuple[ssl.SSLContext, str]) -> None:
    s = server(keepalive(ok()), tls=tls[0])
    with pytest.raises(UpstreamUnreachable, match="TLS error talking to localhost: .*CERTIFICATE_VERIFY_FAILED"):
        send(Transport(), f"https://localhost:{s.server_address[1]}/x")


def test_https_read_timeout(server: t.Any, tls: tuple[ssl.SSLContext, str]) -> None:
    s = server(lambda sock: (read_request(sock), time.sleep(2)), tls=tls[0])
    with pytest.raises(UpstreamTimeout, match="did not answer in time"):
        send(Transport(ca_certs=tls[1]), f"https://localhost:{s.server_address[1]}/x", read_timeout=0.3)


# --- under gevent -----------------------------------------------------------------------------


def test_pool_waits_cooperatively_under_gevent(tls: tuple[ssl.SSLContext, str]) -> None:
    """A monkey-patched process: greenlets share two connections (TLS included), waiting without blocking the hub."""
    script = textwrap.dedent("""
        from gevent import monkey
        monkey.patch_all()
        import gevent, socket, ssl, sys, time
        from gevent.server import StreamServer
        from wsgiproxy.aicore.transport import Transport
        from wsgiproxy.errors import UpstreamUnreachable

        connections = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[1])

        def handle(sock, address):
            connections.append(address)
            sock = context.wrap_socket(sock, server_side=True)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
                while b"\\r\\n\\r\\n" in data:
                    head, _, data = data.partition(b"\\r\\n\\r\\n")
                    length = int([l for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length")][0]
                                 .split(b":")[1])
                    while len(data) < length:
                        data += sock.recv(65536)
                    data = data[length:]
                    gevent.sleep(0.05)
                    sock.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")

        server = StreamServer(("127.0.0.1", 0), handle)
        server.start()
        transport = Transport(maxsize=2, pool_timeout=5, ca_certs=sys.argv[2])
        url = f"https://localhost:{server.server_port}/x"

        def call():
            return transport.request("POST", url, headers={}, body=b"{}", connect_timeout=2, read_timeout=5,
                                     stream=False).data

        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(200)])
        results = [g.get() for g in [gevent.spawn(call) for _ in range(10)]]
        assert results == [b"ok"] * 10, results
        assert len(connections) == 2, connections
        assert len(ticks) > 10, len(ticks)  # the hub kept running while requests waited for a connection
        short = Transport(maxsize=1, pool_timeout=0.1, ca_certs=sys.argv[2])
        held = short.request("POST", url, headers={}, body=b"{}", connect_timeout=2, read_timeout=5, stream=True)
        try:
            short.request("POST", url, headers={}, body=b"{}", connect_timeout=2, read_timeout=5, stream=True)
        except UpstreamUnreachable as exc:
            assert "pool exhausted" in str(exc)
        else:
            raise AssertionError("no pool exhaustion")
        ticker.kill()
        print("OK")
    """)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    with cert.private_key_and_cert_chain_pem.tempfile() as chain, ca.cert_pem.tempfile() as ca_path:
        printed = python_child(script, chain, ca_path)
    assert printed.strip() == "OK"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_stream_read_without_waiting_under_gevent(scheme: str, tls: tuple[ssl.SSLContext, str]) -> None:
    """read_nowait on a gevent socket (TLS included), waited for as the pump does: every event, in
    order, ``None`` while nothing arrived; then the connection is reused by a request that waits."""
    script = textwrap.dedent("""
        from gevent import monkey
        monkey.patch_all()
        import gevent, ssl, sys
        from gevent.server import StreamServer
        from gevent.socket import wait_read
        from wsgiproxy.aicore.transport import Transport

        events = [b"data: %d\\n\\n" % n + b"x" * (n * 3000) for n in range(12)]
        tls = sys.argv[3] == "https"
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[1])
        connections = []

        def handle(sock, address):
            connections.append(address)
            if tls:
                sock = context.wrap_socket(sock, server_side=True)
            while True:
                data = b""
                while b"\\r\\n\\r\\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                sock.sendall(b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n")
                for event in events:
                    gevent.sleep(0.01)
                    sock.sendall(b"%x\\r\\n%b\\r\\n" % (len(event), event))
                sock.sendall(b"0\\r\\n\\r\\n")

        server = StreamServer(("127.0.0.1", 0), handle)
        server.start()
        transport = Transport(maxsize=1, pool_timeout=5, ca_certs=sys.argv[2])
        url = f"{sys.argv[3]}://localhost:{server.server_port}/x"
        response = transport.request("POST", url, headers={}, body=b"{}", connect_timeout=2, read_timeout=5,
                                     stream=True)
        got, nothing = [], 0
        while response.sock is not None:
            wait_read(response.sock.fileno(), timeout=5)
            data = response.read_nowait()
            if data is None:
                nothing += 1
            elif data:
                got.append(data)
        assert b"".join(got) == b"".join(events), (len(b"".join(got)), len(b"".join(events)))
        (origin,) = transport.pool.origins.values()
        (idle,) = origin.idle
        assert idle.gettimeout() is None
        again = transport.request("POST", url, headers={}, body=b"{}", connect_timeout=2, read_timeout=5,
                                  stream=True)
        assert b"".join(iter(lambda: again.read1(), b"")) == b"".join(events)  # waits between events
        assert len(connections) == 1, connections
        print("OK", nothing)
    """)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    with cert.private_key_and_cert_chain_pem.tempfile() as chain, ca.cert_pem.tempfile() as ca_path:
        printed = python_child(script, chain, ca_path, scheme)
    assert printed.startswith("OK")


# --- name resolution ------------------------------------------------------------------------------


def _count_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lookups: list[str] = []
    real = socket.getaddrinfo

    def counting(host: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        lookups.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    return lookups


def test_an_ip_literal_is_never_resolved(server: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = _count_lookups(monkeypatch)
    s = server(blocking_after_answer(ok(b"{}", "Connection: close")))  # every answer on a new connection
    transport = Transport(maxsize=4, pool_timeout=1)
    for _ in range(3):
        assert send(transport, s.url + "/x").status == 200
    transport.clear()
    assert s.connections == 3 and lookups == []


def test_a_host_name_is_resolved_once_for_many_connections(server: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = _count_lookups(monkeypatch)
    s = server(blocking_after_answer(ok(b"{}", "Connection: close")))
    url = f"http://localhost:{s.server_address[1]}/x"
    transport = Transport(maxsize=4, pool_timeout=1)
    for _ in range(3):
        assert send(transport, url).status == 200
    assert s.connections == 3 and lookups == ["localhost"]
    transport.clear()


def test_a_failed_connect_forgets_the_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = _count_lookups(monkeypatch)
    transport = Transport(maxsize=4, pool_timeout=1)
    url = f"http://localhost:{free_port()}/x"
    for _ in range(2):
        with pytest.raises(UpstreamUnreachable):
            send(transport, url)
    assert lookups.count("localhost") == 4  # each request: a lookup per connect attempt, none cached
    transport.clear()
