"""Acceptance: the real Claude Code CLI, headless, against real gunicorn and the simulator.

Claude Code is installed with npm into ``.run/npm`` (git-ignored) on the first run and reused
afterwards. The version is pinned: on Node 20 an unpinned install silently resolves an old release
(newer ones declare ``engines.node >=22``, though the native binary runs fine). Without node/npm the
module skips, and so does it when the install fails (no network); under ``CI=true`` both fail.

Each run gets a fresh HOME and working directory, stdin from /dev/null, no outbound traffic besides
the proxy, one retry at most and a timeout. The simulator calls a tool only when the user's text names
it, so "say hi" is answered with text even though Claude Code declares a dozen tools.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
import typing as t
from pathlib import Path

import pytest
from _stack import DEFAULT_KEY, ROOT, Server, Sim, unavailable

pytestmark = pytest.mark.integration

VERSION = "2.1.332"
PACKAGE = f"@anthropic-ai/claude-code@{VERSION}"
PREFIX = ROOT / ".run" / "npm"
INSTALL_TIMEOUT = 120.0
RUN_TIMEOUT = 60.0
ANSWER = "Hello! This is anthropic--claude-4.5-sonnet on the SAP AI Core simulator"


def _installed() -> Path | None:
    """The ``claude`` command of the pinned version in PREFIX, if it is there and complete."""
    package = PREFIX / "node_modules" / "@anthropic-ai" / "claude-code"
    command = PREFIX / "node_modules" / ".bin" / "claude"
    try:
        version = json.loads((package / "package.json").read_text())["version"]
        # The postinstall copies the native binary (~400 MB) over a small placeholder.
        native = (package / "bin" / "claude.exe").stat().st_size > 1_000_000
    except (OSError, ValueError, KeyError):
        return None
    return command if version == VERSION and native and command.exists() else None


def _npm_error(output: str) -> str:
    """npm's error code and first message line (its last lines are generic hints and a log path)."""
    errors = [line[len("npm error"):].strip() for line in output.splitlines() if line.startswith("npm error")]
    code = next((line for line in errors if line.startswith("code ")), "")
    message = next((line for line in errors if line and not line.startswith(("code ", "syscall ", "errno "))), "")
    if not (code or message):
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        return lines[-1] if lines else "no output"
    return "; ".join(part for part in (code, message[:200]) if part)


