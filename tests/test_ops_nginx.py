"""A real nginx, configured by the shipped conf/nginx/wsgiproxy.conf, in front of two gunicorn instances.

nginx runs as a foreground child with its own prefix in a temp dir, listening on 127.0.0.1.
The test config is the shipped file with only the upstream servers and the listen address
replaced, wrapped in a minimal main config. Skipped when nginx is missing and we are not in CI
(.ci/run installs Debian's nginx-light); under CI a missing nginx fails.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from _stack import ROOT, Managed, OpenStream, Stack, free_port, http_request, required_tool, tail, wait_for_http

KEY = "sk-wsgiproxy-test-key"
STREAM = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Count to ten"}]}
SHIPPED = ROOT / "conf" / "nginx" / "wsgiproxy.conf"

pytestmark = pytest.mark.integration


def nginx_config(upstreams: list[str], port: int, prefix: Path) -> str:
    """The shipped server config, pointed at ``upstreams`` and 127.0.0.1:``port``, in a main config."""
    shipped = SHIPPED.read_text()
    servers = "".join(f"    server {address} max_fails=3 fail_timeout=10s;\n" for address in upstreams)
    site, count = re.subn(r"^    server 127\.0\.0\.1:3001 [^\n]*\n", servers, shipped, flags=re.MULTILINE)
    assert count == 1, "the shipped upstream block changed: update this test"
    site, count = re.subn(r"^    listen 80;$", f"    listen 127.0.0.1:{port};", site, flags=re.MULTILINE)
    assert count == 1, "the shipped listen directive changed: update this test"
    temp_paths = "".join(f"    {kind}_temp_path {prefix / kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the temp prefix
    return (f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} info;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n    access_log {prefix / 'access.log'};\n{temp_paths}{site}\n}}\n")


def start_nginx(tmp_path: Path, upstreams: list[str]) -> tuple[Managed, str]:
    binary = required_tool("nginx", "nginx-light", "/usr/sbin/nginx")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(upstreams, port, prefix))
    check = subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    log = prefix / "stdout.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    nginx = Managed(process, prefix / "error.log", "nginx")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", timeout=15, process=process, log=prefix / "error.log")
    except BaseException:
        nginx.stop()
        raise
    return nginx, url


def test_streams_pass_through_nginx_event_by_event(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    sim.control("/_sim/settings", {"chunk_delay_ms": 120})
    first = stack.gunicorn(sim.config_path, workers=1)
    second = stack.gunicorn(sim.config_path, workers=1)
    nginx, url = start_nginx(tmp_path, [first.url[len("http://"):], second.url[len("http://"):]])
    stack.track(nginx)

    stream = OpenStream(url, "/v1/chat/completions", STREAM, key=KEY).read_all()
    assert stream.complete, (stream.status, stream.error, stream.events[-2:], tail(nginx.log))
    times = [at for at, _ in stream.events]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len(gaps) >= 5
    # paced like the simulator (120 ms per event), not delivered in one burst at the end
    assert times[-1] - times[0] >= 0.12 * (len(gaps) - 1) * 0.6, gaps
    assert sum(gap >= 0.06 for gap in gaps) >= len(gaps) * 0.6, gaps

    # the client's request id reaches wsgiproxy and comes back; nginx makes one otherwise
    sim.control("/_sim/settings", {"chunk_delay_ms": 0})
    given = http_request(url, "GET", "/v1/models", key=KEY, headers={"X-Request-Id": "edge-7"})
    assert given.status == 200 and given.headers["X-Request-Id"] == "edge-7"
    made = http_request(url, "GET", "/v1/models", key=KEY)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"])

    # several instances: requests reach both
    for _ in range(6):
        assert http_request(url, "GET", "/v1/models", key=KEY).status == 200
    for instance in (first, second):
        metrics = http_request(instance.url, "GET", "/metrics").body.decode()
        served = re.findall(r'^wsgiproxy_requests_total\{endpoint="models".*\} (\S+)$', metrics, re.MULTILINE)
        assert served and float(served[0]) >= 1, f"{instance.url} got no request"

    # /health is not logged by nginx; /metrics only answers internal addresses
    assert http_request(url, "GET", "/health").status == 200
    assert http_request(url, "GET", "/metrics").status == 200
    assert _status_from(url, "/metrics", source="127.0.0.2") == 403
    time.sleep(0.2)
    access = (tmp_path / "nginx" / "access.log").read_text()
    assert "/v1/chat/completions" in access and "/health" not in access
    assert json.loads(http_request(url, "GET", "/health").body)["status"] == "ok"


def _status_from(url: str, path: str, *, source: str) -> int:
    """The status of ``GET path`` sent from another loopback address."""
    host, port = url[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(64).decode("latin-1")
    return int(head.split()[1])
