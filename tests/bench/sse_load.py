"""A load generator for concurrent SSE streams: keeps N streams open, measures each one.

One thread, one epoll loop, non-blocking sockets and keep-alive connections (as SDK clients
reuse theirs), so the generator costs little CPU next to what it measures. Each connection runs
streams back to back until ``--duration`` ends; then the in-flight streams finish (bounded by
``--timeout``). With ``--rate``, streams start at that many per second in all instead, evenly
spaced, each on a connection that is free (one that is not waits for its turn): every target gets
the same offered load, where back to back each gets as many streams as it finishes. Per stream:
time to first response byte (from connect start for a new connection, else from sending the
request), total time, ``data:`` events seen, and whether the stream completed (``data: [DONE]``
arrived, or what ``--done`` says). Prints one JSON object (and writes it to ``--out``)::

    python -m tests.bench.sse_load --url http://127.0.0.1:3001/v1/chat/completions \\
        --body-file body.json --key sk-... --concurrency 1000 --duration 10
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import resource
import select
import socket
import time
import typing as t
import urllib.parse

_EOL = b"\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


def percentile(values: t.Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


class Conn:
    __slots__ = ("sock", "connecting", "t0", "t_first", "buf", "head_len", "status", "chunked", "length",
                 "keepalive", "fd")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.connecting = True
        self.keepalive = True
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.t0 = now
        self.t_first = 0.0
        self.buf = bytearray()
        self.head_len = 0  # 0 until the header block is parsed
        self.status = 0
        self.chunked = False
        self.length = -1  # Content-Length, -1 when absent

    def parse_head(self) -> bool:
        end = self.buf.find(_EOL)
        if end < 0:
            return False
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        version, _, rest = head[0].partition(" ")
        self.status = int(rest[:3]) if rest[:3].isdigit() else 0
        self.keepalive = version == "HTTP/1.1"
        for line in head[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "transfer-encoding" and "chunked" in value:
                self.chunked = True
            elif name == "content-length":
                self.length = int(value)
            elif name == "connection":
                self.keepalive = value != "close" if version == "HTTP/1.1" else value == "keep-alive"
        self.head_len = end + 4
        return True

    def complete(self) -> bool:
        """Whether the response is complete (chunked: the last chunk arrived; else Content-Length)."""
        body_len = len(self.buf) - self.head_len
        if self.chunked:
            return self.buf.endswith(_LAST_CHUNK) and (body_len == 5 or self.buf.endswith(b"\r\n" + _LAST_CHUNK))
        if self.length >= 0:
            return body_len >= self.length
        return False  # close-delimited: complete at EOF


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        url = urllib.parse.urlsplit(args.url)
        self.addr = (url.hostname or "127.0.0.1", url.port or 80)
        body = open(args.body_file, "rb").read()
        headers = [f"POST {url.path}{'?' + url.query if url.query else ''} HTTP/1.1", f"Host: {url.netloc}",
                   "Content-Type: application/json", "Accept: text/event-stream", f"Content-Length: {len(body)}"]
        if args.key:
            headers.append(f"Authorization: Bearer {args.key}")
        self.request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body
        self.args = args
        self.epoll = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.started = 0
        self.ttfb: list[float] = []
        self.total: list[float] = []
        self.events: list[int] = []
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.connections = 0
        self.done_marker = args.done.encode()  # what a complete stream contains
        self.rate = args.rate  # streams started per second in all; 0: back to back on every connection
        self.idle: collections.deque[Conn] = collections.deque()  # connected, waiting for a start (with a rate)
        self.next_start = 0.0

    # -- bookkeeping ------------------------------------------------------------------------
    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{kind}: {detail}"[:200])

    def may_start(self, now: float) -> bool:
        return now < self.deadline and self.started < self.args.max_streams

    def open(self, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(sock)
        conn.t0 = now
        if not self.rate:
            self.started += 1
        self.connections += 1
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            self.error("connect", errno.errorcode.get(err, str(err)))
            sock.close()
            return
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, select.EPOLLOUT)

    def close(self, conn: Conn) -> None:
        self.conns.pop(conn.fd, None)
        try:
            self.epoll.unregister(conn.fd)
        except OSError:
            pass
        conn.sock.close()

    def finish(self, conn: Conn, now: float) -> None:
        """A complete response: record it, then run the next stream on this connection or close it."""
        body = bytes(conn.buf[conn.head_len:])
        done = self.done_marker in body
        if conn.status == 200 and done:
            self.ok += 1
            self.ttfb.append(conn.t_first - conn.t0)
            self.total.append(now - conn.t0)
            self.events.append(body.count(b"data: "))
        elif conn.status != 200:
            self.error(f"status_{conn.status}", body[:160].decode("latin-1"))
        else:
            self.error("incomplete", f"no {self.done_marker.decode()!r} after {len(body)} bytes")
        if conn.keepalive and self.may_start(now):
            if self.rate:
                self.idle.append(conn)
                return
            self.started += 1
            conn.reset(now)
            self.send(conn)
        else:
            self.close(conn)
            if self.may_start(now):
                self.open(now)

    def send(self, conn: Conn) -> None:
        try:
            conn.sock.send(self.request)  # small: fits the empty socket buffer
        except OSError as exc:
            self.error("send", str(exc))
            self.close(conn)
            if self.may_start(time.perf_counter()):
                self.open(time.perf_counter())

    def start_due(self, now: float) -> float:
        """With a rate: start the streams whose time has come on free connections; seconds to the next start."""
        while self.idle and now >= self.next_start:
            if not self.may_start(now):
                while self.idle:
                    self.close(self.idle.popleft())
                return 0.05
            conn = self.idle.popleft()
            self.started += 1
            conn.reset(now)
            self.send(conn)
            self.next_start += 1.0 / self.rate
        if not self.idle:
            self.next_start = max(self.next_start, now)  # no free connection: the next start waits for one
            return 0.05
        return min(0.05, self.next_start - now)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, t.Any]:
        args = self.args
        begin = time.perf_counter()
        self.deadline = begin + args.duration
        hard_deadline = self.deadline + args.timeout
        self.next_start = begin
        for _ in range(args.concurrency):
            self.open(begin)
        last_sweep = begin
        wait = 0.05
        while self.conns:
            now = time.perf_counter()
            if self.rate:
                wait = self.start_due(now)
            if now > hard_deadline:
                for conn in list(self.conns.values()):
                    self.error("timeout", "still open at the hard deadline")
                    self.close(conn)
                break
            for fd, _mask in self.epoll.poll(max(wait, 0.0)):
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                now = time.perf_counter()
                if conn.connecting:
                    err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        self.error("connect", errno.errorcode.get(err, str(err)))
                        self.close(conn)
                        if self.may_start(now):
                            self.open(now)
                        continue
                    conn.connecting = False
                    self.epoll.modify(fd, select.EPOLLIN)
                    if self.rate:
                        self.idle.append(conn)
                    else:
                        self.send(conn)
                    continue
                try:
                    data = conn.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    data = b""
                    self.error("reset", str(exc))
                    self.close(conn)
                    if self.may_start(now):
                        self.open(now)
                    continue
                if not data:
                    if conn.head_len and not conn.chunked and conn.length < 0:
                        conn.keepalive = False
                        self.finish(conn, now)  # close-delimited body ends here
                    else:
                        self.error("eof", f"connection closed after {len(conn.buf)} bytes")
                        self.close(conn)
                        if self.may_start(now):
                            self.open(now)
                    continue
                if not conn.t_first:
                    conn.t_first = now
                conn.buf += data
                if not conn.head_len and not conn.parse_head():
                    continue
                if conn.complete():
                    self.finish(conn, now)
            if now - last_sweep > 0.5:  # per-stream timeout
                last_sweep = now
                waiting = set(self.idle)
                for conn in list(self.conns.values()):
                    if conn not in waiting and now - conn.t0 > args.timeout:
                        self.error("timeout", f"no complete answer within {args.timeout}s")
                        self.close(conn)
                        if self.may_start(now):
                            self.open(now)
        elapsed = time.perf_counter() - begin
        failed = sum(self.errors.values())
        ms = 1000.0
        return {
            "concurrency": args.concurrency,
            "rate": self.rate,
            "duration_s": round(elapsed, 3),
            "streams": self.ok + failed,
            "completed": self.ok,
            "errors": failed,
            "error_kinds": self.errors,
            "error_samples": self.error_samples,
            "connections": self.connections,
            "streams_per_s": round(self.ok / elapsed, 1) if elapsed else 0.0,
            "ttfb_ms": {q: round(percentile(self.ttfb, float(q[1:])) * ms, 2) for q in ("p50", "p90", "p99")}
            | {"max": round(max(self.ttfb, default=0) * ms, 2)},
            "total_ms": {q: round(percentile(self.total, float(q[1:])) * ms, 2) for q in ("p50", "p90", "p99")}
            | {"max": round(max(self.total, default=0) * ms, 2)},
            "events_min": min(self.events, default=0),
            "loadgen_cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 3),
        }


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds during which new streams start")
    parser.add_argument("--max-streams", type=int, default=1_000_000, help="bound on streams started")
    parser.add_argument("--done", default="data: [DONE]",
                        help="what a complete stream contains (Anthropic streams: 'event: message_stop')")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="streams started per second in all (0: back to back on every connection)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one stream may take")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.concurrency * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    result = Load(args).run()
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
