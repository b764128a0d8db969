"""A minimal HTTP/1.1 client for the upstream hot path: keep-alive sockets per origin, nothing else.

It does what the proxy needs and no more: one request per connection at a time, sent with one
``send``; the response head parsed with ``bytes.find``/``split``; bodies framed by
Content-Length, chunked encoding (decoded incrementally, as it arrives) or the connection's end.

Connections live in a :class:`Pool`, created per process on first use (so a preloaded app forks
safely): per origin a LIFO list of idle sockets, and a semaphore capping the connections in use.
A reused socket is not polled before use. If the server closed it while it was idle (the send
fails, or the socket ends before the first response byte) the request is sent once more on a new
connection: the request never reached the application. Nothing is re-sent once a response byte
arrived or on a timeout. A new connection that cannot be opened is tried once more.

Under gevent the sockets are blocking and each wait (the send and the response head; every body
read) is bounded by the pool's :class:`~wsgiproxy.sockets.Deadlines`, not by a gevent Timeout
per wait; with plain threads the same calls set the socket timeout.

Errors are raised as :class:`~wsgiproxy.errors.UpstreamUnreachable` and
:class:`~wsgiproxy.errors.UpstreamTimeout` while sending and waiting for the head (and reading a
non-streamed body). A streamed body's :meth:`Response.read1` raises ``OSError``: ``TimeoutError``
on a read timeout, :class:`ResponseBroken` when the framing is wrong or the body is cut short.
:meth:`Response.read_nowait` is ``read1`` for a reader driven by the event loop's readiness
callbacks: it never waits, and the read timeout is that reader's to keep.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import typing as t
import zlib
from urllib.parse import quote, urlsplit

from .. import process
from ..errors import UpstreamTimeout, UpstreamUnreachable
from ..sockets import Deadlines, send_all, wait_readable

READ_SIZE = 65536
_MAX_HEAD = 65536  # bytes of status line + headers
_MAX_SIZE_LINE = 4096  # bytes of a chunk-size line (extensions included)
_ONE_SEND = 65536  # bodies up to this size go out in the same send as the head
_USER_AGENT = "wsgiproxy"
# How long a host name's addresses are reused for new connections. Resolving under gevent is a
# round trip through its thread pool, paid by every new connection of a burst. Cloud load
# balancers change addresses slowly; a failed connect forgets them at once.
ADDRESS_TTL = 30.0

# Body framing
_LENGTH = 0
_CHUNKED = 1
_UNTIL_CLOSE = 2

# Chunked decoder states, kept in Response._left: >0 is the rest of the current chunk's data
_SIZE_LINE = 0
_DATA_END = -1  # the CRLF after a chunk's data
_TRAILER = -2  # after the last chunk: optional trailer lines, then an empty line


class ResponseBroken(ConnectionError):
    """The response is malformed or ended early (a protocol error; the connection is not reused)."""


class _Stale(Exception):
    """A reused idle connection turned out to be closed before the request reached the server."""


class _Semaphore(t.Protocol):
    def acquire(self, blocking: bool = ..., timeout: float | None = ...) -> bool: ...

    def release(self) -> None: ...


def _semaphore(value: int) -> _Semaphore:
    """gevent's (C) semaphore when threading is patched, else the (pure Python) threading one."""
    if process.gevent_patched():
        from gevent.lock import Semaphore

        return t.cast(_Semaphore, Semaphore(value))
    return threading.Semaphore(value)


def header_block(headers: t.Mapping[str, str]) -> str:
    """The request's header lines as sent (``User-Agent`` and ``Accept-Encoding`` added if missing)."""
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    block = "".join(lines)
    if block.count("\n") != len(lines) or block.count("\r") != len(lines):
        raise ValueError("a header name or value contains a line break")
    if "User-Agent" not in headers:
        block += f"User-Agent: {_USER_AGENT}\r\n"
    if "Accept-Encoding" not in headers:
        block += "Accept-Encoding: identity\r\n"
    return block


class PreparedHeaders(dict[str, str]):
    """Request headers whose lines are built once, for a caller that sends the same ones again."""

    __slots__ = ("wire",)

    def __init__(self, headers: t.Mapping[str, str]) -> None:
        super().__init__(headers)
        self.wire = header_block(self)


class Headers(dict[str, str]):
    """Response headers, names lowercased; repeated headers are joined with ``", "``."""

    def get(self, name: str, default: t.Any = None) -> t.Any:
        value = dict.get(self, name)
        if value is None:
            return dict.get(self, name.lower(), default)
        return value


