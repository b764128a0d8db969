"""A gunicorn gevent worker whose HTTP/1.1 connection loop costs a fraction of the stock one.

gunicorn's own gevent worker spends about as much CPU per request on its parser, environ and
response objects as the whole proxy spends on a request (``make bench``: the ``floor`` target).
This worker keeps everything gunicorn's master and ``GeventWorker`` do: the accept loop and its
connection pool, the heartbeat, signals, graceful stop and reload, ``max_requests``, the
``pre_request``/``post_request`` hooks and the access log. It replaces only the per-connection
loop: read a request head with one ``recv``, parse it with two regular-expression scans, build
the environ, and send a response head and body with one ``send``.

It speaks HTTP/1.0 and HTTP/1.1 (keep-alive, pipelining, ``Content-Length`` and chunked request
bodies, ``Expect: 100-continue``, chunked responses) and is strict where a lenient parser is a
request-smuggling risk: obsolete line folding, a ``Transfer-Encoding`` other than ``chunked``,
both ``Transfer-Encoding`` and ``Content-Length``, repeated ``Content-Length``, or a malformed
chunk are answered with 400 and the connection is closed. Header names with an underscore are
dropped, as gunicorn does by default. HTTP/2 is not served; run the stock ``gevent`` worker
(``WSGIPROXY_WORKER_CLASS=gevent``) for that.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import logging
import os
import re
import socket
import ssl
import sys
import time
import typing as t
from email.utils import formatdate
from urllib.parse import unquote_to_bytes, urlsplit

import gevent
from gunicorn.workers.ggevent import GeventWorker

from servers.pump import Pacer, Pump, relay_slice
from wsgiproxy.sockets import Deadlines, send_all, wait_readable

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from wsgiproxy.streaming import Pushable

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_HEADER_LINE = rb"(" + _TOKEN + rb"):([\t\x20-\x7e\x80-\xff]*)\r\n"
_HEADER_BLOCK = re.compile(rb"(?:" + _HEADER_LINE + rb")*")
_HEADER_PAIRS = re.compile(_HEADER_LINE)
_METHOD = re.compile(rb"[A-Z][A-Z0-9!#$%&'*+\-.^_`|~]*")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailer", "trailers", "transfer-encoding", "upgrade"})
_NO_BODY_STATUS = frozenset({204, 304})
_REASONS = {400: "Bad Request", 413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
            505: "HTTP Version Not Supported"}
_RECV = 65536
_DRAIN_LIMIT = 1 << 20  # unread request body bytes discarded to keep a connection; more closes it
_MAX_TRAILERS = 8192
_CACHED_LINES = 256  # distinct request lines parsed once per worker (more: the cache starts over)
# Header fields the parser acts on, by environ key ("": a name with an underscore, dropped).
_DROPPED, _LENGTH, _TRANSFER_ENCODING, _CONNECTION, _EXPECT = 1, 2, 3, 4, 5
_SPECIAL_HEADERS = {"": _DROPPED, "CONTENT_LENGTH": _LENGTH, "HTTP_TRANSFER_ENCODING": _TRANSFER_ENCODING,
                    "HTTP_CONNECTION": _CONNECTION, "HTTP_EXPECT": _EXPECT}
# method, RAW_URI, path, query, fragment, PATH_INFO, HTTP/1.1
_RequestLine = tuple[str, str, str, str, str, str, bool]


class BadRequest(ValueError):
    """A request this worker will not serve: answered with ``status`` and the connection closed.

    A ``ValueError``: an app reading a malformed chunked body from ``wsgi.input`` gets one.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _ClientGone(ConnectionResetError):
    """The client closed the connection in the middle of a request head or body (an ``OSError``)."""


