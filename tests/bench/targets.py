"""The processes of a benchmark run: the fake upstream, nginx as the ceiling, the proxy.

* ``upstream``: nginx (one worker) answering ``POST /oauth/token`` and the non-streaming
  deployment with static JSON (``return 200``), and the streaming deployment with 20 SSE events
  20 ms apart through the echo module (``echo`` + ``echo_flush`` + ``echo_sleep``: timers in C, no
  Python on that side).
* ``ceiling``: nginx ``proxy_pass`` to the upstream (keep-alive pool, buffering off), the best a
  proxy can do on this machine.
* ``proxy``: the real ``gunicorn -c conf/gunicorn.conf.py wsgiproxy:app`` with one gevent worker.

Each is pinned with ``taskset``; every listener binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

from tests._stack import GUNICORN_CONF, Managed, Server, base_env, child_pids, free_port, spawn, tool, wait_ready

from . import payloads as p

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def taskset(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []


# --------------------------------------------------------------------------------------------
# /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


@dataclass
class Target:
    """One thing under load: its URL, the processes whose CPU and memory are measured."""

    name: str
    url: str  # scheme://host:port
    chat_path: str
    stream_path: str
    stream_body: bytes
    chat_body: bytes
    master: Managed | None = None
    workers: list[int] = field(default_factory=list)
    note: str = ""

    def find_workers(self, timeout: float = 10.0) -> list[int]:
        assert self.master is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = sorted(child_pids(self.master.pid))
            if pids:
                self.workers = pids
                return pids
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no worker process under pid {self.master.pid}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the workers summed, the master apart."""
        assert self.master is not None
        return {"workers": sum(cpu_seconds(pid) for pid in self.workers), "master": cpu_seconds(self.master.pid)}


# --------------------------------------------------------------------------------------------
# nginx


def _nginx_common(directory: Path) -> tuple[str, str]:
    directory = directory.resolve()
    temp = directory / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
""", f"""
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 65s;
    server_tokens off;
"""


def upstream_conf(directory: Path, port: int) -> str:
    """nginx as SAP AI Core: the token endpoint, a static chat answer, a paced SSE stream, and a paced
    Bedrock invoke stream (binary messages: each a file under ``directory``, sent by a subrequest)."""
    main, http = _nginx_common(directory)
    echoes = []
    for i, event in enumerate(p.sse_events()):
        if i:
            echoes.append(f"            echo_sleep {p.CHUNK_GAP_S};")
        echoes.append("            echo -n '" + event.replace("\n", "\\n") + "';")
        echoes.append("            echo_flush;")
    stream = "\n".join(echoes)
    frames = directory.resolve() / "claude-frames"
    frames.mkdir(parents=True, exist_ok=True)
    claude = []
    for i, event in enumerate(p.anthropic_events()):
        (frames / f"{i}.bin").write_bytes(p.invoke_frame(event))
        if i:
            claude.append(f"            echo_sleep {p.CHUNK_GAP_S};")
        claude.append(f"            echo_location /claude-frames/{i}.bin;")
        claude.append("            echo_flush;")
    claude_stream = "\n".join(claude)
    return f"""load_module {ECHO_MODULE};
{main}
http {{{http}
    server {{
        listen 127.0.0.1:{port} backlog=8192;
        location = /health {{ default_type text/plain; return 200 'ok'; }}
        location = /oauth/token {{ default_type application/json; return 200 '{p.TOKEN_RESPONSE}'; }}
        location = /v2/inference/deployments/{p.DEPLOYMENT}/chat/completions {{
            default_type application/json;
            return 200 '{p.CHAT_RESPONSE}';
        }}
        location = /v2/inference/deployments/{p.STREAM_DEPLOYMENT}/chat/completions {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
{stream}
        }}
        location /claude-frames/ {{ internal; alias {frames}/; default_type application/octet-stream; }}
        location = /v2/inference/deployments/{p.CLAUDE_DEPLOYMENT}/invoke-with-response-stream {{
            default_type application/vnd.amazon.eventstream;
{claude_stream}
        }}
    }}
}}
"""


def ceiling_conf(directory: Path, port: int, upstream_port: int) -> str:
    """nginx ``proxy_pass`` to the upstream: pooled keep-alive, no buffering (SSE-safe)."""
    main, http = _nginx_common(directory)
    return f"""{main}
http {{{http}
    upstream aicore {{
        server 127.0.0.1:{upstream_port};
        keepalive 2048;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=8192;
        location / {{
            proxy_pass http://aicore;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {p.TOKEN[:40]}";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start_nginx(name: str, conf: str, directory: Path, port: int, cpu: int | None) -> Managed:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    conf_path = directory / "nginx.conf"
    conf_path.write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    cmd = [*taskset(cpu), nginx, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf_path)]
    log = directory / "nginx.out"
    server = Server(spawn(cmd, log, base_env(), name), log, name, f"http://127.0.0.1:{port}")
    wait_ready(server, 15.0)
    return server


# --------------------------------------------------------------------------------------------
# the proxy


def write_proxy_config(directory: Path, upstream_url: str) -> Path:
    """A config.json with one subaccount whose service key and deployments point at the fake upstream."""
    directory.mkdir(parents=True, exist_ok=True)
    key = {"clientid": "sb-bench!b1|aicore!b540", "clientsecret": "bench-secret", "url": upstream_url,
           "identityzone": "bench", "serviceurls": {"AI_API_URL": upstream_url}}
    (directory / "service-key.json").write_text(json.dumps(key, indent=2))
    config = {
        "subAccounts": {
            "bench": {
                "resource_group": "default",
                "service_key_json": "service-key.json",
                "deployment_models": {
                    p.MODEL: [f"{upstream_url}/v2/inference/deployments/{p.DEPLOYMENT}"],
                    p.STREAM_MODEL: [f"{upstream_url}/v2/inference/deployments/{p.STREAM_DEPLOYMENT}"],
                    p.CLAUDE_MODEL: [f"{upstream_url}/v2/inference/deployments/{p.CLAUDE_DEPLOYMENT}"],
                },
            }
        },
        "secret_authentication_tokens": [p.CLIENT_KEY],
    }
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_proxy(directory: Path, config_path: Path, cpu: int | None, worker_connections: int,
                extra_env: t.Mapping[str, str] | None = None, conf: Path = GUNICORN_CONF,
                app: str = "wsgiproxy:app") -> Server:
    """``gunicorn -c conf/gunicorn.conf.py wsgiproxy:app``, one gevent worker, shipped defaults
    except the bind address, the worker count and worker_connections (and ``extra_env``)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        "WSGIPROXY_BIND": f"127.0.0.1:{port}",
        "WSGIPROXY_WORKERS": "1",
        "WSGIPROXY_WORKER_CONNECTIONS": str(worker_connections),
        "WSGIPROXY_POOL_MAXSIZE": str(worker_connections),
        "WSGIPROXY_CONFIG": str(config_path),
        "WSGIPROXY_GRACEFUL_TIMEOUT": "5",
    }
    env.update(extra_env or {})
    cmd = [*taskset(cpu), *tool("gunicorn"), "-c", str(conf), app]
    log = directory / "gunicorn.log"
    server = Server(spawn(cmd, log, base_env(env), "gunicorn"), log, "gunicorn", f"http://127.0.0.1:{port}")
    return wait_ready(server, 30.0)


def nginx_version() -> str:
    try:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=5)
        return (out.stderr or out.stdout).strip().split("/")[-1]
    except (OSError, subprocess.SubprocessError):
        return "?"