class Origin:
    """One scheme + host + port: its idle connections and the semaphore over connections in use."""

    __slots__ = ("host", "port", "tls", "label", "host_header", "idle", "slots", "closed", "addresses",
                 "resolved_at", "literal")

    def __init__(self, host: str, port: int, tls: bool, host_header: str, maxsize: int) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.label = host
        self.host_header = host_header
        self.idle: list[socket.socket] = []
        self.slots = _semaphore(maxsize)
        self.closed = False
        self.literal = _literal_address(host, port)
        self.addresses: list[tuple[int, t.Any]] = [self.literal] if self.literal else []
        self.resolved_at = 0.0

    def resolve(self) -> list[tuple[int, t.Any]]:
        """(family, sockaddr) pairs to connect to: an IP literal as is, a name cached for ADDRESS_TTL."""
        if self.literal or (self.addresses and time.monotonic() - self.resolved_at < ADDRESS_TTL):
            return self.addresses
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        self.addresses = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
        self.resolved_at = time.monotonic()
        return self.addresses

    def forget_addresses(self) -> None:
        if not self.literal:
            self.addresses = []

    def give_back(self, sock: socket.socket) -> None:
        if self.closed:
            sock.close()
        else:
            self.idle.append(sock)
        self.slots.release()

    def close_idle(self) -> None:
        self.closed = True
        while self.idle:
            self.idle.pop().close()


