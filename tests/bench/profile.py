"""``python -m tests.bench --profile``: where the proxy worker's CPU goes, per request.

py-spy (``pip install py-spy`` into .venv; it is not a project dependency) samples the gunicorn
worker from outside, without pausing it (``--nonblocking``), while wrk drives non-streaming
requests and then sse_load drives streams. Idle samples (the hub waiting in epoll) are left out,
so each sample is CPU time. A function's share of the samples times the CPU µs per request
measured over the same window gives its µs per request. Writes ``results/profile.json`` and the
collapsed stacks to the scratch directory (``flamegraph.pl`` or speedscope can draw them).
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import time
import typing as t
from pathlib import Path

from tests._stack import ROOT

from . import payloads as p

if t.TYPE_CHECKING:
    from .run import Bench

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("bench --profile: py-spy is missing; install it with: .venv/bin/pip install py-spy")
    return found


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    if "/wsgiproxy/" in path:
        path = "wsgiproxy/" + path.rsplit("/wsgiproxy/", 1)[1]
    elif "site-packages/" in path:
        path = path.rsplit("site-packages/", 1)[1]
    elif "/lib/python3" in path:
        path = "stdlib/" + path.rsplit("/", 1)[1]
    return f"{match.group('func')} ({path})"


# Where a sample's CPU goes: the first category (in this order) with a rule matching any frame of its
# stack, so specific parts (the access log, the upstream call's steps) win over "rest of ...".
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [(name, re.compile(rx)) for name, rx in [
    ("gunicorn: access log line", r"^Logger\.access \(gunicorn"),
    ("wsgiproxy: usage log line", r"^write_usage \(wsgiproxy"),
    ("wsgiproxy: metrics (prometheus_client)", r"\(wsgiproxy/metrics\.py\)|\(prometheus_client/"),
    ("wsgiproxy: other log calls", r"^Logger\.(info|warning|debug|_log) \(stdlib"),
    ("upstream HTTP client: request, response head, body", r"\(wsgiproxy/aicore/(http11|transport)\.py\)"),
    ("gunicorn: access log line", r"^FastAccessLogger\.access \("),
    ("wsgiproxy: token cache", r"^TokenCache\.get \("),
    ("wsgiproxy: stream relay (read1, SSE decode, filter)",
     r"^(RelayedStream\.\w+|ChatStream\.\w+|SSEDecoder\.\w+) \("),
    ("wsgiproxy: request body read + JSON parse + checks", r"^(read_body|json_object|require_model|optional_bool|"
     r"chat_upstream_body|Call\.body) \("),
    ("wsgiproxy: routing", r"^(Map\.bind_to_environ|MapAdapter\.match|WsgiProxy\._route) \("),
    ("wsgiproxy: client key check", r"^KeyChecker\.check \("),
    ("wsgiproxy: request id", r"^_request_id \("),
    ("wsgiproxy: werkzeug Response (headers, iterable)", r"\(werkzeug/(wrappers|sansio|datastructures)"),
    ("wsgiproxy: rest of the app", r"\(wsgiproxy/"),
    ("lean worker: parse request, build environ", r"^LeanGeventWorker\.(_parse|_read_head) \("),
    ("lean worker: write response (head, frames, sendall)",
     r"^(LeanGeventWorker\.(_head|_finish|_frame)|write|start_response) \(servers/gevent_worker"),
    ("lean worker: rest of the connection loop", r"\(servers/gevent_worker\.py"),
    ("gunicorn: parse request", r"^Parser\.__next__ \(gunicorn"),
    ("gunicorn: build environ", r"^create \(gunicorn/http/wsgi\.py"),
    ("gunicorn: write response (headers, chunks, send)", r"^(Response\.\w+|write_chunk|write) \(gunicorn"),
    ("gunicorn: rest of handle_request / keep-alive loop", r"\(gunicorn/"),
    ("gevent: hub, scheduling, socket waits", r"\(gevent/"),
]]


def categorise(frames: list[str]) -> str:
    for name, rule in CATEGORIES:
        if any(rule.search(frame) for frame in frames):
            return name
    return "other"


def analyse(collapsed: Path, us_per_unit: float, top: int = 40) -> dict[str, t.Any]:
    """Self and inclusive sample counts per function and per category, scaled to µs per request."""
    cat_counts: collections.Counter[str] = collections.Counter()
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        cat_counts[categorise(frames)] += count
        for name in set(frames):
            incl_counts[name] += count

    def rows(counter: collections.Counter[str]) -> list[dict[str, t.Any]]:
        return [{"function": name, "samples": n, "share": round(n / total, 4),
                 "us_per_req": round(n / total * us_per_unit, 1)} for name, n in counter.most_common(top)]

    return {"samples": total, "categories": rows(cat_counts), "self": rows(self_counts),
            "inclusive": rows(incl_counts)}


def profile(bench: Bench, scratch: Path, seconds: float = 20.0) -> dict[str, t.Any]:
    from .run import sse_load, wrk

    target = bench.targets["proxy"]
    pid = target.workers[0]
    tool = py_spy()
    out: dict[str, t.Any] = {}
    bench.warm_up(target)
    for kind, concurrency in (("nonstream", 64), ("stream", 1000)):
        collapsed = scratch / f"profile-{kind}.txt"
        spy = subprocess.Popen([tool, "record", "--pid", str(pid), "--rate", "250", "--duration", str(int(seconds)),
                                "--nonblocking", "--format", "raw", "--output", str(collapsed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy attaches
        cpu0 = target.cpu()["workers"]
        wall0 = time.monotonic()
        if kind == "nonstream":
            result = wrk(target.url + target.chat_path, bench.bodies["chat"], p.CLIENT_KEY, concurrency,
                         seconds - 3)
            count = int(result["requests"])
        else:
            result = sse_load(target.url + target.stream_path, bench.bodies["stream"], p.CLIENT_KEY, concurrency,
                              seconds - 8, scratch)
            count = int(result["completed"])
        cpu = target.cpu()["workers"] - cpu0
        wall = time.monotonic() - wall0
        _, err = spy.communicate(timeout=seconds + 30)
        if not collapsed.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-800:]}")
        us = cpu / max(count, 1) * 1e6
        out[kind] = {"concurrency": concurrency, "requests": count, "cpu_us_per_req": round(us, 1),
                     "worker_cpu_pct": round(cpu / wall * 100, 1),
                     "collapsed": str(collapsed.relative_to(ROOT) if collapsed.is_relative_to(ROOT) else collapsed),
                     "load": result} | analyse(collapsed, us)
        print(f"profile {kind}: {count} requests, {us:.0f} µs CPU each; {out[kind]['samples']} samples", flush=True)
        for row in out[kind]["self"][:15]:
            print(f"  self {row['us_per_req']:8.1f} µs  {row['share'] * 100:5.1f}%  {row['function']}")
    return {"profile": out}