class _DateHeader:
    """The ``Date`` header line, formatted at most once per second."""

    __slots__ = ("second", "line")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def get(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("ascii")
        return self.line


class Request:
    """What gunicorn's hooks and access log read from a request (a subset of gunicorn's ``Request``)."""

    __slots__ = ("method", "uri", "path", "query", "fragment", "version", "_pairs", "_headers", "proxy_protocol_info")

    def __init__(self, method: str, uri: str, path: str, query: str, fragment: str, version: tuple[int, int],
                 pairs: list[tuple[bytes, bytes]]) -> None:
        self.method = method
        self.uri = uri
        self.path = path
        self.query = query
        self.fragment = fragment
        self.version = version
        self._pairs = pairs
        self._headers: list[tuple[str, str]] | None = None
        self.proxy_protocol_info = None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """``(NAME, value)`` pairs as gunicorn gives them: names upper-cased, values stripped."""
        if self._headers is None:
            self._headers = [(name.decode("latin-1").upper(), value.strip(b" \t").decode("latin-1"))
                             for name, value in self._pairs]
        return self._headers


class Response:
    """The response of one request: its status line and headers as the app gave them, bytes sent."""

    __slots__ = ("status", "headers", "sent", "status_code", "headers_sent", "chunked", "length", "must_close",
                 "body_allowed")

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent = 0
        self.status_code = 0
        self.headers_sent = False
        self.chunked = False
        self.length: int | None = None
        self.must_close = False
        self.body_allowed = True


class _Input:
    """``wsgi.input`` for one request: reads the body from what the head's ``recv`` left, then the socket.

    ``length`` is the Content-Length, or -1 for a chunked body (decoded here). What is read
    past the body (a pipelined request) is kept in ``leftover``.
    """

    __slots__ = ("_sock", "_buf", "_pending", "_remaining", "_chunked", "_chunk_left", "_done", "leftover",
                 "_continue", "_broken")

    def __init__(self, sock: socket.socket, buf: bytes, length: int, send_continue: bool) -> None:
        self._sock = sock
        self._chunked = length < 0
        self._remaining = 0 if self._chunked else length
        self._chunk_left = 0
        self._pending = b""  # body bytes handed back by readline
        self._done = length == 0
        self._continue = send_continue and not self._done
        self._broken = False  # a read failed: where the next request starts is unknown
        if self._chunked or len(buf) <= length:
            self._buf = buf
            self.leftover = b""
        else:
            self._buf = buf[:length]
            self.leftover = buf[length:]

    # --- the raw byte source: the buffer first, then the socket -------------------------------

    def _recv(self) -> bytes:
        if self._continue:
            self._continue = False
            self._sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        data = self._sock.recv(_RECV)
        if not data:
            raise _ClientGone("the client closed the connection before the request body ended")
        return data

    def _take(self, size: int) -> bytes:
        """Up to ``size`` raw bytes (at least one)."""
        if not self._buf:
            self._buf = self._recv()
        data = self._buf[:size]
        self._buf = self._buf[size:]
        return data

    def _line(self) -> bytes:
        """One raw CRLF-terminated line of chunked framing, without its CRLF."""
        while True:
            end = self._buf.find(b"\r\n")
            if end > _MAX_TRAILERS or (end < 0 and len(self._buf) > _MAX_TRAILERS + 1):  # + 1: a CR may end it
                raise BadRequest(400, "Chunk size line too long")  # however the line arrived
            if end >= 0:
                line = self._buf[:end]
                self._buf = self._buf[end + 2:]
                return line
            self._buf += self._recv()

    # --- the body -----------------------------------------------------------------------------

    def _next_piece(self, size: int) -> bytes:
        """Up to ``size`` body bytes (at least one), or ``b""`` at the end of the body."""
        try:
            return self._piece(size)
        except (BadRequest, OSError):
            self._broken = True
            raise

    def _piece(self, size: int) -> bytes:
        if self._pending:
            data = self._pending[:size]
            self._pending = self._pending[size:]
            return data
        if self._done:
            return b""
        if not self._chunked:
            data = self._take(min(size, self._remaining))
            self._remaining -= len(data)
            self._done = self._remaining == 0
            return data
        if self._chunk_left == 0:
            match = _CHUNK_SIZE.fullmatch(self._line())
            if match is None:
                raise BadRequest(400, "Invalid chunk size")
            self._chunk_left = int(match.group(1), 16)
            if self._chunk_left == 0:
                self._end_of_chunks()
                return b""
        data = self._take(min(size, self._chunk_left))
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._line() != b"":
            raise BadRequest(400, "Chunk data not followed by CRLF")
        return data

    def _end_of_chunks(self) -> None:
        """Skip the trailer section; what follows is the next request's."""
        size = 0
        while True:
            line = self._line()
            if not line:
                break
            size += len(line)
            if size > _MAX_TRAILERS:
                raise BadRequest(400, "Chunked trailer section too large")
        self._done = True
        self.leftover = self._buf
        self._buf = b""

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._remaining
        if remaining and len(self._buf) == remaining and (size is None or size < 0 or size >= remaining) and not (
                self._pending or self._chunked):  # the usual case: the whole body came with the head
            data, self._buf, self._remaining, self._done = self._buf, b"", 0, True
            return data
        if size is None or size < 0:
            parts = []
            while piece := self._next_piece(_RECV):
                parts.append(piece)
            return b"".join(parts)
        parts = []
        while size > 0 and (piece := self._next_piece(size)):
            parts.append(piece)
            size -= len(piece)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        limit = sys.maxsize if size is None or size < 0 else size
        line = bytearray()
        while len(line) < limit:
            piece = self._next_piece(min(limit - len(line), _RECV))
            if not piece:
                break
            end = piece.find(b"\n")
            if end >= 0:
                line += piece[:end + 1]
                self._unread(piece[end + 1:])
                break
            line += piece
        return bytes(line)

    @property
    def broken(self) -> bool:
        """A read failed (malformed, cut short, timed out): the connection cannot serve another request."""
        return self._broken

    def _unread(self, data: bytes) -> None:
        self._pending = data + self._pending

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> t.Iterator[bytes]:
        while line := self.readline():
            yield line

    def finish(self) -> bytes | None:
        """Consume what the app left unread; the next request's bytes, or ``None`` if the connection must close."""
        if self._broken:
            return None
        if self._pending or not self._done:
            if self._continue:
                return None  # the client waits for 100 Continue: it never sent the body
            discarded = 0
            try:
                while piece := self._next_piece(_RECV):
                    discarded += len(piece)
                    if discarded > _DRAIN_LIMIT:
                        return None
            except (BadRequest, OSError):  # malformed, cut short or timed out (the keep-alive deadline)
                return None
        return self.leftover + self._buf


class LeanGeventWorker(GeventWorker):
    """gunicorn's gevent worker with the lean HTTP/1.1 connection loop of this module."""

    def init_process(self) -> None:
        self._configure()
        super().init_process()

    def _configure(self) -> None:
        """What the connection loop reads from the settings, once per worker process."""
        cfg = self.cfg
        self._keepalive = cfg.keepalive or None
        self._limit_line = cfg.limit_request_line or sys.maxsize
        self._limit_fields = cfg.limit_request_fields or sys.maxsize
        self._limit_field_size = cfg.limit_request_field_size or sys.maxsize
        self._max_head = min(self._limit_line + 2 + (self._limit_fields + 1) * (self._limit_field_size + 2),
                             1 << 20)
        if str(getattr(cfg, "proxy_protocol", "off")).lower() not in ("off", "false", "none", ""):
            raise RuntimeError("the lean gevent worker does not read the PROXY protocol: "
                               "set WSGIPROXY_WORKER_CLASS=gevent to use it")
        allowed = [entry.strip() for entry in cfg.forwarded_allow_ips if entry.strip()]
        self._trust_all = "*" in allowed
        self._trusted = frozenset(entry for entry in allowed if "/" not in entry)
        self._trusted_networks = [ipaddress.ip_network(entry, strict=False) for entry in allowed if "/" in entry]
        self._secure_headers = [("HTTP_" + name.upper().replace("-", "_"), value.lower())
                                for name, value in (cfg.secure_scheme_headers or {}).items()]
        self._script_name = os.environ.get("SCRIPT_NAME", "").rstrip("/")
        self._base_environ = {
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": cfg.workers > 1,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": "gunicorn",
            "SCRIPT_NAME": self._script_name,
        }
        self._env_keys: dict[bytes, tuple[str, int]] = {}
        self._request_lines: dict[bytes, _RequestLine] = {}
        self._date = _DateHeader()
        self._relay_slice = relay_slice()
        self._pacer: Pacer | None = None  # made on the first pushed body, on this process's loop
        self._deadlines = Deadlines()  # the keep-alive wait for a request head, without a Timeout per wait
        # gunicorn's default hooks: pre_request logs at debug level, post_request does nothing.
        pre, post = cfg.pre_request, cfg.post_request
        quiet = not self.log.error_log.isEnabledFor(logging.DEBUG)
        self._pre_request = None if pre is cfg.settings["pre_request"].default and quiet else pre
        self._post_hook = None if post is cfg.settings["post_request"].default else post

    def handle(self, listener: socket.socket, client: socket.socket, addr: t.Any) -> None:
        client.setblocking(True)
        try:
            if isinstance(client, ssl.SSLSocket) and not self.cfg.do_handshake_on_connect:
                client.do_handshake()
            self._serve(listener, client, addr)
        except ssl.SSLError as exc:
            self.log.debug("TLS error on a client connection: %s", exc)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ETIMEDOUT, None):
                self.log.exception("Socket error processing request.")
        except gevent.GreenletExit:
            pass
        finally:
            self._deadlines.disarm(client)
            try:
                client.close()
            except OSError:
                pass

    # --- one connection -------------------------------------------------------------------------

    def _serve(self, listener: socket.socket, sock: socket.socket, addr: t.Any) -> None:
        base = dict(self._base_environ)
        if isinstance(addr, tuple):
            base["REMOTE_ADDR"] = addr[0]
            base["REMOTE_PORT"] = str(addr[1])
            trusted = self._is_trusted(addr[0])
        else:
            base["REMOTE_ADDR"] = "" if not addr else str(addr)
            base["REMOTE_PORT"] = ""
            trusted = True  # a UNIX socket: only local processes can connect
        server = listener.getsockname()
        if isinstance(server, tuple):
            base["SERVER_NAME"], base["SERVER_PORT"] = str(server[0]), str(server[1])
        else:
            base["SERVER_NAME"], base["SERVER_PORT"] = "localhost", ""
        scheme = "https" if self.cfg.is_ssl else "http"
        base["gunicorn.socket"] = sock
        buf = b""
        deadlines = self._deadlines
        deadlines.arm(sock, self._keepalive)  # later: armed by _respond, for the drain and the next head
        while True:
            try:
                head, buf = self._read_head(sock, buf)
            except (TimeoutError, _ClientGone):
                return
            except BadRequest as exc:
                self._refuse(sock, exc, addr)
                return
            if head is None:
                return
            deadlines.disarm(sock)
            start = time.perf_counter()
            try:
                environ, request, body, keep_alive = self._parse(head, buf, base, sock, scheme, trusted)
            except BadRequest as exc:
                self._refuse(sock, exc, addr)
                return
            next_buf = self._respond(environ, request, body, keep_alive, sock, start)
            if next_buf is None:
                return
            buf = next_buf

    def _is_trusted(self, peer: str) -> bool:
        """Whether ``forwarded_allow_ips`` lets this peer set the scheme headers (once per connection)."""
        if self._trust_all or peer in self._trusted:
            return True
        if not self._trusted_networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._trusted_networks)

    def _read_head(self, sock: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
        """The next request head (without its final CRLF CRLF) and the bytes read past it."""
        if not buf:
            wait_readable(sock)  # a keep-alive client sends its next request after reading the last answer
        while True:
            if buf[:1] in (b"\r", b"\n"):
                buf = buf.lstrip(b"\r\n")  # RFC 9112 §2.2: ignore empty lines before a request
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                return buf[:end + 2], buf[end + 4:]
            if len(buf) > self._max_head:
                raise BadRequest(431, "Request head too large")
            if b"\n\n" in buf or b"\n\r\n" in buf:
                raise BadRequest(400, "Header lines must end with CRLF")
            data = sock.recv(_RECV)
            if not data:
                if buf:
                    self.log.debug("Ignored premature client disconnection.")
                return None, b""
            buf += data

    def _parse(self, head: bytes, rest: bytes, base: dict[str, t.Any], sock: socket.socket, scheme: str,
               trusted: bool) -> tuple[dict[str, t.Any], Request, _Input, bool]:
        line_end = head.find(b"\r\n")
        request_line = head[:line_end]
        parsed = self._request_lines.get(request_line)
        if parsed is None:
            parsed = self._request_line(request_line)
        method_str, uri, path, query, fragment, path_info, http11 = parsed

        block = head[line_end + 2:]
        if _HEADER_BLOCK.fullmatch(block) is None:
            raise BadRequest(400, "Invalid header line")
        pairs = _HEADER_PAIRS.findall(block)
        if len(pairs) > self._limit_fields:
            raise BadRequest(431, "Too many header fields")

        environ = base.copy()
        env_keys = self._env_keys
        length = 0
        chunked = False
        seen_length = False
        keep_alive = http11
        expect_continue = False
        limit_size = self._limit_field_size
        for name, raw in pairs:
            if len(name) + len(raw) > limit_size:
                raise BadRequest(431, "Header field too large")
            known = env_keys.get(name)
            key, kind = known if known is not None else self._env_key(name)
            value = raw.strip(b" \t").decode("latin-1")
            if kind:
                if kind == _DROPPED:
                    continue  # a name with an underscore: dropped (it could pose as a dashed one)
                if kind == _LENGTH:
                    if seen_length or not value.isdigit() or not value.isascii() or len(value) > 18:
                        raise BadRequest(400, "Invalid Content-Length")
                    seen_length = True
                    length = int(value)
                elif kind == _TRANSFER_ENCODING:
                    if value.lower() != "chunked" or chunked or not http11:
                        raise BadRequest(501 if value.lower() not in ("chunked", "") else 400,
                                         "Only a single 'chunked' transfer coding is served")
                    chunked = True
                elif kind == _CONNECTION:
                    tokens = value.lower()
                    if "close" in tokens:
                        keep_alive = False
                    elif "keep-alive" in tokens:
                        keep_alive = True
                elif kind == _EXPECT:
                    if value.lower() != "100-continue":
                        raise BadRequest(417, "Only 'Expect: 100-continue' is served")
                    expect_continue = http11
            if key in environ and key[:5] == "HTTP_":
                environ[key] += "," + value
            else:
                environ[key] = value
        if chunked and seen_length:
            raise BadRequest(400, "Both Transfer-Encoding and Content-Length")

        environ["REQUEST_METHOD"] = method_str
        environ["RAW_URI"] = uri
        environ["PATH_INFO"] = path_info
        environ["QUERY_STRING"] = query
        environ["SERVER_PROTOCOL"] = "HTTP/1.1" if http11 else "HTTP/1.0"
        url_scheme = scheme
        if trusted:
            claimed = None
            for key, secure in self._secure_headers:
                given = environ.get(key)
                if given is not None:
                    said = "https" if given.lower() == secure else "http"
                    if claimed is not None and said != claimed:
                        raise BadRequest(400, "Contradictory scheme headers")
                    claimed = url_scheme = said
        environ["wsgi.url_scheme"] = url_scheme
        host = environ.get("HTTP_HOST")
        if host:
            if host[:1] == "[":  # an IPv6 literal
                end = host.find("]") + 1
                name, port = host[:end], host[end + 1:] if host[end:end + 1] == ":" else ""
            else:
                name, _, port = host.partition(":")
            environ["SERVER_NAME"] = name
            environ["SERVER_PORT"] = port if port.isdigit() else ("443" if url_scheme == "https" else "80")
        body = _Input(sock, rest, -1 if chunked else length, expect_continue)
        environ["wsgi.input"] = body
        request = Request(method_str, uri, path, query, fragment, (1, 1) if http11 else (1, 0), pairs)
        return environ, request, body, keep_alive

    def _request_line(self, request_line: bytes) -> _RequestLine:
        """The method, target and version of a request line, checked (cached: clients repeat theirs)."""
        if len(request_line) > self._limit_line:
            raise BadRequest(414, "Request line is too long")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            raise BadRequest(400, "Invalid request line")
        method, target, version = parts
        if version == b"HTTP/1.1":
            http11 = True
        elif version == b"HTTP/1.0":
            http11 = False
        elif version[:5] == b"HTTP/" and version[5:6].isdigit():
            raise BadRequest(505, "Only HTTP/1.0 and HTTP/1.1 are served")
        else:
            raise BadRequest(400, "Invalid HTTP version")
        if _METHOD.fullmatch(method) is None:
            raise BadRequest(400, "Invalid request method")
        if _TARGET.fullmatch(target) is None:
            raise BadRequest(400, "Invalid request target")
        uri = target.decode("latin-1")
        if target[:1] == b"/":
            path, _, query = uri.partition("?")
            path, _, fragment = path.partition("#") if "#" in path else (path, "", "")
            if "#" in query:
                query, _, fragment = query.partition("#")
        elif target == b"*":
            path, query, fragment = "*", "", ""
        elif b"://" in target:
            split = urlsplit(uri)
            path, query, fragment = split.path or "/", split.query, split.fragment
        else:
            raise BadRequest(400, "Invalid request target")
        path_info = path
        if self._script_name and path_info.startswith(self._script_name):
            path_info = path_info[len(self._script_name):]
        if "%" in path_info:
            path_info = unquote_to_bytes(path_info).decode("latin-1")
        parsed = (method.decode("ascii"), uri, path, query, fragment, path_info, http11)
        if len(self._request_lines) >= _CACHED_LINES:
            self._request_lines.clear()  # many distinct targets: keep the recent ones
        self._request_lines[request_line] = parsed
        return parsed

    def _env_key(self, name: bytes) -> tuple[str, int]:
        """The environ key of a header name and what the parser does with it (cached)."""
        upper = name.decode("ascii").upper()
        if "_" in upper:
            key = ""
        elif upper in ("CONTENT-LENGTH", "CONTENT-TYPE"):
            key = upper.replace("-", "_")
        else:
            key = "HTTP_" + upper.replace("-", "_")
        known = (key, _SPECIAL_HEADERS.get(key, 0))
        if len(self._env_keys) < 1024:
            self._env_keys[name] = known
        return known

    # --- the response ---------------------------------------------------------------------------

    def _respond(self, environ: dict[str, t.Any], request: Request, body: _Input, keep_alive: bool,
                 sock: socket.socket, start: float) -> bytes | None:
        """Run the app for one request; the bytes of the next request, or ``None`` to close."""
        resp = Response()
        is_head = environ["REQUEST_METHOD"] == "HEAD"
        http11 = request.version == (1, 1)
        respiter: Iterable[bytes] | None = None
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        if not self.alive or not self._keepalive:
            keep_alive = False
        resp.must_close = not keep_alive

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Callable[
                [bytes], None]:
            if exc_info:
                try:
                    if resp.headers_sent:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif resp.status is not None:
                raise AssertionError("start_response called twice without exc_info")
            code = status[:3]
            if len(status) < 4 or not code.isdigit() or status[3] != " ":
                raise ValueError(f"Invalid WSGI status line {status!r}")
            resp.status = status
            resp.status_code = int(code)
            resp.headers = headers
            return write

        def wire(data: bytes) -> bytes:
            """The bytes that send ``data``: framed, after the response head if it is the first."""
            if not resp.headers_sent:
                if not data:
                    return b""
                if body.broken:
                    resp.must_close = True  # said in the head: the connection ends after this answer
                head = self._head(resp, http11, is_head)
                return head + self._frame(resp, data) if resp.body_allowed else head
            if data and resp.body_allowed:
                return self._frame(resp, data)
            return b""

        def write(data: bytes) -> None:
            out = wire(data)
            if out:
                send_all(sock, out)

        try:
            if self._pre_request is not None:
                self._pre_request(self, request)
            respiter = self.wsgi(environ, start_response)
            try:
                if type(respiter) is list and len(respiter) == 1:
                    write(respiter[0])
                elif (upstream := self._pushable(respiter, sock)) is not None:
                    Pump(sock, t.cast("Pushable", respiter), wire, self._paced()).run(*upstream)
                else:
                    for item in respiter:
                        write(item)
                if resp.status is None:
                    raise AssertionError("the app returned without calling start_response")
                self._finish(resp, sock, http11, is_head, body.broken)
            finally:
                close = getattr(respiter, "close", None)
                if close is not None:
                    close()
        except (OSError, _ClientGone):
            resp.must_close = True
            self._log(resp, request, environ, start)
            self._post_request(request, environ, resp)
            return None
        except BadRequest as exc:  # a malformed chunked body, found while the app read it
            if not resp.headers_sent:
                self._refuse(sock, exc, None)
            resp.must_close = True
        except Exception:
            self.log.exception("Error handling request %s", request.uri)
            resp.must_close = True
            if not resp.headers_sent:
                self._send_500(sock, resp)
            else:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._log(resp, request, environ, start)
        self._post_request(request, environ, resp)
        if resp.must_close:
            return None
        # An unread body is drained, and the next request head awaited, for keep-alive seconds at most.
        self._deadlines.arm(sock, self._keepalive)
        return body.finish()

    def _paced(self) -> Pacer | None:
        if self._pacer is None and self._relay_slice > 0:
            self._pacer = Pacer(self._relay_slice)
        return self._pacer

    @staticmethod
    def _pushable(respiter: Iterable[bytes], sock: socket.socket) -> tuple[socket.socket, float] | None:
        """The upstream socket and read timeout of a body this worker can push (servers/pump.py)."""
        upstream = getattr(respiter, "upstream", None)
        if upstream is None or isinstance(sock, ssl.SSLSocket):
            return None
        found: tuple[socket.socket, float] | None = upstream()
        return found

    def _head(self, resp: Response, http11: bool, is_head: bool) -> bytes:
        """The status line and headers; decides the body framing. Marks the head as sent."""
        code = resp.status_code
        length = None
        lines = [f"HTTP/1.1 {resp.status}\r\n"]
        for name, value in resp.headers:
            lname = name.lower()
            if lname == "content-length":
                length = int(value)
            elif lname in _HOP_BY_HOP:
                if lname == "connection" and "close" in value.lower():
                    resp.must_close = True
                continue
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError(f"Invalid response header {name!r}: a header cannot contain a line break")
            lines.append(f"{name}: {value}\r\n")
        resp.body_allowed = not (is_head or code < 200 or code in _NO_BODY_STATUS)
        if resp.body_allowed:
            if length is not None:
                resp.length = length
            elif http11:
                resp.chunked = True
                lines.append("Transfer-Encoding: chunked\r\n")
            else:
                resp.must_close = True
        if resp.must_close:
            lines.append("Connection: close\r\n")
        elif not http11:
            lines.append("Connection: keep-alive\r\n")
        resp.headers_sent = True
        return "".join(lines).encode("latin-1") + self._date.get() + b"\r\n"

    @staticmethod
    def _frame(resp: Response, data: bytes) -> bytes:
        if resp.chunked:
            resp.sent += len(data)
            return b"%x\r\n%b\r\n" % (len(data), data)
        if resp.length is not None:
            room = resp.length - resp.sent
            if len(data) > room:
                data = data[:room]  # never more than the declared length
        resp.sent += len(data)
        return data

    def _finish(self, resp: Response, sock: socket.socket, http11: bool, is_head: bool, body_broken: bool) -> None:
        if not resp.headers_sent:
            if body_broken:
                resp.must_close = True
            # not resp.body_allowed: _head decides it, below; a 1xx, 204 or 304 has no Content-Length
            if resp.status_code >= 200 and resp.status_code not in _NO_BODY_STATUS and not is_head and not any(
                    name.lower() == "content-length" for name, _ in resp.headers):
                resp.headers = [*resp.headers, ("Content-Length", "0")]
            send_all(sock, self._head(resp, http11, is_head))
        elif resp.chunked:
            send_all(sock, b"0\r\n\r\n")
        if resp.length is not None and resp.body_allowed and resp.sent < resp.length:
            resp.must_close = True  # the client would wait for the missing bytes

    def _send_500(self, sock: socket.socket, resp: Response) -> None:
        body = b"Internal Server Error\n"
        resp.status, resp.status_code, resp.headers = "500 Internal Server Error", 500, [
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        resp.must_close = True
        try:
            sock.sendall(self._head(resp, True, False) + body)
            resp.sent = len(body)
        except OSError:
            pass

    def _refuse(self, sock: socket.socket, exc: BadRequest, addr: t.Any) -> None:
        """Answer a request this worker will not serve, then the connection closes."""
        if addr is not None:
            self.log.debug("Invalid request from %s: %s", addr, exc.reason)
        reason = _REASONS.get(exc.status, "Bad Request")
        body = f"{reason}: {exc.reason}\n".encode("latin-1")
        head = (f"HTTP/1.1 {exc.status} {reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\n").encode("latin-1")
        try:
            sock.sendall(head + self._date.get() + b"\r\n" + body)
        except OSError:
            pass

    def _log(self, resp: Response, request: Request, environ: dict[str, t.Any], start: float) -> None:
        try:
            self.log.access(resp, request, environ, datetime.timedelta(seconds=time.perf_counter() - start))
        except Exception:
            self.log.exception("Error writing the access log line")

    def _post_request(self, request: Request, environ: dict[str, t.Any], resp: Response) -> None:
        if self._post_hook is None:
            return
        try:
            self._post_hook(self, request, environ, resp)
        except Exception:
            self.log.exception("Exception in post_request hook")