class Response:
    """One upstream response: ``status``, ``headers`` (lowercase names), ``data``, ``read1``.

    A body read to its end hands the connection back to the pool at once; :meth:`close` (or
    :meth:`release_conn` before the end) closes a partly read one, which is never reused.
    """

    __slots__ = ("status", "reason", "version", "headers", "_sock", "_origin", "_buf", "_mode", "_left",
                 "_keep", "_done", "_data", "_decoder", "_deadlines", "_timeout", "_nowait")

    def __init__(self, status: int, reason: str, version: int, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self._sock: socket.socket | None = None
        self._origin: Origin | None = None
        self._buf = b""  # received, not yet decoded
        self._mode = _LENGTH
        self._left = 0  # _LENGTH: bytes still to come; _CHUNKED: the decoder state
        self._keep = False
        self._done = True
        self._data: bytes | None = None
        self._decoder: t.Any = None
        self._deadlines: Deadlines | None = None
        self._timeout: float | None = None
        self._nowait = False  # read_nowait was used: the socket's gevent timeout is 0 until the body ends

    def _attach(self, sock: socket.socket, origin: Origin, rest: bytes, method: str, deadlines: Deadlines,
                timeout: float) -> None:
        """Own ``sock`` (and the origin's slot) and work out how the body is framed."""
        self._sock = sock
        self._origin = origin
        self._deadlines = deadlines
        self._timeout = timeout
        self._buf = rest
        get = dict.get
        headers = self.headers
        self._keep = self.version == 11 and "close" not in get(headers, "connection", "").lower()
        status = self.status
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            self._left = 0
        elif "chunked" in get(headers, "transfer-encoding", "").lower():
            self._mode = _CHUNKED
        elif (length := get(headers, "content-length")) is not None:
            self._left = int(length) if length.isdigit() and length.isascii() else _content_length(length)
        else:
            self._mode = _UNTIL_CLOSE
            self._keep = False
        encoding = get(headers, "content-encoding")
        if encoding is not None and encoding.lower() in ("gzip", "x-gzip", "deflate"):
            self._decoder = _Decoder(encoding.lower())
        self._done = False
        if self._mode == _LENGTH and self._left == 0:
            self._finish()

    @property
    def data(self) -> bytes:
        """The whole body (read on first use, then kept)."""
        if self._data is None:
            parts = []
            while chunk := self._read(READ_SIZE, False):  # ends at the body's end; each read waits at most read_timeout
                parts.append(chunk)
            self._data = parts[0] if len(parts) == 1 else b"".join(parts)  # b"" for an empty body
        return self._data

    def read1(self, amt: int = READ_SIZE) -> bytes:
        """Body bytes as they arrive: what one socket read completes (more reads only while that is
        nothing, e.g. a chunk-size line split across packets); ``b""`` at the end of the body.

        Each call waits for the socket before it reads: a streamed body's next event comes long
        after the last one was relayed, so a read first would fail (and raise) almost every time.
        """
        return self._read(amt, True)

    @property
    def sock(self) -> socket.socket | None:
        """The socket the body is read from; ``None`` once the body ended (or was closed)."""
        return self._sock

    @property
    def read_timeout(self) -> float | None:
        """The longest wait for the next body bytes."""
        return self._timeout

    def read_nowait(self, amt: int = READ_SIZE) -> bytes | None:
        """``read1`` that never waits: ``None`` while no body bytes have arrived.

        For a gevent socket only. From the first call on, the socket's reads fail at once instead
        of waiting (gevent timeout 0) and no read deadline is armed: whoever calls this waits for
        the socket and keeps the read timeout. The socket waits again once it is back in the pool.
        """
        sock = self._sock
        if sock is None:
            return b""
        if not self._nowait:
            self._nowait = True
            self._deadlines.disarm(sock)  # type: ignore[union-attr]
            sock.settimeout(0.0)
        data = self._read_available(amt)
        # TLS: a whole record is read at a time (at most 16 KB, less than amt), so decrypted bytes
        # are rarely left behind; the socket would not wake its reader for them.
        while data and isinstance(sock, ssl.SSLSocket) and self._sock is not None and sock.pending():
            data += self._read_available(amt) or b""
        return data

    def _read_available(self, amt: int) -> bytes | None:
        try:
            return self._read(amt, False)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None

    def _read(self, amt: int, wait_first: bool) -> bytes:
        if self._done:
            return b""
        sock = self._sock
        assert sock is not None
        receive = not self._buf
        while True:  # every pass reads at least one byte from the socket, or ends the body
            if receive:
                if not self._nowait:
                    self._deadlines.arm(sock, self._timeout)  # type: ignore[union-attr]
                if wait_first:
                    wait_readable(sock)
                    wait_first = False
                data = sock.recv(amt)
                if not data:
                    return self._eof()
                raw = self._buf + data if self._buf else data
            else:
                raw = self._buf
                receive = True
            self._buf = b""
            mode = self._mode
            if mode == _CHUNKED:
                out = self._dechunk(raw)
            elif mode == _LENGTH:
                left = self._left
                if len(raw) >= left:
                    out = raw if len(raw) == left else raw[:left]
                    if len(raw) > left:
                        self._keep = False  # more than the body: do not trust this connection
                    self._left = 0
                    self._done = True
                else:
                    out = raw
                    self._left = left - len(raw)
            else:
                out = raw
            if self._decoder is not None:
                out = self._decoder.feed(out, self._done)
            if self._done:
                self._finish()
                return out
            if out:
                return out

    def _eof(self) -> bytes:
        if self._mode == _UNTIL_CLOSE:
            self._done = True
            out = self._decoder.feed(b"", True) if self._decoder is not None else b""
            self._finish()
            return out
        missing = f"{self._left} more bytes" if self._mode == _LENGTH else "the rest of the chunked body"
        raise ResponseBroken(f"connection closed before the end of the response body ({missing} expected)")

    def _dechunk(self, raw: bytes) -> bytes:
        """Decode what ``raw`` completes of a chunked body; keeps an unfinished tail in ``_buf``."""
        end = len(raw)
        state = self._left
        if state == _SIZE_LINE:  # the usual stream read: exactly one whole chunk, one event
            eol = raw.find(b"\r\n", 0, 18)
            if eol > 0:
                try:
                    size = int(raw[:eol], 16)
                except ValueError:
                    size = 0
                if size > 0 and eol + size + 4 == end and raw.endswith(b"\r\n"):
                    return raw[eol + 2:end - 2]
        out: list[bytes] = []
        pos = 0
        while pos < end:
            if state > 0:  # inside a chunk's data
                take = min(state, end - pos)
                out.append(raw[pos:pos + take])
                pos += take
                state -= take
                if state == 0:
                    state = _DATA_END
            elif state == _SIZE_LINE:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > _MAX_SIZE_LINE:
                        raise ResponseBroken("chunk size line too long")
                    break
                line = raw[pos:eol]
                semicolon = line.find(b";")
                try:
                    size = int(line if semicolon < 0 else line[:semicolon], 16)
                except ValueError:
                    raise ResponseBroken(f"bad chunk size line {line[:40]!r}") from None
                if size < 0:
                    raise ResponseBroken(f"bad chunk size line {line[:40]!r}")
                pos = eol + 2
                if size and raw.startswith(b"\r\n", pos + size):  # the whole chunk and its CRLF: one step
                    out.append(raw[pos:pos + size])
                    pos += size + 2
                    continue
                state = size if size else _TRAILER
            elif state == _DATA_END:
                if end - pos < 2:
                    break
                if raw[pos:pos + 2] != b"\r\n":
                    raise ResponseBroken("chunk data not followed by CRLF")
                pos += 2
                state = _SIZE_LINE
            else:  # _TRAILER
                if raw.startswith(b"\r\n", pos):
                    pos += 2
                else:
                    blank = raw.find(b"\r\n\r\n", pos)
                    if blank < 0:
                        if end - pos > _MAX_HEAD:
                            raise ResponseBroken("chunked trailer too long")
                        break
                    pos = blank + 4
                self._done = True
                if pos < end:
                    self._keep = False  # bytes after the body: do not trust this connection
                pos = end
        self._left = state
        if pos < end:
            self._buf = raw[pos:]
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _finish(self) -> None:
        """The body is complete: the connection goes back to the pool (or is closed)."""
        self._done = True
        sock, origin = self._sock, self._origin
        self._sock = self._origin = None
        if sock is None or origin is None:
            return
        self._deadlines.disarm(sock)  # type: ignore[union-attr]
        if self._keep and not self._buf:
            if self._nowait:
                sock.settimeout(None)  # pooled sockets wait (bounded by the pool's deadlines)
            origin.give_back(sock)
        else:
            sock.close()
            origin.slots.release()

    def release_conn(self) -> None:
        """Nothing to do once the body was read to its end; a partly read response is closed."""
        if self._sock is not None:
            self.close()

    def close(self) -> None:
        """Close the connection unless it already went back to the pool (idempotent)."""
        self._done = True
        sock, origin = self._sock, self._origin
        self._sock = self._origin = None
        if sock is not None:
            self._deadlines.disarm(sock)  # type: ignore[union-attr]
            try:
                sock.close()
            finally:
                if origin is not None:
                    origin.slots.release()


class _Decoder:
    """gzip/deflate content decoding (asked for only by ``Accept-Encoding``; SAP AI Core sends identity)."""

    def __init__(self, encoding: str) -> None:
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS)
        self._first = encoding == "deflate"

    def feed(self, data: bytes, last: bool) -> bytes:
        if self._first and data:
            self._first = False
            try:
                out = self._zlib.decompress(data)
            except zlib.error:  # "deflate" sent as a raw stream without the zlib header
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                out = self._zlib.decompress(data)
        else:
            try:
                out = self._zlib.decompress(data) if data else b""
            except zlib.error as exc:
                raise ResponseBroken(f"cannot decode the response body: {exc}") from None
        return out + self._zlib.flush() if last else out


