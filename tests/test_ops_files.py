"""The shipped deployment files say what the operations guide promises, checked by the tools that read them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _stack import required_tool

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "conf" / "systemd" / "wsgiproxy.service"


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_properties() -> None:
    unit = unit_settings(UNIT.read_text())
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["ExecReload"] == ["/bin/kill -s HUP $MAINPID"]
    assert unit["Restart"] == ["always"] and unit["KillMode"] == ["mixed"]
    assert unit["User"] == ["wsgiproxy"]
    assert unit["ExecStart"][0].split()[1:] == ["-c", "/opt/wsgiproxy/conf/gunicorn.conf.py", "wsgiproxy:app"]
    assert int(unit["TimeoutStopSec"][0]) > 120  # above the default graceful_timeout
    assert "PROMETHEUS_MULTIPROC_DIR=/run/wsgiproxy/metrics" in unit["Environment"]
    assert "MemoryDenyWriteExecute" not in unit  # would break cffi callbacks


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not available (systemd not installed)")
    # The shipped paths, pointed at this checkout: verify also checks that ExecStart exists.
    text = UNIT.read_text().replace("/opt/wsgiproxy/.venv/bin/gunicorn", str(Path(sys.executable).parent / "gunicorn"))
    text = re.sub(r"^WorkingDirectory=.*$", f"WorkingDirectory={ROOT}", text, flags=re.MULTILINE)
    copy = tmp_path / "wsgiproxy.service"
    copy.write_text(text)
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values: it only warns, so the output must be empty
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_dockerfile_properties() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    assert instructions[0] == ("FROM", "python:3.13-slim")
    users = [arg for kind, arg in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    (cmd,) = [arg for kind, arg in instructions if kind == "CMD"]
    assert json.loads(cmd) == ["gunicorn", "-c", "conf/gunicorn.conf.py", "wsgiproxy:app"]  # exec form
    env = " ".join(arg for kind, arg in instructions if kind == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "WSGIPROXY_WORKER_TMP_DIR=/dev/shm" in env
    assert "PROMETHEUS_MULTIPROC_DIR=/dev/shm/" in env
    (health,) = [arg for kind, arg in instructions if kind == "HEALTHCHECK"]
    assert "curl" not in health and "wget" not in health and "/health" in health
    probe = json.loads(health.split("CMD", 1)[1])
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "healthcheck", "exec")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_nginx_conf_is_sse_safe() -> None:
    text = (ROOT / "conf" / "nginx" / "wsgiproxy.conf").read_text()
    directives = {m[0]: m[1] for m in re.findall(r"^\s*(proxy_\w+|keepalive)\s+([^;]+);", text, re.MULTILINE)}
    assert directives["proxy_buffering"] == "off"
    assert directives["proxy_http_version"] == "1.1" and 'Connection ""' in text
    assert int(directives["proxy_read_timeout"].rstrip("s")) >= 600
    assert int(directives["keepalive"]) > 0
    health = re.search(r"location = /health \{(.*?)\}", text, re.DOTALL)
    assert health and "access_log off;" in health.group(1)
    metrics = re.search(r"location = /metrics \{(.*?)\}", text, re.DOTALL)
    assert metrics and "deny all;" in metrics.group(1)


def test_prometheus_config_and_alert_rules_check() -> None:
    promtool = required_tool("promtool", "prometheus")
    config = ROOT / "conf" / "prometheus" / "prometheus.yml"
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = ROOT / "conf" / "prometheus" / "alerts.yml"
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    names = set(re.findall(r"- alert: (\w+)", rules.read_text()))
    assert names == {"WsgiproxyNoWorkers", "WsgiproxyHighErrorRate", "WsgiproxyUpstream429", "WsgiproxySlowFirstByte"}
    result = subprocess.run([promtool, "test", "rules", str(ROOT / "conf" / "prometheus" / "alerts_test.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_installs_the_tools_the_tests_need() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "nginx-light" in ci and "prometheus" in ci and "apt-get install" in ci