def _install() -> Path:
    """Install the pinned Claude Code into PREFIX once per machine; returns its ``claude`` command."""
    for name in ("node", "npm"):
        if shutil.which(name) is None:
            unavailable(f"{name} not found on PATH: cannot install {PACKAGE}")
    PREFIX.mkdir(parents=True, exist_ok=True)
    with open(PREFIX.parent / "npm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions on one checkout install once
        command = _installed()
        if command is not None:
            return command
        cmd = ["npm", "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", "--no-save", PACKAGE]
        log = PREFIX.parent / "npm-install.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(cmd, cwd=PREFIX, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = process.wait(INSTALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
                unavailable(f"npm install {PACKAGE} did not finish within {INSTALL_TIMEOUT:.0f}s (log: {log})")
        if code != 0:
            unavailable(f"npm install {PACKAGE} failed ({code}): {_npm_error(log.read_text(errors='replace'))}")
        command = _installed()
        if command is None:
            unavailable(f"npm install {PACKAGE} succeeded but left no native claude binary in {PREFIX} "
                         f"(postinstall skipped? log: {log})")
        return command


@pytest.fixture(scope="module")
def claude_bin() -> Path:
    return _install()


@pytest.fixture(autouse=True)
def clean_sim(claude_bin: Path, sim: Sim) -> t.Iterator[None]:
    """Installs (or skips) before the module's stack starts, then gives each test a reset simulator."""
    sim.reset()
    sim.control("/_sim/settings", {"chunk_delay_ms": 0})
    yield
    sim.reset()


class Run(t.NamedTuple):
    code: int
    result: dict[str, t.Any]
    stdout: str
    stderr: str
    seconds: float


def run_claude(claude_bin: Path, proxy: Server, tmp_path: Path, *args: str) -> Run:
    """``claude -p ... --output-format json`` as a developer would run it, isolated and bounded."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "LANG": "C.UTF-8",
        "NO_PROXY": "127.0.0.1,localhost",
        "ANTHROPIC_BASE_URL": proxy.url,  # no /v1: the client appends /v1/messages itself
        "ANTHROPIC_API_KEY": DEFAULT_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
        "IS_SANDBOX": "1",  # --dangerously-skip-permissions is refused as root without it
    }
    started = time.monotonic()
    try:
        done = subprocess.run([str(claude_bin), *args, "--output-format", "json"], cwd=work, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"claude {' '.join(args)} did not finish within {RUN_TIMEOUT:.0f}s\n"
                    f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}\n{proxy.output()[-3000:]}")
    seconds = time.monotonic() - started
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = {}
    return Run(done.returncode, result, done.stdout, done.stderr, seconds)


def assert_ok(run: Run, proxy: Server) -> str:
    """Exit 0 and ``is_error`` false (``subtype`` says success even on errors); returns the result text."""
    detail = f"exit {run.code} after {run.seconds:.1f}s\nstdout: {run.stdout[-3000:]}\nstderr: {run.stderr[-2000:]}"
    assert run.code == 0, detail + "\n" + proxy.output()[-3000:]
    assert run.result.get("type") == "result" and run.result.get("is_error") is False, detail
    text = run.result.get("result")
    assert isinstance(text, str) and text, detail  # an empty answer with exit 0 is a lost stream
    return text


def test_say_hi(claude_bin: Path, proxy: Server, sim: Sim, tmp_path: Path) -> None:
    run = run_claude(claude_bin, proxy, tmp_path, "-p", "say hi", "--model", "claude-sonnet-4-5")
    assert ANSWER in assert_ok(run, proxy)
    stats = sim.stats()
    assert stats["inference_requests"] == 1, stats
    assert stats["last_inference"]["path"].endswith("/invoke-with-response-stream"), stats["last_inference"]


def test_sap_model_id(claude_bin: Path, proxy: Server, sim: Sim, tmp_path: Path) -> None:
    # An SAP id looks "newest" to Claude Code: adaptive thinking, effort, a role:"system" turn.
    run = run_claude(claude_bin, proxy, tmp_path, "-p", "say hi", "--model", "anthropic--claude-4.5-sonnet")
    assert ANSWER in assert_ok(run, proxy)
    assert sim.stats()["inference_requests"] == 1


def test_tool_round_trip(claude_bin: Path, proxy: Server, sim: Sim, tmp_path: Path) -> None:
    before = sim.stats()["inference_requests"]
    run = run_claude(claude_bin, proxy, tmp_path, "-p", "use Bash to run: echo hi", "--model", "claude-sonnet-4-5",
                     "--tools", "Bash", "--dangerously-skip-permissions")
    assert "Tool Bash returned" in assert_ok(run, proxy)
    stats = sim.stats()
    assert stats["inference_requests"] - before == 2, stats
    assert run.result.get("num_turns") == 2, run.result


def test_default_tools_say_hi(claude_bin: Path, proxy: Server, sim: Sim, tmp_path: Path) -> None:
    # Claude Code declares its dozen tools; naming none must get text, not a call of the first one.
    run = run_claude(claude_bin, proxy, tmp_path, "-p", "say hi", "--model", "claude-sonnet-4-5")
    assert ANSWER in assert_ok(run, proxy)
    assert run.result.get("num_turns") == 1, run.result
    stats = sim.stats()
    assert stats["inference_requests"] == 1, stats
    declared = stats["last_inference"]["json"].get("tools") or []
    assert len(declared) > 1, declared  # the tools did reach the model