def _content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        raise ResponseBroken(f"conflicting Content-Length {value[:40]!r}")
    text = values.pop()
    if not (text.isdigit() and text.isascii()):
        raise ResponseBroken(f"bad Content-Length {text[:40]!r}")
    return int(text)


def parse_head(head: bytes) -> Response:
    """The status line and headers (``head`` without the blank line that ends it)."""
    text = head.decode("latin-1")
    if "\r\n" not in text and "\n" in text:  # bare-LF head
        text = text.replace("\n", "\r\n")
    status_line, _, rest = text.partition("\r\n")
    protocol, _, status = status_line.partition(" ")
    code = status[:3]
    if (not protocol.startswith("HTTP/") or len(code) != 3 or not (code.isdigit() and code.isascii())
            or status[3:4] not in ("", " ")):
        raise ResponseBroken(f"bad status line {status_line[:80]!r}")
    headers = Headers()
    if rest:
        lines = rest.split("\r\n")
        if "\n " not in rest and "\n\t" not in rest and rest[0] not in " \t":
            try:
                pairs = [line.split(":", 1) for line in lines]
                headers.update({name.strip().lower(): value.strip() for name, value in pairs})
            except ValueError:  # a line without a colon
                pass
            else:
                if len(headers) == len(pairs):
                    return Response(int(code), status[4:], 11 if protocol == "HTTP/1.1" else 10, headers)
                headers.clear()  # a repeated header: join the values below
        _parse_lines(lines, headers)
    return Response(int(code), status[4:], 11 if protocol == "HTTP/1.1" else 10, headers)


