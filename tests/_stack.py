"""Start the real stack on loopback for integration tests: simulator, gunicorn, waitress.

Every helper binds 127.0.0.1 on a free port, sends its output to a log file (never a pipe that
could fill up), waits with a deadline, and cleans up in ``stop()`` (also via ``with``)::

    with start_sim(tmp_path, proxy_keys=[KEY]) as sim, start_gunicorn(sim.config_path) as proxy:
        status, headers, body = http_request(proxy.url, "GET", "/v1/models", key=KEY)

:class:`Stack` (the ``stack`` fixture in conftest.py) starts several and stops them all at teardown.
Plain stdlib plus trustme; usable from pytest and from tests/smoke.py alike.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import typing as t
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "conf" / "gunicorn.conf.py"
PYTHON = sys.executable
DEFAULT_KEY = "sk-wsgiproxy-test-key"

# Variables of the caller's environment that would change what the started servers do.
_SCRUBBED = ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "WSGIPROXY_CONFIG", "AICORE_SERVICE_KEY", "AICORE_CLIENT_ID",
             "AICORE_CLIENT_SECRET", "AICORE_AUTH_URL", "AICORE_BASE_URL", "AICORE_DEPLOYMENTS",
             "AICORE_RESOURCE_GROUP", "PROMETHEUS_MULTIPROC_DIR")
_counter = itertools.count(1)


class StackError(RuntimeError):
    """A process did not start or stop as expected; the message carries the tail of its log."""


def python_child(script: str, *args: str, timeout: float = 60.0) -> str:
    """What ``script`` printed, run by a fresh interpreter from the repository root, for a test that
    needs a process of its own (gevent's monkey-patching, a fork); the test fails with the tail of
    the child's stderr unless it exits 0."""
    done = subprocess.run([PYTHON, "-c", script, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(extra: t.Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED and not k.startswith("WSGIPROXY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def tool(name: str) -> list[str]:
    """The command for a console script of this interpreter's environment (``gunicorn``)."""
    script = Path(PYTHON).parent / name
    return [str(script)] if script.exists() else [PYTHON, "-m", name]


# --------------------------------------------------------------------------------------------
# TLS (trustme)


@dataclass(frozen=True)
class TLS:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, as PEM files."""

    ca_file: Path
    cert_file: Path  # server certificate chain
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls(directory: Path) -> TLS:
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    tls = TLS(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(tls.ca_file))
    cert.private_key_pem.write_to_path(str(tls.key_file))
    cert.cert_chain_pems[0].write_to_path(str(tls.cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(tls.cert_file), append=True)
    return tls


# --------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> t.Any:
        return json.loads(self.body)

    def __iter__(self) -> t.Iterator[t.Any]:  # status, headers, body = response
        return iter((self.status, self.headers, self.body))


def http_request(
    base_url: str,
    method: str,
    path: str,
    body: t.Any = None,
    *,
    key: str | None = None,
    headers: t.Mapping[str, str] | None = None,
    ca_file: Path | str | None = None,
    timeout: float = 30.0,
) -> Response:
    """One request with a fresh connection; ``body`` is JSON-encoded unless it is bytes."""
    url = urllib.parse.urlsplit(base_url)
    host = url.hostname or "127.0.0.1"
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, url.port, timeout=timeout,
                                                                       context=context)
    else:
        conn = http.client.HTTPConnection(host, url.port, timeout=timeout)
    sent = dict(headers or {})
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    try:
        conn.request(method, url.path.rstrip("/") + path, body=data, headers=sent)
        response = conn.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        conn.close()


def sse_data(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (comments and other fields skipped)."""
    from wsgiproxy.dialects.sse import SSEDecoder

    decoder = SSEDecoder()
    return [event.data.decode() for event in decoder.feed(body) + decoder.flush()]


def wait_for_http(url: str, *, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None,
                  ca_file: Path | str | None = None, log: Path | None = None) -> Response:
    """Poll ``GET url`` until it answers 200; fail early if ``process`` exits."""
    parts = urllib.parse.urlsplit(url)
    base, path = f"{parts.scheme}://{parts.netloc}", parts.path or "/"
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(f"process exited with {process.returncode} before {url} answered\n{tail(log)}")
        try:
            response = http_request(base, "GET", path, ca_file=ca_file, timeout=2.0)
            if response.status == 200:
                return response
            last = response.status
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.1)
    raise StackError(f"{url} did not answer 200 within {timeout:.0f}s (last: {last!r})\n{tail(log)}")


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()
    return "--- " + str(log) + "\n" + "\n".join(text[-lines:])


# --------------------------------------------------------------------------------------------
# Processes


class Managed:
    """A started process with its log file; ``stop()`` is idempotent and always reaps it."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, name: str) -> None:
        self.process = process
        self.log = log
        self.name = name

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig``, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def __enter__(self: _M) -> _M:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_M = t.TypeVar("_M", bound=Managed)


def spawn(cmd: list[str], log: Path, env: t.Mapping[str, str], name: str) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)


class Sim(Managed):
    """The SAP AI Core simulator: ``url``, ``config_path`` (proxy config it wrote), control API."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, url: str, directory: Path, tls: TLS | None) -> None:
        super().__init__(process, log, "sim")
        self.url = url
        self.directory = directory
        self.config_path = directory / "config.json"
        self.service_key_path = directory / "sim-service-key.json"
        self.tls = tls

    def control(self, path: str, payload: t.Any = None, *, method: str | None = None) -> t.Any:
        """Call the sim's control API: ``POST`` with a JSON payload, else ``GET``; returns the JSON."""
        method = method or ("GET" if payload is None else "POST")
        response = http_request(self.url, method, path, payload, ca_file=self.tls.ca_file if self.tls else None)
        if response.status >= 300:
            raise StackError(f"sim {method} {path}: {response.status} {response.body[:300]!r}")
        return response.json() if response.body else None

    def stats(self) -> t.Any:
        return self.control("/_sim/stats")

    def reset(self) -> t.Any:
        return self.control("/_sim/reset", {})


def start_sim(
    tmp_path: Path,
    proxy_keys: t.Iterable[str] = (DEFAULT_KEY,),
    tls: TLS | None = None,
    extra_args: t.Sequence[str] = (),
    timeout: float = 20.0,
) -> Sim:
    """Start ``python -m wsgiproxy.sim`` on a free port; returns once it wrote its ready file."""
    directory = Path(tmp_path) / f"sim-{next(_counter)}"
    directory.mkdir(parents=True)
    ready = directory / "ready"
    cmd = [PYTHON, "-m", "wsgiproxy.sim", "--host", "127.0.0.1", "--port", "0",
           "--ready-file", str(ready), "--write-config", str(directory)]
    for key in proxy_keys:
        cmd += ["--proxy-key", key]
    if tls is not None:
        cmd += ["--certfile", str(tls.cert_file), "--keyfile", str(tls.key_file)]
    cmd += list(extra_args)
    log = directory / "sim.log"
    process = spawn(cmd, log, base_env(), "sim")
    deadline = time.monotonic() + timeout
    try:
        while True:
            if ready.exists() and ready.read_text().strip() and (directory / "config.json").exists():
                url = ready.read_text().strip().rstrip("/")
                return Sim(process, log, url, directory, tls)
            if process.poll() is not None:
                raise StackError(f"simulator exited with {process.returncode} before it was ready\n{tail(log)}")
            if time.monotonic() > deadline:
                raise StackError(f"simulator not ready within {timeout:.0f}s\n{tail(log)}")
            time.sleep(0.05)
    except BaseException:
        Managed(process, log, "sim").stop()
        raise


class Server(Managed):
    """A proxy server process (gunicorn or waitress) serving ``url``."""

    def __init__(
        self, process: subprocess.Popen[bytes], log: Path, name: str, url: str, pidfile: Path | None = None
    ) -> None:
        super().__init__(process, log, name)
        self.url = url
        self.pidfile = pidfile


def _scratch(config_path: Path | str | None, tmp_path: Path | None, kind: str) -> Path:
    parent = Path(tmp_path) if tmp_path is not None else (Path(config_path).parent if config_path else ROOT / ".run")
    directory = parent / f"{kind}-{next(_counter)}"
    directory.mkdir(parents=True)
    return directory


def wait_ready(server: Server, timeout: float, ca_file: Path | str | None = None) -> Server:
    try:
        wait_for_http(server.url + "/health", timeout=timeout, process=server.process, log=server.log,
                      ca_file=ca_file)
    except BaseException:
        server.stop(signal.SIGKILL if server.process.poll() is None else signal.SIGTERM, timeout=5)
        raise
    return server


def start_gunicorn(
    config_path: Path | str | None,
    extra_env: t.Mapping[str, str] | None = None,
    workers: int = 1,
    *,
    tmp_path: Path | None = None,
    extra_args: t.Sequence[str] = (),
    timeout: float = 30.0,
    wait: bool = True,
) -> Server:
    """``gunicorn -c conf/gunicorn.conf.py wsgiproxy:app`` on a free loopback port with a pidfile.

    Defaults for tests: graceful_timeout 5 s, access log off (set ``WSGIPROXY_ACCESSLOG=-`` in
    ``extra_env`` to see it). ``wait=False`` returns at once (for tests of failing starts).
    """
    directory = _scratch(config_path, tmp_path, "gunicorn")
    port = free_port()
    pidfile = directory / "gunicorn.pid"
    env = {
        "WSGIPROXY_BIND": f"127.0.0.1:{port}",
        "WSGIPROXY_WORKERS": str(workers),
        "WSGIPROXY_PIDFILE": str(pidfile),
        "WSGIPROXY_GRACEFUL_TIMEOUT": "5",
        "WSGIPROXY_ACCESSLOG": "off",
    }
    if config_path is not None:
        env["WSGIPROXY_CONFIG"] = str(config_path)
    env.update(extra_env or {})
    cmd = tool("gunicorn") + ["-c", str(GUNICORN_CONF), *extra_args, "wsgiproxy:app"]
    log = directory / "gunicorn.log"
    server = Server(spawn(cmd, log, base_env(env), "gunicorn"), log, "gunicorn", f"http://127.0.0.1:{port}", pidfile)
    return wait_ready(server, timeout) if wait else server


def start_waitress(
    config_path: Path | str | None,
    extra_env: t.Mapping[str, str] | None = None,
    threads: int | None = None,
    *,
    tmp_path: Path | None = None,
    timeout: float = 30.0,
) -> Server:
    """``python -m servers.waitress_runner --listen 127.0.0.1:<free port>``."""
    directory = _scratch(config_path, tmp_path, "waitress")
    port = free_port()
    env = {"WSGIPROXY_CONFIG": str(config_path)} if config_path is not None else {}
    env.update(extra_env or {})
    cmd = [PYTHON, "-m", "servers.waitress_runner", "--listen", f"127.0.0.1:{port}"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    log = directory / "waitress.log"
    server = Server(spawn(cmd, log, base_env(env), "waitress"), log, "waitress", f"http://127.0.0.1:{port}")
    return wait_ready(server, timeout)


def child_pids(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux /proc), e.g. gunicorn's workers."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


class Stack:
    """Starts processes and stops every one of them at ``close()`` (last started, first stopped)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = Path(tmp_path)
        self._started: list[Managed] = []

    def track(self, managed: _M) -> _M:
        """Stop ``managed`` at ``close()`` too (for processes started by other means)."""
        self._started.append(managed)
        return managed

    def sim(self, **kwargs: t.Any) -> Sim:
        return self.track(start_sim(self.tmp_path, **kwargs))

    def gunicorn(self, config_path: Path | str | None, **kwargs: t.Any) -> Server:
        kwargs.setdefault("tmp_path", self.tmp_path)
        return self.track(start_gunicorn(config_path, **kwargs))

    def waitress(self, config_path: Path | str | None, **kwargs: t.Any) -> Server:
        kwargs.setdefault("tmp_path", self.tmp_path)
        return self.track(start_waitress(config_path, **kwargs))

    def tls(self) -> TLS:
        return make_tls(self.tmp_path / f"tls-{next(_counter)}")

    def close(self) -> None:
        while self._started:
            self._started.pop().stop()


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open (Linux /proc)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def connection_owners(server_port: int, pids: t.Iterable[int]) -> dict[int, int]:
    """Client port -> pid, for the connections to ``server_port`` that these processes (workers) hold."""
    by_inode = {inode: pid for pid in pids for inode in socket_inodes(pid)}
    owners = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            inode = int(fields[9])
            if local_port == server_port and inode in by_inode:
                owners[remote_port] = by_inode[inode]
    return owners


class OpenStream:
    """A streamed POST read event by event, with the arrival time of each ``data:`` payload."""

    def __init__(self, base_url: str, path: str, body: t.Any, *, key: str | None = None, timeout: float = 30.0) -> None:
        url = urllib.parse.urlsplit(base_url)
        self.conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        self.conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        self.client_port = int(self.conn.sock.getsockname()[1])
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.events: list[tuple[float, str]] = []
        self.error: BaseException | None = None

    def read_all(self) -> OpenStream:
        """Read to the end; a broken connection is kept in ``error``, not raised."""
        try:
            while True:
                line = self.response.readline()
                if not line:
                    break
                if line.startswith(b"data:"):
                    self.events.append((time.monotonic(), line[5:].strip().decode()))
        except (OSError, http.client.HTTPException) as exc:
            self.error = exc
        finally:
            self.conn.close()
        return self

    @property
    def complete(self) -> bool:
        """Status 200 and exactly one final ``[DONE]``, read without error."""
        data = [event for _, event in self.events]
        return self.status == 200 and self.error is None and data.count("[DONE]") == 1 and data[-1] == "[DONE]"


def unavailable(reason: str) -> t.NoReturn:
    """Skip the test, or fail it under CI, which must run every test (.ci/run installs what they need)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (under CI this test must run)", pytrace=False)
    pytest.skip(reason)


def required_tool(name: str, package: str, *also: str) -> str:
    """A system tool's path (PATH, then ``also``), or :func:`unavailable`."""
    path = shutil.which(name) or next((p for p in also if os.access(p, os.X_OK)), None)
    if path is None:
        unavailable(f"{name} not installed (Debian package {package}; .ci/run installs it)")
    return path
