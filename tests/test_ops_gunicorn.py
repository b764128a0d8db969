"""Operations under real gunicorn and the simulator: metrics across workers, reload, stop, crash.

Every server binds 127.0.0.1; every loop is bounded in count and time. The simulator's
``chunk_delay_ms`` makes streams last long enough to be in flight when a signal arrives.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import typing as t
from pathlib import Path

import pytest
from _stack import (
    OpenStream,
    Server,
    Sim,
    Stack,
    child_pids,
    connection_owners,
    http_request,
    required_tool,
)

KEY = "sk-wsgiproxy-test-key"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}]}
STREAM = dict(CHAT, stream=True)

pytestmark = pytest.mark.integration


def scrape(server: Server) -> str:
    response = http_request(server.url, "GET", "/metrics")
    assert response.status == 200, response.body[:300]
    return response.body.decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:{{(.*?)}})? (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def wait_until(check: t.Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def workers_of(server: Server, count: int, timeout: float = 15) -> set[int]:
    found: set[int] = set()

    def ready() -> bool:
        nonlocal found
        found = child_pids(server.pid)
        return len(found) == count

    wait_until(ready, timeout, f"{count} workers of {server.pid}")
    return found


def slow_streams(sim: Sim, chunk_delay_ms: int) -> None:
    sim.control("/_sim/settings", {"chunk_delay_ms": chunk_delay_ms})


# --------------------------------------------------------------------------------------------
# metrics across workers


def test_metrics_sum_exactly_across_three_workers(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    usage = tmp_path / "usage.log"
    proxy = stack.gunicorn(sim.config_path, workers=3, extra_env={"WSGIPROXY_USAGE_LOG": str(usage)})
    workers = workers_of(proxy, 3)
    n = 45
    owners: set[int] = set()
    for i in range(n):  # a new connection each: the workers share them
        if i % 3 == 0:
            stream = OpenStream(proxy.url, "/v1/chat/completions", STREAM, key=KEY)
            owners |= set(connection_owners(int(proxy.url.rsplit(":", 1)[1]), workers).values())
            assert stream.read_all().complete
        else:
            assert http_request(proxy.url, "POST", "/v1/chat/completions", CHAT, key=KEY).status == 200

    def counted() -> float:
        return sample(scrape(proxy), "wsgiproxy_requests_total", endpoint="chat")

    wait_until(lambda: counted() >= n, 10, "every request counted")
    text = scrape(proxy)
    assert sample(text, "wsgiproxy_requests_total", endpoint="chat", model="gpt-4o", status="200") == n
    assert sample(text, "wsgiproxy_request_duration_seconds_count", endpoint="chat") == n
    assert sample(text, "wsgiproxy_request_duration_seconds_count", endpoint="chat", streamed="true") == n // 3
    assert sample(text, "wsgiproxy_time_to_first_byte_seconds_count", endpoint="chat") == n
    assert sample(text, "wsgiproxy_upstream_requests_total", status="200") == n
    assert sample(text, "wsgiproxy_tokens_total", type="completion") > 0
    assert sample(text, "wsgiproxy_workers") == 3
    assert sample(text, "wsgiproxy_requests_in_flight") == 0  # under gunicorn the probes are not counted in flight
    assert 1 <= sample(text, "wsgiproxy_token_refreshes_total", result="ok") <= 3
    promtool = required_tool("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr

    assert len(owners) >= 2, f"every stream went to one worker: {owners}"
    lines = usage.read_text().splitlines()
    assert len(lines) == n and all('"endpoint":"chat"' in line for line in lines)

    # an app log line about a request names it, as the access log does
    sim.control("/_sim/faults", {"faults": [{"kind": "status", "status": 429, "retry_after": 7}]})
    limited = http_request(proxy.url, "POST", "/v1/chat/completions", CHAT, key=KEY, headers={"X-Request-Id": "rl-1"})
    assert limited.status == 429 and limited.headers["X-Request-Id"] == "rl-1"
    wait_until(lambda: "rid=rl-1" in proxy.output(), 5, "the warning about rl-1 logged")
    assert any("429" in line and line.endswith("rid=rl-1") for line in proxy.output().splitlines())
    log = proxy.output()
    port = proxy.url.rsplit(":", 1)[1]
    assert re.search(rf"listening on http://127\.0\.0\.1:{port}; 3 gevent \(lean HTTP/1\.1\) worker", log), log[-2000:]
    assert "prometheus multiprocess mode in" in log


def test_a_worker_writes_its_metric_sums_when_it_exits(stack: Stack) -> None:
    # A flush interval far beyond the test: only the worker_exit hook can write these counts.
    sim = stack.sim(proxy_keys=[KEY])
    proxy = stack.gunicorn(sim.config_path, workers=1, extra_env={"WSGIPROXY_METRICS_FLUSH_SECONDS": "600"})
    (old,) = workers_of(proxy, 1)
    for _ in range(5):
        assert http_request(proxy.url, "POST", "/v1/chat/completions", CHAT, key=KEY).status == 200
    os.kill(proxy.pid, signal.SIGHUP)
    wait_until(lambda: (pids := child_pids(proxy.pid)) != {old} and len(pids) == 1, 20, "the old worker replaced")
    text = scrape(proxy)  # served by the new worker
    assert sample(text, "wsgiproxy_requests_total", endpoint="chat", status="200") == 5, text
    assert sample(text, "wsgiproxy_upstream_requests_total", status="200") == 5


def test_metrics_directory_that_cannot_be_created_stops_the_start(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    blocker = tmp_path / "file"
    blocker.write_text("")
    proxy = stack.gunicorn(sim.config_path, workers=2, wait=False,
                           extra_env={"PROMETHEUS_MULTIPROC_DIR": str(blocker / "metrics")})
    assert proxy.process.wait(20) == 1
    log = proxy.output()
    assert "metrics directory" in log and "expected a writable directory" in log, log
    assert "Booting worker" not in log and "Traceback" not in log
    assert proxy.pidfile is not None and not proxy.pidfile.exists()


# --------------------------------------------------------------------------------------------
# reload, stop, crash


class Traffic:
    """Background clients: short requests back to back, and streams held one after another."""

    def __init__(self, url: str, streams: int = 2) -> None:
        self.url = url
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.done = {"requests": 0, "streams": 0}
        self.threads = [threading.Thread(target=self._requests, daemon=True)]
        self.threads += [threading.Thread(target=self._streams, daemon=True) for _ in range(streams)]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _requests(self) -> None:
        while not self.stop.is_set():
            try:
                response = http_request(self.url, "POST", "/v1/chat/completions", CHAT, key=KEY, timeout=20)
                if response.status != 200:
                    self.failures.append(f"request: {response.status} {response.body[:200]!r}")
            except OSError as exc:
                self.failures.append(f"request: {exc!r}")
            self.done["requests"] += 1

    def _streams(self) -> None:
        while not self.stop.is_set():
            try:
                stream = OpenStream(self.url, "/v1/chat/completions", STREAM, key=KEY, timeout=20).read_all()
                if not stream.complete:
                    self.failures.append(f"stream: {stream.status} {stream.error!r} {stream.events[-1:]}")
            except OSError as exc:
                self.failures.append(f"stream: {exc!r}")
            self.done["streams"] += 1


def test_ten_hup_reloads_under_load_fail_nothing(stack: Stack) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    slow_streams(sim, 40)  # a stream lasts about 0.6 s: several are open at each HUP
    proxy = stack.gunicorn(sim.config_path, workers=2)
    before = workers_of(proxy, 2)
    assert http_request(proxy.url, "POST", "/v1/chat/completions", CHAT, key=KEY).status == 200
    with Traffic(proxy.url) as traffic:
        for reloads in range(1, 11):
            time.sleep(0.1)
            os.kill(proxy.pid, signal.SIGHUP)  # the next only once this one was handled: HUPs coalesce
            wait_until(lambda n=reloads: proxy.output().count("wsgiproxy: reload (HUP)") == n, 10, f"reload {reloads}")
        time.sleep(0.8)
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.done["requests"] >= 20 and traffic.done["streams"] >= 4, traffic.done
    after = workers_of(proxy, 2, timeout=20)
    assert not before & after
    log = proxy.output()
    assert log.count("wsgiproxy: reload (HUP)") == 10
    # counters survive reloads: the directory is emptied at start only (the worker that does not
    # answer the scrape writes its sums within a second)
    served = traffic.done["requests"] + traffic.done["streams"] + 1

    def counted() -> float:
        return sample(scrape(proxy), "wsgiproxy_requests_total", endpoint="chat")

    wait_until(lambda: counted() >= served - 3, 5, f"{served} requests counted")
    assert proxy.stop() == 0


def test_term_lets_streams_finish_refuses_new_connections_and_exits_0(stack: Stack) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    slow_streams(sim, 100)  # about 1.5 s per stream, within graceful_timeout (5 s)
    proxy = stack.gunicorn(sim.config_path, workers=2)
    metrics_dir = Path(f"/dev/shm/wsgiproxy-metrics-{proxy.pid}")
    streams = [OpenStream(proxy.url, "/v1/chat/completions", STREAM, key=KEY) for _ in range(4)]
    readers = [threading.Thread(target=stream.read_all) for stream in streams]
    for reader in readers:
        reader.start()
    time.sleep(0.3)
    assert metrics_dir.is_dir() or not Path("/dev/shm").is_dir()
    stopped = time.monotonic()
    os.kill(proxy.pid, signal.SIGTERM)
    port = int(proxy.url.rsplit(":", 1)[1])
    # The master closes its listeners at once; each worker closes its inherited copy when it
    # handles the TERM, which a loaded machine may delay a little: poll, bounded.
    refused_after = None
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            refused_after = time.monotonic() - stopped
            break
        time.sleep(0.05)
    assert refused_after is not None, "new connections were still accepted 3 s after TERM"
    assert proxy.process.wait(15) == 0
    elapsed = time.monotonic() - stopped
    for reader in readers:
        reader.join(10)
    assert all(stream.complete for stream in streams), [(s.error, s.events[-1:]) for s in streams]
    assert all(len(stream.events) >= 5 for stream in streams)
    assert elapsed < 5 + 2, f"exit took {elapsed:.1f}s"
    assert proxy.pidfile is not None and not proxy.pidfile.exists()
    assert not metrics_dir.exists()


def test_sigkill_of_a_worker_fails_only_its_requests(stack: Stack) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    slow_streams(sim, 100)
    proxy = stack.gunicorn(sim.config_path, workers=3)
    workers = workers_of(proxy, 3)
    port = int(proxy.url.rsplit(":", 1)[1])
    streams = [OpenStream(proxy.url, "/v1/chat/completions", STREAM, key=KEY) for _ in range(9)]
    owners = connection_owners(port, workers)
    assert set(owners) >= {stream.client_port for stream in streams}, owners
    victim = owners[streams[0].client_port]
    readers = [threading.Thread(target=stream.read_all) for stream in streams]
    for reader in readers:
        reader.start()
    time.sleep(0.2)
    os.kill(victim, signal.SIGKILL)
    for reader in readers:
        reader.join(15)
    for stream in streams:
        on_victim = owners[stream.client_port] == victim
        assert stream.complete != on_victim, (on_victim, stream.error, stream.events[-1:])
    replaced = workers_of(proxy, 3)
    assert victim not in replaced and len(replaced - workers) == 1
    assert http_request(proxy.url, "POST", "/v1/chat/completions", CHAT, key=KEY).status == 200
    text = scrape(proxy)
    assert sample(text, "wsgiproxy_workers") == 3  # the dead worker's gauge went with it (child_exit)
    # the dead worker's streams leave no trace in flight (its gauge went with it); the live workers
    # write their count within a second (probes are not counted under gunicorn)
    wait_until(lambda: sample(scrape(proxy), "wsgiproxy_requests_in_flight") == 0, 5, "nothing in flight")
    assert f"Worker (pid:{victim}) was sent SIGKILL" in proxy.output()
    assert proxy.stop() == 0


# --------------------------------------------------------------------------------------------
# hooks, pidfile, systemd


def test_worker_abort_logs_every_stack(stack: Stack) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    proxy = stack.gunicorn(sim.config_path, workers=1)
    (worker,) = workers_of(proxy, 1)
    os.kill(worker, signal.SIGABRT)  # what the master sends on WORKER TIMEOUT
    wait_until(lambda: "stacks follow" in proxy.output(), 15, "worker_abort logged")
    log = proxy.output()
    assert f"worker {worker} aborted (WORKER TIMEOUT" in log
    assert "Greenlet" in log or "Thread" in log, log[-3000:]
    workers_of(proxy, 1)  # replaced


def test_stale_pidfile_of_a_dead_process_does_not_block_the_start(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile = tmp_path / "stale.pid"
    pidfile.write_text(f"{dead.pid}\n")
    proxy = stack.gunicorn(sim.config_path, workers=1, extra_env={"WSGIPROXY_PIDFILE": str(pidfile)})
    assert pidfile.read_text().strip() == str(proxy.pid)
    assert proxy.stop() == 0
    assert not pidfile.exists()


def test_systemd_readiness_is_notified(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(20)
        proxy = stack.gunicorn(sim.config_path, workers=1, extra_env={"NOTIFY_SOCKET": str(path)})
        message = listener.recv(4096).decode()
    assert message.splitlines()[0] == "READY=1", message
    assert http_request(proxy.url, "GET", "/health").status == 200