def _parse_lines(lines: list[str], headers: Headers) -> None:
    """The general case: repeated headers joined with ", ", folded lines unfolded, junk lines ignored."""
    name = ""
    for line in lines:
        if line[:1] in (" ", "\t"):  # obsolete line folding: continues the previous header
            if name:
                headers[name] = f"{headers[name]} {line.strip()}"
            continue
        name, colon, value = line.partition(":")
        if not colon:
            name = ""
            continue  # not a header line; ignored like http.client does
        name = name.strip().lower()
        value = value.strip()
        previous = dict.get(headers, name)
        headers[name] = value if previous is None else f"{previous}, {value}"


def _find_head_end(buf: bytes) -> tuple[int, int]:
    """``(end of the head, start of the body)``, or ``(-1, -1)`` while the head is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end >= 0:
        return end, end + 4
    end = buf.find(b"\n\n")  # bare-LF heads, tolerated like http.client does
    if end >= 0:
        return end, end + 2
    return -1, -1


def _literal_address(host: str, port: int) -> tuple[int, t.Any] | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family, (host, port)
    return None


def _open(origin: Origin, connect_timeout: float) -> socket.socket:
    """Like ``socket.create_connection``, with the origin's cached addresses; forgets them on failure."""
    error: OSError | None = None
    try:
        addresses = origin.resolve()
    except OSError:
        origin.forget_addresses()
        raise
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    origin.forget_addresses()
    raise error or OSError(f"no address for {origin.host}")


def short_reason(exc: BaseException) -> str:
    """An exception's message, short enough for a client's error and a log line."""
    text = str(exc.args[0] if exc.args else exc) or type(exc).__name__
    return text[:160]


def _closed_while_idle(exc: OSError) -> bool:
    """Whether a reused connection failed the way one closed by the server while idle does."""
    if isinstance(exc, ssl.SSLError):
        return isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError))
    return not isinstance(exc, (TimeoutError, ResponseBroken))  # reset, broken pipe


