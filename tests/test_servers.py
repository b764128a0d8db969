"""The server adapters for real: conf/gunicorn.conf.py, its hooks, and the Waitress runner.

Each test starts real processes on 127.0.0.1 (free ports) through tests/_stack.py; every wait
is bounded and the ``stack`` fixture stops whatever was started.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from _stack import (
    GUNICORN_CONF,
    PYTHON,
    ROOT,
    Server,
    Stack,
    base_env,
    child_pids,
    free_port,
    http_request,
    spawn,
    sse_data,
    tool,
    wait_ready,
)

KEY = "sk-wsgiproxy-test-key"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}]}

pytestmark = pytest.mark.integration


def _gunicorn_run(
    args: list[str], env: dict[str, str], timeout: float = 30
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(tool("gunicorn") + ["-c", str(GUNICORN_CONF), *args, "wsgiproxy:app"], cwd=ROOT,
                            env=base_env(env), capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    return result, time.monotonic() - started


def _chat_and_stream(server: Server) -> None:
    """A chat and a chat stream through ``server``; failures show the tail of its log."""
    url = server.url

    def log() -> str:
        return "\n".join(server.output().splitlines()[-30:])

    r = http_request(url, "POST", "/v1/chat/completions", CHAT, key=KEY)
    assert r.status == 200, f"{r.body[:500]!r}\n{log()}"
    assert r.json()["choices"][0]["message"]["content"]
    assert r.headers.get("X-Request-Id")

    r = http_request(url, "POST", "/v1/chat/completions", dict(CHAT, stream=True), key=KEY)
    assert r.status == 200, f"{r.body[:500]!r}\n{log()}"
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_data(r.body)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1, f"{events[-3:]}\n{log()}"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 3
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# --------------------------------------------------------------------------------------------
# gunicorn


@pytest.mark.parametrize("preload", ["true", "false"])
@pytest.mark.parametrize("config_text", ['{"subAccounts": 5}', "{not json"], ids=["bad-value", "bad-json"])
def test_gunicorn_bad_config_exits_at_once_with_one_line(tmp_path: Path, preload: str, config_text: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(config_text)
    pidfile = tmp_path / "gunicorn.pid"
    result, elapsed = _gunicorn_run([], {
        "WSGIPROXY_CONFIG": str(config), "WSGIPROXY_BIND": f"127.0.0.1:{free_port()}", "WSGIPROXY_WORKERS": "2",
        "WSGIPROXY_PIDFILE": str(pidfile), "WSGIPROXY_PRELOAD": preload,
    })
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert elapsed < 15, f"took {elapsed:.1f}s"
    error_lines = [line for line in output.splitlines() if "configuration error" in line]
    assert len(error_lines) == 1, output
    assert str(config) in error_lines[0]
    assert "Traceback" not in output
    assert "Booting worker" not in output  # no worker was forked, so no boot loop
    assert not pidfile.exists()


def test_gunicorn_check_config_and_resolved_settings(stack: Stack) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    env = {"WSGIPROXY_CONFIG": str(sim.config_path)}
    result, _ = _gunicorn_run(["--check-config"], env)
    assert result.returncode == 0, result.stdout + result.stderr

    result, _ = _gunicorn_run(["--print-config"], env)
    assert result.returncode == 0, result.stderr
    settings = dict(re.findall(r"^(\w+)\s*=\s*(.*)$", result.stdout, re.MULTILINE))
    expected = {
        "bind": "['0.0.0.0:3001']", "backlog": "2048", "worker_class": "servers.gevent_worker.LeanGeventWorker", "worker_connections": "1000",
        "timeout": "60", "graceful_timeout": "120", "keepalive": "5", "proc_name": "wsgiproxy",
        "preload_app": "True", "control_socket_disable": "True", "pidfile": "None", "accesslog": "-",
        "errorlog": "-", "loglevel": "info", "max_requests": "0",
    }
    assert {k: settings.get(k) for k in expected} == expected
    cores = len(os.sched_getaffinity(0))
    assert settings["workers"] == str(2 * cores + 1)
    assert "%(D)s" in settings["access_log_format"] and "%({x-request-id}o)s" in settings["access_log_format"]
    assert "servers.access_log.FastAccessLogger" in settings["logger_class"]
    if os.path.isdir("/dev/shm"):
        assert settings["worker_tmp_dir"] == "/dev/shm"

    overrides = {
        "WSGIPROXY_BIND": "127.0.0.1:4100,127.0.0.1:4101", "WSGIPROXY_WORKERS": "3", "WSGIPROXY_TIMEOUT": "45",
        "WSGIPROXY_GRACEFUL_TIMEOUT": "7", "WSGIPROXY_KEEPALIVE": "9", "WSGIPROXY_BACKLOG": "64",
        "WSGIPROXY_WORKER_CONNECTIONS": "50", "WSGIPROXY_ACCESSLOG": "off", "WSGIPROXY_LOG_LEVEL": "WARNING",
        "WSGIPROXY_PIDFILE": "/tmp/x.pid", "WSGIPROXY_PRELOAD": "false",
    }
    result, _ = _gunicorn_run(["--print-config"], {**env, **overrides})
    assert result.returncode == 0, result.stderr
    settings = dict(re.findall(r"^(\w+)\s*=\s*(.*)$", result.stdout, re.MULTILINE))
    assert {k: settings[k] for k in ("bind", "workers", "timeout", "graceful_timeout", "keepalive", "backlog",
                                     "worker_connections", "accesslog", "loglevel", "pidfile", "preload_app")} == {
        "bind": "['127.0.0.1:4100', '127.0.0.1:4101']", "workers": "3", "timeout": "45", "graceful_timeout": "7",
        "keepalive": "9", "backlog": "64", "worker_connections": "50", "accesslog": "None", "loglevel": "warning",
        "pidfile": "/tmp/x.pid", "preload_app": "False",
    }

    result, _ = _gunicorn_run(["--print-config"], {**env, "WEB_CONCURRENCY": "5"})
    assert re.search(r"^workers\s*=\s*5$", result.stdout, re.MULTILINE), result.stderr

    result, _ = _gunicorn_run(["--check-config"], {**env, "WSGIPROXY_WORKERS": "many"})
    assert result.returncode != 0
    assert "WSGIPROXY_WORKERS" in result.stderr and "Traceback" not in result.stderr


def test_gunicorn_preload_with_https_upstream(stack: Stack) -> None:
    """preload_app + gevent + HTTPS upstream: works only because the conf patches first (else RecursionError)."""
    tls = stack.tls()
    sim = stack.sim(proxy_keys=[KEY], tls=tls)
    assert sim.url.startswith("https://")
    proxy = stack.gunicorn(sim.config_path, extra_env={"WSGIPROXY_CA_BUNDLE": str(tls.ca_file)}, workers=1)
    _chat_and_stream(proxy)
    r = http_request(proxy.url, "POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, key=KEY)
    assert r.status == 200, r.body[:500]
    log = proxy.output()
    assert "preload_app True" in log
    assert "RecursionError" not in log and "MonkeyPatchWarning" not in log
    assert proxy.stop() == 0


def test_gunicorn_rejects_untrusted_upstream_certificate(stack: Stack, tmp_path: Path) -> None:
    tls = stack.tls()
    sim = stack.sim(proxy_keys=[KEY], tls=tls)
    access = tmp_path / "access.log"  # also: the access log (servers.access_log) and its USR1 reopen
    proxy = stack.gunicorn(sim.config_path, workers=1, extra_env={"WSGIPROXY_ACCESSLOG": str(access)})
    r = http_request(proxy.url, "POST", "/v1/chat/completions", CHAT, key=KEY, headers={"X-Request-Id": "acc-1"})
    assert r.status == 502, r.body[:500]
    assert r.json()["error"]["message"]

    line_format = (r'^127\.0\.0\.1 \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                   r'"POST /v1/chat/completions HTTP/1\.1" 502 \d+ \d+us "[^"]*" rid=%s$')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "rid=acc-1" not in access.read_text():
        time.sleep(0.05)
    assert re.match(line_format % "acc-1", access.read_text().splitlines()[-1]), access.read_text()

    access.rename(tmp_path / "access.log.1")
    os.kill(proxy.pid, 10)  # SIGUSR1: master and workers reopen their log files
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "rid=acc-2" not in (access.read_text() if access.exists() else ""):
        http_request(proxy.url, "POST", "/v1/chat/completions", CHAT, key=KEY, headers={"X-Request-Id": "acc-2"})
        time.sleep(0.2)
    assert access.exists() and re.match(line_format % "acc-2", access.read_text().splitlines()[-1])


def test_gunicorn_hooks_log_stacks_on_worker_int(stack: Stack) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    proxy = stack.gunicorn(sim.config_path, workers=1)
    (worker,) = child_pids(proxy.pid)
    os.kill(worker, 2)  # SIGINT to the worker: worker_int logs every greenlet's stack
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "stacks follow" not in proxy.output():
        time.sleep(0.1)
    log = proxy.output()
    assert f"worker {worker} interrupted" in log
    assert "Greenlet" in log or "Thread" in log, log[-3000:]


# --------------------------------------------------------------------------------------------
# waitress


def test_waitress_runner_serves_streams(stack: Stack) -> None:
    tls = stack.tls()
    sim = stack.sim(proxy_keys=[KEY], tls=tls)
    proxy = stack.waitress(sim.config_path, extra_env={"WSGIPROXY_CA_BUNDLE": str(tls.ca_file)}, threads=16)
    r = http_request(proxy.url, "GET", "/v1/models", key=KEY)
    assert r.status == 200 and r.headers.get("Server") == "wsgiproxy"
    _chat_and_stream(proxy)
    assert "with 16 threads" in proxy.output()
    metrics = http_request(proxy.url, "GET", "/metrics").body.decode()  # single-process mode
    assert re.search(r'^wsgiproxy_requests_total\{endpoint="chat",model="gpt-4o",status="200"\} 2\.0$', metrics,
                     re.MULTILINE), metrics[:2000]
    assert proxy.stop() == 0


def test_waitress_serve_cli_works_too(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim(proxy_keys=[KEY])
    port = free_port()
    log = tmp_path / "waitress-serve.log"
    process = spawn(tool("waitress-serve") + [f"--listen=127.0.0.1:{port}", "wsgiproxy:app"], log,
                     base_env({"WSGIPROXY_CONFIG": str(sim.config_path)}), "waitress-serve")
    server = stack.track(wait_ready(Server(process, log, "waitress-serve", f"http://127.0.0.1:{port}"), 30))
    _chat_and_stream(server)


def test_waitress_runner_bad_config_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"port": "nope"}')
    result = subprocess.run([PYTHON, "-m", "servers.waitress_runner", "--listen", f"127.0.0.1:{free_port()}"],
                            cwd=ROOT, env=base_env({"WSGIPROXY_CONFIG": str(config)}), capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "configuration error" in result.stderr, result.stderr


def test_waitress_path_imports_neither_gunicorn_nor_gevent() -> None:
    code = ("import sys, servers.waitress_runner, servers.gunicorn_hooks, wsgiproxy, wsgiproxy.proxy;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('gevent', 'gunicorn'));"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=base_env(), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_waitress_server_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from servers.waitress_runner import server_options

    class FakeSettings:
        host, port, max_body_bytes = "127.0.0.1", 3001, 1234

    for name in ("WSGIPROXY_LISTEN", "WSGIPROXY_THREADS", "WSGIPROXY_CONNECTION_LIMIT", "WSGIPROXY_CHANNEL_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    options = server_options(FakeSettings())
    assert options["listen"] == "127.0.0.1:3001"
    assert options["threads"] == 64 and options["max_request_body_size"] == 1234 and options["ident"] == "wsgiproxy"
    monkeypatch.setenv("WSGIPROXY_LISTEN", "127.0.0.1:9000, [::1]:9000")
    monkeypatch.setenv("WSGIPROXY_THREADS", "300")
    options = server_options(FakeSettings())
    assert options["listen"] == "127.0.0.1:9000 [::1]:9000"
    assert options["threads"] == 300 and options["connection_limit"] >= 300
    assert server_options(FakeSettings(), ["0.0.0.0:1"], 2)["listen"] == "0.0.0.0:1"


# --------------------------------------------------------------------------------------------
# documentation that must stay true


def _fake_service_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "clientid": "sb-example", "clientsecret": "example-secret",
        "url": "https://example.authentication.eu10.hana.ondemand.com",
        "serviceurls": {"AI_API_URL": "https://api.ai.prod.eu-central-1.aws.ml.hana.ondemand.com"},
    }))


def test_config_example_is_accepted(tmp_path: Path) -> None:
    from wsgiproxy.config import load_settings

    config = tmp_path / "config.json"
    config.write_text((ROOT / "conf" / "config.example.json").read_text())
    for entry in json.loads(config.read_text())["subAccounts"].values():
        _fake_service_key(tmp_path / entry["service_key_json"])
    settings = load_settings({"WSGIPROXY_CONFIG": str(config)})
    assert [s.name for s in settings.subaccounts] == ["eu10-prod", "us10-team"]
    assert settings.api_keys


def test_readme_config_example_is_accepted(tmp_path: Path) -> None:
    from wsgiproxy.config import load_settings

    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```json\n(.*?)```", readme, re.DOTALL)
    assert example, "README has no json example"
    config = tmp_path / "config.json"
    data = json.loads(example.group(1))
    for entry in data["subAccounts"].values():
        key_path = Path(entry["service_key_json"])
        entry["service_key_json"] = str(tmp_path / key_path.name)  # absolute paths in the README
        _fake_service_key(tmp_path / key_path.name)
    config.write_text(json.dumps(data))
    assert len(load_settings({"WSGIPROXY_CONFIG": str(config)}).subaccounts) == 2


def test_readme_tunables_table_is_current() -> None:
    from wsgiproxy.config import tunables_markdown

    assert tunables_markdown() in (ROOT / "README.md").read_text(), "paste tunables_markdown() into README.md"
