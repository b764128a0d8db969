"""``make run``: the SAP AI Core simulator plus wsgiproxy under gunicorn, for local development.

    python -m servers.devstack [--port N]   # proxy on 127.0.0.1:3001 (or N, or $WSGIPROXY_DEV_PORT)

1. starts ``python -m wsgiproxy.sim`` on a free loopback port; it writes a proxy config.json and
   a service key into ``.run/devstack/``;
2. starts ``gunicorn -c conf/gunicorn.conf.py wsgiproxy:app`` with 2 gevent workers on that config;
3. waits for ``/health`` and prints ready-to-paste curl lines and an openai SDK snippet.

Ctrl-C or SIGTERM stops gunicorn gracefully (TERM, in-flight streams get 10 s), then the
simulator, and exits 0; a second Ctrl-C stops at once. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run" / "devstack"
DEV_KEY = "sk-wsgiproxy-dev"
HOST = "127.0.0.1"


class _Stop(Exception):
    pass


def _port(argv: list[str]) -> int:
    """``--port N``, else ``$WSGIPROXY_DEV_PORT``, else 3001."""
    value = os.environ.get("WSGIPROXY_DEV_PORT", "").strip() or "3001"
    if len(argv) == 2 and argv[0] == "--port":
        value = argv[1]
    elif argv:
        raise SystemExit("usage: python -m servers.devstack [--port N]")
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SystemExit(f"devstack: port {value!r}: expected a number from 1 to 65535")
    return int(value)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _gunicorn() -> list[str]:
    script = Path(sys.executable).parent / "gunicorn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gunicorn"]


def _wait(check: t.Callable[[], bool], process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None:
            raise SystemExit(f"devstack: {what} exited with status {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise SystemExit(f"devstack: {what} not ready after {timeout:.0f}s")
        time.sleep(0.1)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def usage(proxy: str, sim: str, config: Path) -> str:
    auth = f"-H 'Authorization: Bearer {DEV_KEY}'"
    json_h = "-H 'Content-Type: application/json'"
    chat = '{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello"}]}'
    stream = '{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Count to five"}]}'
    embed = '{"model":"text-embedding-3-small","input":"hello world"}'
    claude = ('{"model":"claude-sonnet-4-5","max_tokens":200,"stream":true,'
              '"messages":[{"role":"user","content":"Say hello"}]}')
    fault = '{"faults":[{"kind":"status","status":429,"retry_after":7}]}'
    return f"""
wsgiproxy dev stack is up
  proxy      {proxy}   (gunicorn, 2 gevent workers; its log is this terminal)
  simulator  {sim}   (SAP AI Core simulator; log: {RUN_DIR.relative_to(ROOT)}/sim.log)
  config     {config.relative_to(ROOT)}
  API key    {DEV_KEY}

curl:
  curl -s {proxy}/health
  curl -s {proxy}/v1/models {auth}
  curl -s {proxy}/v1/chat/completions {auth} {json_h} -d '{chat}'
  curl -sN {proxy}/v1/chat/completions {auth} {json_h} -d '{stream}'
  curl -s {proxy}/v1/embeddings {auth} {json_h} -d '{embed}'
  curl -sN {proxy}/v1/messages {auth} {json_h} -d '{claude}'

Claude Code (Anthropic's model ids map to the simulator's anthropic--claude-4.5-sonnet):
  ANTHROPIC_BASE_URL={proxy} ANTHROPIC_API_KEY={DEV_KEY} CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \\
    claude -p "say hi" --model claude-sonnet-4-5

Python (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="{proxy}/v1", api_key="{DEV_KEY}")
  messages = [{{"role": "user", "content": "Hi"}}]
  print(client.chat.completions.create(model="gpt-4o", messages=messages).choices[0].message.content)
  for chunk in client.chat.completions.create(model="gpt-4o", messages=messages, stream=True):
      if chunk.choices:
          print(chunk.choices[0].delta.content or "", end="", flush=True)

Simulator control API (see README):
  curl -s {sim}/_sim/stats
  curl -s {sim}/_sim/faults {json_h} -d '{fault}'
Ctrl-C stops both.
"""


def main(argv: list[str] | None = None) -> int:
    port = _port(sys.argv[1:] if argv is None else argv)
    if not _port_free(port):
        print(f"devstack: {HOST}:{port} is in use; pick another port (make run PORT=...)", file=sys.stderr)
        return 1
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    ready = RUN_DIR / "sim.ready"
    config = RUN_DIR / "config.json"

    stopping = {"count": 0}

    def on_signal(signum: int, frame: object) -> None:
        stopping["count"] += 1
        raise _Stop

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    sim = gunicorn = None
    # Children get their own session: a terminal Ctrl-C reaches only this process, which then
    # stops them in order (gunicorn first, so no request reaches a vanished simulator).
    try:
        with open(RUN_DIR / "sim.log", "ab") as sim_log:
            sim = subprocess.Popen(
                [sys.executable, "-m", "wsgiproxy.sim", "--host", HOST, "--port", "0", "--ready-file", str(ready),
                 "--write-config", str(RUN_DIR), "--proxy-key", DEV_KEY, "--chunk-delay-ms", "30"],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=sim_log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _wait(lambda: ready.exists() and config.exists() and bool(ready.read_text().strip()), sim, "simulator", 20)
        sim_url = ready.read_text().strip()

        env = dict(os.environ, PYTHONUNBUFFERED="1", WSGIPROXY_CONFIG=str(config), WSGIPROXY_BIND=f"{HOST}:{port}")
        env.setdefault("WSGIPROXY_WORKERS", "2")
        env.setdefault("WSGIPROXY_GRACEFUL_TIMEOUT", "10")
        env.setdefault("WSGIPROXY_PIDFILE", str(RUN_DIR / "gunicorn.pid"))
        proxy_url = f"http://{HOST}:{port}"
        gunicorn = subprocess.Popen(
            _gunicorn() + ["-c", str(ROOT / "conf" / "gunicorn.conf.py"), "wsgiproxy:app"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        _wait(lambda: _healthy(proxy_url), gunicorn, "gunicorn", 30)
        print(usage(proxy_url, sim_url, config), flush=True)

        while True:
            for name, process in (("gunicorn", gunicorn), ("simulator", sim)):
                if process.poll() is not None:
                    print(f"devstack: {name} exited with status {process.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGINT, lambda *a: stopping.__setitem__("count", stopping["count"] + 1))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if gunicorn is not None and gunicorn.poll() is None:
            print("\ndevstack: stopping gunicorn (TERM; Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            gunicorn.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + float(env.get("WSGIPROXY_GRACEFUL_TIMEOUT", "10")) + 5
            while gunicorn.poll() is None and time.monotonic() < deadline and stopping["count"] < 2:
                time.sleep(0.1)
            _stop(gunicorn, signal.SIGQUIT, 5)  # no-op when it already exited
        _stop(sim, signal.SIGTERM, 5)
    print("devstack: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