def _failure(exc: OSError, origin: Origin, timed_out: str) -> UpstreamTimeout | UpstreamUnreachable:
    """A socket or TLS error talking to ``origin`` as the error the proxy reports."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(timed_out)
    if isinstance(exc, ssl.SSLError):
        return UpstreamUnreachable(f"TLS error talking to {origin.label}: {exc}")
    return UpstreamUnreachable(f"connection to {origin.label} broke: {short_reason(exc)}")


_SAFE_PATH = "/?&=%:@!$'()*+,;~-._[]#"


class Pool:
    """Keep-alive connections per origin, for the process that created it.

    :param maxsize: connections in use at once per origin; more requests wait for one.
    :param pool_timeout: seconds to wait for a free connection before giving up.
    :param ca_certs: CA bundle for HTTPS (else the system's).
    """

    def __init__(self, maxsize: int, pool_timeout: float, ca_certs: str | None) -> None:
        self.maxsize = maxsize
        self.pool_timeout = pool_timeout
        self.ca_certs = ca_certs
        self.pid = process.pid()
        self.origins: dict[str, Origin] = {}
        self._tls: ssl.SSLContext | None = None
        self.deadlines = Deadlines()

    def request(
        self,
        method: str,
        url: str,
        headers: t.Mapping[str, str],
        body: bytes | None,
        connect_timeout: float,
        read_timeout: float,
        stream: bool,
    ) -> Response:
        sep = url.find("://")
        slash = url.find("/", sep + 3)
        key, path = (url, "/") if slash < 0 else (url[:slash], url[slash:])
        origin = self.origins.get(key)
        if origin is None:
            origin, path = self._origin(url, key, path)
        if not (path.isascii() and path.isprintable()) or " " in path:
            path = quote(path, safe=_SAFE_PATH)
        block = headers.wire if type(headers) is PreparedHeaders else header_block(headers)
        length = f"Content-Length: {len(body) if body else 0}\r\n" if (
            body is not None or method in ("POST", "PUT", "PATCH")) else ""
        head = f"{method} {path} HTTP/1.1\r\nHost: {origin.host_header}\r\n{block}{length}\r\n".encode("latin-1")
        tail = b""
        if body:
            if len(body) <= _ONE_SEND:
                head += body
            else:
                tail = body

        if not origin.slots.acquire(True, self.pool_timeout):
            raise UpstreamUnreachable(f"no free connection to {origin.label} (pool exhausted)")
        try:
            response = self._exchange(origin, method, head, tail, connect_timeout, read_timeout)
        except BaseException:
            origin.slots.release()
            raise
        if not stream:
            try:
                response.data  # noqa: B018 - read the body now; the connection goes back to the pool
            except OSError as exc:
                response.close()
                raise _failure(exc, origin, f"{origin.label} did not answer in time") from exc
            except BaseException:
                response.close()
                raise
        return response

    def _exchange(self, origin: Origin, method: str, head: bytes, tail: bytes,
                  connect_timeout: float, read_timeout: float) -> Response:
        idle = origin.idle
        if idle:
            try:
                return self._send(origin, idle.pop(), False, method, head, tail, read_timeout)
            except _Stale:
                pass  # closed by the server while idle: the request never reached it
        sock = self._connect(origin, connect_timeout)
        return self._send(origin, sock, True, method, head, tail, read_timeout)

    def _send(self, origin: Origin, sock: socket.socket, fresh: bool, method: str, head: bytes, tail: bytes,
              read_timeout: float) -> Response:
        """Send the request on ``sock`` and read the response head; ``sock`` is closed on failure."""
        buf = b""
        received = False
        deadlines = self.deadlines
        try:
            deadlines.arm(sock, read_timeout)
            send_all(sock, head)
            if tail:
                sock.sendall(tail)
            wait_readable(sock)  # the answer takes at least a round trip: no recv that fails first
            while True:  # bounded: a pass receives bytes (at most _MAX_HEAD of them) or consumes a head
                end, start = _find_head_end(buf) if buf else (-1, -1)
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise ResponseBroken("response head too long")
                    data = sock.recv(READ_SIZE)
                    if not data:
                        if not received and not fresh:
                            raise _Stale
                        raise ResponseBroken("the server closed the connection inside the response head"
                                             if received else "the server closed the connection without a response")
                    received = True
                    buf = buf + data if buf else data
                    continue
                response = parse_head(buf[:end])
                if 100 <= response.status < 200 and response.status != 101:
                    buf = buf[start:]  # an interim answer (100 Continue, 103 Early Hints): the real one follows
                    continue
                response._attach(sock, origin, buf[start:], method, deadlines, read_timeout)
                return response
        except _Stale:
            deadlines.disarm(sock)
            sock.close()
            raise
        except OSError as exc:
            deadlines.disarm(sock)
            sock.close()
            if not received and not fresh and _closed_while_idle(exc):
                raise _Stale from None
            raise _failure(exc, origin, f"{origin.label} did not answer in time") from exc
        except BaseException:
            deadlines.disarm(sock)
            sock.close()
            raise

    def _connect(self, origin: Origin, connect_timeout: float) -> socket.socket:
        """A new connection (TLS handshake included); a failure to connect is retried once."""
        error: Exception | None = None
        for _attempt in (1, 2):
            try:
                sock = _open(origin, connect_timeout)
            except TimeoutError:
                error = UpstreamTimeout(f"connecting to {origin.label} timed out")
            except OSError:
                error = UpstreamUnreachable(f"cannot connect to {origin.label}")
            else:
                break
        else:
            assert error is not None
            raise error
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if origin.tls:
                sock = self._tls_context().wrap_socket(sock, server_hostname=origin.host)
            self.deadlines.adopt(sock)
        except OSError as exc:
            sock.close()
            raise _failure(exc, origin, f"connecting to {origin.label} timed out") from exc
        except BaseException:
            sock.close()
            raise
        return sock

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            # Looked up at call time, so under gevent this is the patched (cooperative) SSLContext.
            context = ssl.create_default_context(cafile=self.ca_certs or None)
            context.set_alpn_protocols(["http/1.1"])
            self._tls = context
        return self._tls

    def _origin(self, url: str, key: str, path: str) -> tuple[Origin, str]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        if scheme not in ("http", "https") or not host:
            raise UpstreamUnreachable(f"request to {host or url[:80]} failed: not an http(s) URL")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise UpstreamUnreachable(f"request to {host} failed: bad port in URL") from None
        netloc = parts.netloc.rpartition("@")[2]
        clean = f"{parts.scheme}://{parts.netloc}"
        if clean != key:  # a query right after the host ("https://h?x"): not cached under the raw key
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            key = clean
        origin = self.origins.get(key)
        if origin is None:
            origin = self.origins[key] = Origin(host, port, scheme == "https", netloc, self.maxsize)
        return origin, path

    def clear(self) -> None:
        """Close every idle connection; those in use are closed when their response ends."""
        origins, self.origins = self.origins, {}
        for origin in origins.values():
            origin.close_idle()
