"""Smoke test of the real stack: simulator + ``gunicorn -c conf/gunicorn.conf.py wsgiproxy:app``.

    .venv/bin/python tests/smoke.py          # or: make smoke

Boots both on free loopback ports (2 gevent workers, a pidfile in a temp dir), exercises every
endpoint over HTTP, reloads with HUP, stops with TERM, and checks the pidfile's life cycle.
Prints one line per check; exits 1 on the first failure, 0 when all pass. Whatever it started
is stopped on the way out. Bounded: about 10 s when healthy, at most ~60 s.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import tempfile
import time
import traceback
import typing as t
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import Server, Sim, child_pids, http_request, sse_data, start_gunicorn, start_sim  # noqa: E402

KEY = "sk-wsgiproxy-smoke-key"
WORKERS = 2
DEADLINE = time.monotonic() + 60


class CheckFailed(AssertionError):
    pass


def check(name: str, condition: object, detail: object = "") -> None:
    if not condition:
        print(f"FAIL {name}" + (f": {detail}" if detail != "" else ""), flush=True)
        raise CheckFailed(name)
    print(f"ok   {name}", flush=True)


def remaining(limit: float) -> float:
    return max(0.5, min(limit, DEADLINE - time.monotonic()))


def has_request_id(response: t.Any) -> bool:
    return bool(response.headers.get("X-Request-Id"))


def is_openai_error(response: t.Any) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error


def exercise(url: str) -> None:
    r = http_request(url, "GET", "/health")
    check("GET /health -> 200 JSON with X-Request-Id", r.status == 200 and has_request_id(r)
          and r.json().get("status") == "ok", (r.status, r.body[:200]))

    r = http_request(url, "GET", "/v1/models", key=KEY)
    ids = [m.get("id") for m in r.json().get("data", [])] if r.status == 200 else []
    check("GET /v1/models with key -> 200 listing gpt-4o", r.status == 200 and "gpt-4o" in ids and has_request_id(r),
          (r.status, r.body[:200]))

    r = http_request(url, "GET", "/v1/models")
    check("GET /v1/models without key -> 401 OpenAI error", r.status == 401 and is_openai_error(r)
          and has_request_id(r), (r.status, r.body[:200]))

    r = http_request(url, "GET", "/v1/models", key="sk-not-the-right-key")
    check("GET /v1/models with a wrong key -> 401", r.status == 401 and is_openai_error(r), (r.status, r.body[:200]))

    r = http_request(url, "GET", "/v1/models/gpt-4o", key=KEY)
    check("GET /v1/models/gpt-4o -> 200", r.status == 200 and r.json().get("id") == "gpt-4o", (r.status, r.body[:200]))

    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello in five words"}]}
    r = http_request(url, "POST", "/v1/chat/completions", chat, key=KEY)
    content = r.json()["choices"][0]["message"]["content"] if r.status == 200 else None
    check("POST /v1/chat/completions -> 200 with content", r.status == 200 and isinstance(content, str) and content
          and has_request_id(r), (r.status, r.body[:300]))

    r = http_request(url, "POST", "/v1/chat/completions", dict(chat, stream=True), key=KEY)
    events = sse_data(r.body) if r.status == 200 else []
    check("POST /v1/chat/completions stream -> text/event-stream",
          r.status == 200 and r.headers.get("Content-Type", "").startswith("text/event-stream"),
          (r.status, r.headers.get("Content-Type"), r.body[:300]))
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    check("  stream has several data: events and text", len(chunks) >= 3 and text, (len(chunks), text[:80]))
    check("  stream ends with exactly one data: [DONE]", events.count("[DONE]") == 1 and events[-1] == "[DONE]",
          events[-3:])

    embed = {"model": "text-embedding-3-small", "input": ["hello", "world"]}
    r = http_request(url, "POST", "/v1/embeddings", embed, key=KEY)
    data = r.json().get("data", []) if r.status == 200 else []
    check("POST /v1/embeddings (float) -> 200, 2 vectors of floats",
          r.status == 200 and len(data) == 2 and all(isinstance(x, float) for x in data[0]["embedding"][:8])
          and len(data[0]["embedding"]) > 0, (r.status, r.body[:300]))

    r = http_request(url, "POST", "/v1/embeddings", dict(embed, encoding_format="base64"), key=KEY)
    encoded = r.json()["data"][0]["embedding"] if r.status == 200 else None
    raw = base64.b64decode(encoded) if isinstance(encoded, str) else b""
    check("POST /v1/embeddings (base64) -> 200, float32 bytes", r.status == 200 and raw and len(raw) % 4 == 0,
          (r.status, r.body[:300]))

    r = http_request(url, "GET", "/metrics")
    text = r.body.decode() if r.status == 200 else ""
    check("GET /metrics -> 200, counts the chat requests", 'wsgiproxy_requests_total{endpoint="chat"' in text
          and r.headers.get("Content-Type", "").startswith("text/plain"), (r.status, r.body[:200]))

    r = http_request(url, "POST", "/v1/chat/completions", dict(chat, model="no-such-model"), key=KEY)
    check("unknown model -> 404 OpenAI error", r.status == 404 and is_openai_error(r), (r.status, r.body[:300]))

    r = http_request(url, "POST", "/v1/chat/completions", b"{not json", key=KEY)
    check("malformed JSON -> 400 OpenAI error", r.status == 400 and is_openai_error(r), (r.status, r.body[:300]))


def reload_with_hup(server: Server) -> None:
    master = server.process.pid
    old = child_pids(master)
    check(f"{WORKERS} workers running before HUP", len(old) == WORKERS, old)
    os.kill(master, signal.SIGHUP)
    deadline = time.monotonic() + remaining(20)
    new: set[int] = set()
    served = 0
    while time.monotonic() < deadline:
        r = http_request(server.url, "GET", "/v1/models", key=KEY, timeout=remaining(10))
        check_ok = r.status == 200
        if not check_ok:
            check("requests keep succeeding during HUP", False, (r.status, r.body[:200]))
        served += 1
        new = child_pids(master)
        if len(new) == WORKERS and not (new & old):
            break
        time.sleep(0.1)
    check(f"HUP replaced all workers ({sorted(old)} -> {sorted(new)}), {served} requests served meanwhile",
          len(new) == WORKERS and not (new & old), (old, new))
    for _ in range(10):
        r = http_request(server.url, "POST", "/v1/chat/completions",
                         {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, key=KEY)
        if r.status != 200:
            break
    check("new workers serve chat after HUP", r.status == 200, (r.status, r.body[:200]))
    check("pidfile still holds the master pid after HUP",
          server.pidfile.exists() and server.pidfile.read_text().strip() == str(master))


def stop_with_term(server: Server) -> None:
    started = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)
    try:
        code = server.process.wait(remaining(15))
    except Exception:
        code = None
    elapsed = time.monotonic() - started
    check(f"TERM: master exited with status 0 in {elapsed:.1f}s", code == 0, code)
    check("pidfile removed on exit", not server.pidfile.exists())


def main() -> int:
    sim: Sim | None = None
    server: Server | None = None
    with tempfile.TemporaryDirectory(prefix="wsgiproxy-smoke-") as tmp:
        try:
            sim = start_sim(Path(tmp), proxy_keys=[KEY], timeout=remaining(20))
            check(f"simulator up at {sim.url}", True)
            server = start_gunicorn(sim.config_path, {"WSGIPROXY_ACCESSLOG": "-"}, workers=WORKERS,
                                    tmp_path=Path(tmp), timeout=remaining(30))
            check(f"gunicorn up at {server.url} ({WORKERS} gevent workers)", True)
            pid_text = server.pidfile.read_text().strip() if server.pidfile.exists() else None
            check("pidfile holds the master pid", pid_text == str(server.process.pid),
                  (server.pidfile, pid_text, server.process.pid))
            exercise(server.url)
            reload_with_hup(server)
            stop_with_term(server)
            log = server.output()
            check("no traceback or MonkeyPatchWarning in the gunicorn log",
                  "Traceback" not in log and "MonkeyPatchWarning" not in log, log[-2000:])
            print("smoke: all checks passed", flush=True)
            return 0
        except CheckFailed:
            pass
        except Exception:
            print("FAIL unexpected error:", flush=True)
            traceback.print_exc()
        finally:
            if server is not None:
                server.stop(timeout=5)
            if sim is not None:
                sim.stop(timeout=5)
        if server is not None:
            print("--- gunicorn log (tail) ---\n" + "\n".join(server.output().splitlines()[-40:]), flush=True)
        if sim is not None:
            print("--- simulator log (tail) ---\n" + "\n".join(sim.output().splitlines()[-20:]), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
