"""The benchmark behind ``make bench``: wsgiproxy next to a direct upstream and nginx.

    python -m tests.bench            # full run: 3 rounds of every point, about 8 minutes
    python -m tests.bench --quick    # about 1 minute, fewer seconds per point
    python -m tests.bench --soak     # 100k requests in a row through the proxy, RSS sampled
    python -m tests.bench --profile  # py-spy of the proxy worker under load (see PROFILE.md)

Targets, all up at once and measured point by point in turn (so machine noise hits all alike; a
full run measures every point three times, the targets taking turns, and reports the medians):

* ``direct``: the load generator against the fake upstream (nginx, static JSON and an echo-module
  SSE stream), to show the upstream is far faster than the proxy;
* ``nginx``: nginx ``proxy_pass`` to that upstream, the ceiling for any proxy;
* ``floor``: the same gunicorn command and conf serving the upstream's answers from a static WSGI
  app (``floor_app.py``): what the server itself costs, so the proxy's own share is measurable;
* ``proxy``: ``gunicorn -c conf/gunicorn.conf.py wsgiproxy:app`` with one gevent worker and the
  shipped defaults (access log to stdout, here a file); in a full run also ``floor-stock`` and
  ``proxy-stock``, the same with gunicorn's stock gevent worker (``WSGIPROXY_WORKER_CLASS=gevent``)
  instead of the shipped lean one; ``--targets proxy-nolog`` runs the proxy with the access log off.

Pinning (2 cores): the proxy, or the nginx ceiling, alone on core 0; the load generators and the
fake upstream share core 1. Non-streaming load is wrk (1 thread, keep-alive, POST via post.lua)
at concurrency 1, 16, 64, 256; streams come from ``sse_load`` at 100 and 1000 concurrent streams
of 20 events 20 ms apart. CPU per request is the process's utime+stime delta over the point
divided by the requests completed in it; RSS is sampled from /proc every 0.2 s.

Results go to ``tests/bench/results/<mode>.json`` and ``.md``; scratch files to ``.run/bench/``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import typing as t
from dataclasses import dataclass
from pathlib import Path

from tests._stack import ROOT, Managed, base_env

from . import payloads as p
from . import targets as T

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PROXY_CPU, LOAD_CPU = 0, 1
API_VERSION = "2025-03-01-preview"


@dataclass(frozen=True)
class Mode:
    name: str
    point_s: float  # seconds per non-streaming point
    stream_s: float  # seconds during which new streams start
    levels: tuple[int, ...] = (1, 16, 64, 256)
    streams: tuple[int, ...] = (100, 1000)
    claude_streams: tuple[int, ...] = (100,)  # Claude (Bedrock invoke) streams: the proxy targets only
    extra_proxy: bool = False  # also the stock-worker targets
    rounds: int = 1  # each point measured this many times, the targets taking turns; the median is reported


CLAUDE_PATH = "/v1/messages"
CLAUDE_DONE = "event: message_stop"  # what a complete Anthropic stream contains


def _speaks_claude(target: T.Target) -> bool:
    """Only the proxy translates a Bedrock invoke stream; the other targets would relay the binary messages."""
    return target.name.startswith("proxy")


QUICK = Mode("quick", point_s=3.0, stream_s=3.0)
FULL = Mode("full", point_s=3.0, stream_s=4.0, extra_proxy=True, rounds=3)

# Fields of a load result that add up over rounds; every other number is the median of the rounds.
_SUMMED = frozenset({"requests", "streams", "completed", "errors", "connections", "connect_errors", "read_errors",
                     "write_errors", "status_errors", "timeouts"})


def median_row(rows: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    """One point from its rounds: counts summed, figures the median of the rounds (percentiles too, key by
    key), peak RSS the highest; ``rounds`` keeps each round's CPU per request to show the spread."""
    if len(rows) == 1:
        return rows[0] | {"rounds": [rows[0]["cpu_us_per_req"]]}
    out: dict[str, t.Any] = {}
    for key, first in rows[0].items():
        values = [row[key] for row in rows if key in row]
        if key == "peak_rss_kb":
            out[key] = max(values)
        elif key in _SUMMED:
            out[key] = sum(values)
        elif isinstance(first, bool) or not isinstance(first, (int, float, dict, list)):
            out[key] = first
        elif isinstance(first, (int, float)):
            out[key] = statistics.median(values)
        elif key == "error_kinds":
            out[key] = {kind: sum(v.get(kind, 0) for v in values) for kind in {k for v in values for k in v}}
        elif isinstance(first, dict):
            out[key] = {k: statistics.median(v[k] for v in values) for k in first}
        else:
            out[key] = [item for v in values for item in v][:5]
    out["rounds"] = [row["cpu_us_per_req"] for row in rows]
    return out


class RssSampler:
    """Samples VmRSS of some pids every ``interval`` seconds; ``peak_kb`` since the last ``reset``."""

    def __init__(self, pids: t.Callable[[], list[int]], interval: float = 0.2) -> None:
        self._pids = pids
        self._interval = interval
        self._stop = threading.Event()
        self.peak_kb = 0
        self.series: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self._interval):
            try:
                rss = max((T.status_kb(pid, "VmRSS") for pid in self._pids()), default=0)
            except OSError:
                continue
            self.peak_kb = max(self.peak_kb, rss)
            self.series.append((round(time.monotonic() - start, 1), rss))

    def reset(self) -> None:
        self.peak_kb = 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


# --------------------------------------------------------------------------------------------
# load


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(url: str, body_file: Path, key: str, connections: int, seconds: float, limit: int = 0) -> dict[str, t.Any]:
    """wrk for ``seconds``; with ``limit``, until that many responses (then SIGINT), at most ``seconds``."""
    done_file = body_file.parent / f"wrk-done-{time.monotonic_ns()}"
    env = base_env({"BENCH_BODY": str(body_file), "BENCH_KEY": key, "BENCH_LIMIT": str(limit),
                    "BENCH_DONE_FILE": str(done_file)})
    cmd = [*T.taskset(LOAD_CPU), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(HERE / "post.lua"), url]
    before = children_cpu()
    start = time.monotonic()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    elapsed = 0.0
    if limit:
        while process.poll() is None and time.monotonic() - start < seconds + 5:
            if done_file.exists():
                elapsed = time.monotonic() - start
                process.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
                break
            time.sleep(0.05)
    try:
        stdout, stderr = process.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    loadgen_cpu = children_cpu() - before
    line = next((x for x in stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {stdout[-800:]} {stderr[-800:]}")
    result = json.loads(line.split(" ", 1)[1])
    if elapsed:
        result["duration_us"] = int(elapsed * 1e6)  # wrk's own figure includes its idle wait after the limit
    result["loadgen_cpu_s"] = round(loadgen_cpu, 3)
    return t.cast(dict[str, t.Any], result)


def sse_load(url: str, body_file: Path, key: str, concurrency: int, seconds: float, scratch: Path,
             rate: float = 0.0, done: str = "data: [DONE]") -> dict[str, t.Any]:
    out_file = scratch / f"sse-{concurrency}-{time.monotonic_ns()}.json"
    cmd = [*T.taskset(LOAD_CPU), sys.executable, "-m", "tests.bench.sse_load", "--url", url, "--body-file",
           str(body_file), "--key", key, "--concurrency", str(concurrency), "--duration", str(seconds),
           "--timeout", "60", "--rate", str(rate), "--done", done, "--out", str(out_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=base_env(), timeout=seconds + 120)
    if out.returncode != 0 or not out_file.exists():
        raise RuntimeError(f"sse_load failed ({out.returncode}): {out.stderr[-1500:]}")
    return t.cast(dict[str, t.Any], json.loads(out_file.read_text()))


# --------------------------------------------------------------------------------------------
# the run


class Bench:
    def __init__(self, mode: Mode, scratch: Path) -> None:
        self.mode = mode
        self.scratch = scratch
        self.started: list[Managed] = []
        self.targets: dict[str, T.Target] = {}
        self.upstream: T.Target | None = None
        self.bodies = {
            "chat": self._body("chat.json", p.chat_request(p.MODEL)),
            "stream": self._body("stream.json", p.chat_request(p.STREAM_MODEL, stream=True)),
            "claude": self._body("claude.json", p.messages_request()),
        }

    def _body(self, name: str, data: bytes) -> Path:
        path = self.scratch / name
        path.write_bytes(data)
        return path

    def start(self, names: t.Sequence[str], proxy_conf: Path | None = None) -> None:
        up_port = T.free_port()
        upstream = T.start_nginx("upstream", T.upstream_conf(self.scratch / "upstream", up_port),
                                 self.scratch / "upstream", up_port, LOAD_CPU)
        self.started.append(upstream)
        up_url = f"http://127.0.0.1:{up_port}"
        direct_chat = f"/v2/inference/deployments/{p.DEPLOYMENT}/chat/completions?api-version={API_VERSION}"
        direct_stream = f"/v2/inference/deployments/{p.STREAM_DEPLOYMENT}/chat/completions?api-version={API_VERSION}"
        self.upstream = T.Target("direct", up_url, direct_chat, direct_stream, b"", b"", master=upstream,
                                 note="wrk/sse_load → fake upstream (nginx)")
        self.upstream.find_workers()
        if "direct" in names:
            self.targets["direct"] = self.upstream
        if "nginx" in names:
            port = T.free_port()
            ceiling = T.start_nginx("ceiling", T.ceiling_conf(self.scratch / "ceiling", port, up_port),
                                    self.scratch / "ceiling", port, PROXY_CPU)
            self.started.append(ceiling)
            target = T.Target("nginx", ceiling.url, direct_chat, direct_stream, b"", b"", master=ceiling,  # type: ignore[attr-defined]
                              note="nginx proxy_pass → fake upstream (ceiling)")
            target.find_workers()
            self.targets["nginx"] = target
        config = T.write_proxy_config(self.scratch / "proxy-config", up_url)
        for name in names:
            if name not in VARIANTS:
                continue
            extra, note = VARIANTS[name]
            kwargs: dict[str, t.Any] = {"conf": proxy_conf} if proxy_conf else {}
            if name.startswith("floor"):
                kwargs["app"] = "tests.bench.floor_app:app"
            server = T.start_proxy(self.scratch / name, config, PROXY_CPU, worker_connections=1200,
                                   extra_env=extra, **kwargs)
            self.started.append(server)
            target = T.Target(name, server.url, "/v1/chat/completions", "/v1/chat/completions", b"", b"",
                              master=server, note=note)
            target.find_workers()
            self.targets[name] = target

    def stop(self) -> None:
        while self.started:
            self.started.pop().stop()

    def key(self, target: T.Target) -> str:
        return p.CLIENT_KEY if target.name.startswith("proxy") else ""

    def body(self, target: T.Target, kind: str) -> Path:
        return self.bodies[kind]

    def warm_up(self, target: T.Target) -> None:
        wrk(target.url + target.chat_path, self.bodies["chat"], self.key(target), 16, 1)
        sse_load(target.url + target.stream_path, self.bodies["stream"], self.key(target), 20, 0.5, self.scratch)
        if _speaks_claude(target):
            sse_load(target.url + CLAUDE_PATH, self.bodies["claude"], self.key(target), 5, 0.5, self.scratch,
                     done=CLAUDE_DONE)

    def measure(self, target: T.Target, sampler: RssSampler, load: t.Callable[[], dict[str, t.Any]],
                count_key: str) -> dict[str, t.Any]:
        assert self.upstream is not None
        cpu0, up0 = target.cpu(), self.upstream.cpu()
        sampler.reset()
        wall0 = time.monotonic()
        result = load()
        wall = time.monotonic() - wall0
        cpu1, up1 = target.cpu(), self.upstream.cpu()
        count = max(1, int(result[count_key]))
        result["cpu_us_per_req"] = round((cpu1["workers"] - cpu0["workers"]) / count * 1e6, 1)
        result["master_cpu_us_per_req"] = round((cpu1["master"] - cpu0["master"]) / count * 1e6, 2)
        result["worker_cpu_pct"] = round((cpu1["workers"] - cpu0["workers"]) / wall * 100, 1)
        result["upstream_cpu_pct"] = round((up1["workers"] - up0["workers"]) / wall * 100, 1)
        result["loadgen_cpu_pct"] = round(result.get("loadgen_cpu_s", 0) / wall * 100, 1)
        result["peak_rss_kb"] = sampler.peak_kb
        return result

    def run(self) -> dict[str, t.Any]:
        mode = self.mode
        names = list(self.targets)
        samplers = {name: RssSampler(lambda tg=target: tg.workers) for name, target in self.targets.items()}
        report: dict[str, t.Any] = {"nonstream": [], "stream": [], "memory": {}}
        try:
            for target in self.targets.values():
                self.warm_up(target)
            for level in mode.levels:
                rounds: dict[str, list[dict[str, t.Any]]] = {name: [] for name in names}
                for turn in range(mode.rounds):
                    for name in names:
                        target = self.targets[name]
                        url = target.url + target.chat_path
                        row = self.measure(target, samplers[name],
                                           functools.partial(wrk, url, self.bodies["chat"], self.key(target), level,
                                                             mode.point_s),
                                           "requests")
                        row |= {"target": name, "concurrency": level,
                                "rps": round(row["requests"] / (row["duration_us"] / 1e6), 1),
                                "errors": sum(row[k] for k in ("connect_errors", "read_errors", "write_errors",
                                                               "status_errors", "timeouts"))}
                        rounds[name].append(row)
                        _say(f"{name:12} c={level:<4} {row['rps']:9.1f} req/s  p50 {row['lat_p50_us'] / 1000:7.3f} ms"
                             f"  p99 {row['lat_p99_us'] / 1000:7.3f} ms  {row['cpu_us_per_req']:7.1f} us/req  "
                             f"errors {row['errors']}  (round {turn + 1}/{mode.rounds})")
                report["nonstream"] += [median_row(rows) for rows in rounds.values()]
            for streams in mode.streams:
                report["stream"] += self._stream_point(names, samplers, streams, "stream",
                                                       lambda target: target.stream_path)
            claude = [name for name in names if _speaks_claude(self.targets[name])]
            for streams in mode.claude_streams if claude else ():
                report.setdefault("claude", []).extend(
                    self._stream_point(claude, samplers, streams, "claude", lambda target: CLAUDE_PATH, CLAUDE_DONE))
            for name, target in self.targets.items():
                report["memory"][name] = {
                    "workers": len(target.workers),
                    "vmhwm_kb": max(T.status_kb(pid, "VmHWM") for pid in target.workers),
                    "rss_end_kb": max(T.status_kb(pid, "VmRSS") for pid in target.workers),
                    "pss_end_kb": max(T.pss_kb(pid) for pid in target.workers),
                    "master_rss_kb": T.status_kb(target.master.pid, "VmRSS") if target.master else 0,
                }
        finally:
            for sampler in samplers.values():
                sampler.stop()
        return report

    def _stream_point(self, names: list[str], samplers: dict[str, RssSampler], streams: int, body: str,
                      path: t.Callable[[T.Target], str], done: str = "data: [DONE]") -> list[dict[str, t.Any]]:
        """``streams`` concurrent streams against each target, ``self.mode.rounds`` times in turn: the median rows."""
        mode = self.mode
        rounds: dict[str, list[dict[str, t.Any]]] = {name: [] for name in names}
        for turn in range(mode.rounds):
            for name in names:
                target = self.targets[name]
                row = self.measure(target, samplers[name],
                                   functools.partial(sse_load, target.url + path(target), self.bodies[body],
                                                     self.key(target), streams, mode.stream_s, self.scratch,
                                                     done=done), "completed")
                row |= {"target": name}
                rounds[name].append(row)
                _say(f"{name:12} {body}={streams:<5} ok {row['completed']:6} errors {row['errors']:4}  "
                     f"TTFB p50 {row['ttfb_ms']['p50']:7.1f} p99 {row['ttfb_ms']['p99']:7.1f} ms  "
                     f"total p50 {row['total_ms']['p50']:7.1f} p99 {row['total_ms']['p99']:7.1f} ms  "
                     f"{row['cpu_us_per_req']:6.0f} us/stream  RSS {row['peak_rss_kb'] / 1024:6.1f} MB  "
                     f"(round {turn + 1}/{mode.rounds})")
        return [median_row(rows) for rows in rounds.values()]


# --------------------------------------------------------------------------------------------
# soak


def soak(bench: Bench, total: int, concurrency: int, max_seconds: float) -> dict[str, t.Any]:
    target = bench.targets["proxy"]
    sampler = RssSampler(lambda: target.workers, interval=1.0)
    try:
        wrk(target.url + target.chat_path, bench.bodies["chat"], p.CLIENT_KEY, 16, 2)  # warm: pools, token, caches
        time.sleep(1.5)
        rss_start = T.status_kb(target.workers[0], "VmRSS")
        sampler.series.clear()
        row = bench.measure(target, sampler, lambda: wrk(target.url + target.chat_path, bench.bodies["chat"],
                                                         p.CLIENT_KEY, concurrency, max_seconds, limit=total),
                            "requests")
        time.sleep(1.5)
        rss_end = T.status_kb(target.workers[0], "VmRSS")
    finally:
        sampler.stop()
    series = sampler.series
    step = max(1, len(series) // 60)
    return {"requests": row["requests"], "concurrency": concurrency,
            "rps": round(row["requests"] / (row["duration_us"] / 1e6), 1),
            "errors": sum(row[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors",
                                           "timeouts")),
            "cpu_us_per_req": row["cpu_us_per_req"], "lat_p50_us": row["lat_p50_us"], "lat_p99_us": row["lat_p99_us"],
            "rss_start_kb": rss_start, "rss_end_kb": rss_end, "rss_peak_kb": sampler.peak_kb,
            "growth_kb": rss_end - rss_start, "rss_series_kb": series[::step]}


# --------------------------------------------------------------------------------------------
# report


def environment() -> dict[str, t.Any]:
    def version(module: str) -> str:
        from importlib.metadata import version as v
        try:
            return v(module)
        except Exception:
            return "?"

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0] if shutil.which(
        "wrk") else "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": commit.strip(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gunicorn": version("gunicorn"), "gevent": version("gevent"), "urllib3": version("urllib3"),
        "werkzeug": version("werkzeug"), "nginx": T.nginx_version(), "wrk": " ".join(wrk_v.split()[:2]),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "calibration_ms": calibration_ms(),
        "pinning": (f"proxy / nginx ceiling on core {PROXY_CPU}; wrk, sse_load and the fake upstream on core "
                    f"{LOAD_CPU}") if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else "none",
    }


_CALIBRATION = ("import json, time\n"
                "o = {'model': 'gpt-4o', 'messages': [{'role': 'user', 'content': 'x' * 200}] * 4, 'n': 1.5}\n"
                "t = time.process_time()\n"
                "for _ in range(20000): json.loads(json.dumps(o))\n"
                "print(round((time.process_time() - t) * 1000, 1))")


def calibration_ms() -> float:
    """CPU ms of a fixed pure-Python workload on the proxy's core: compare runs by it (noise, CPU model)."""
    out = subprocess.run([*T.taskset(PROXY_CPU), sys.executable, "-c", _CALIBRATION], capture_output=True, text=True,
                         timeout=120)
    return float(out.stdout.strip() or 0)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def checks(report: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """The targets of issue #5 against this run's figures."""
    out: list[dict[str, t.Any]] = []
    ns = {(r["target"], r["concurrency"]): r for r in report.get("nonstream", [])}
    st = {(r["target"], r["concurrency"]): r for r in report.get("stream", [])}

    def add(what: str, value: str, goal: str, ok: bool | None) -> None:
        out.append({"target": what, "measured": value, "goal": goal, "ok": ok})

    if ("proxy", 64) in ns:
        cpu = ns[("proxy", 64)]["cpu_us_per_req"]
        add("CPU per non-streaming request (c=64, worker)", f"{cpu:.0f} µs", "≤ 250 µs", cpu <= 250)
        if ("floor", 64) in ns:
            floor = ns[("floor", 64)]["cpu_us_per_req"]
            add("the server's own floor for that (gunicorn + static app, c=64)", f"{floor:.0f} µs; proxy's own "
                f"share {cpu - floor:.0f} µs", "(context)", None)
    if ("proxy", 1) in ns and ("direct", 1) in ns:
        added = (ns[("proxy", 1)]["lat_p50_us"] - ns[("direct", 1)]["lat_p50_us"]) / 1000
        add("added p50 latency at c=1 over direct", f"{added:.3f} ms", "≤ 0.3 ms", added <= 0.3)
    if ("proxy", 1000) in st:
        row = st[("proxy", 1000)]
        add("errors at 1000 streams", f"{row['errors']} of {row['streams']}", "0", row["errors"] == 0)
        if ("nginx", 1000) in st:
            ref = st[("nginx", 1000)]
            ttfb = row["ttfb_ms"]["p50"] / max(ref["ttfb_ms"]["p50"], 1e-6)
            total = row["total_ms"]["p99"] / max(ref["total_ms"]["p99"], 1e-6)
            add("TTFB p50 at 1000 streams vs nginx", f"{ttfb:.2f}× ({row['ttfb_ms']['p50']:.1f} vs "
                f"{ref['ttfb_ms']['p50']:.1f} ms)", "≤ 1.5×", ttfb <= 1.5)
            add("total p99 at 1000 streams vs nginx", f"{total:.2f}× ({row['total_ms']['p99']:.0f} vs "
                f"{ref['total_ms']['p99']:.0f} ms)", "≤ 1.3×", total <= 1.3)
            if ("floor", 1000) in st:
                fl = st[("floor", 1000)]
                add("the floor at 1000 streams vs nginx (TTFB p50, total p99)",
                    f"{fl['ttfb_ms']['p50'] / max(ref['ttfb_ms']['p50'], 1e-6):.2f}×, "
                    f"{fl['total_ms']['p99'] / max(ref['total_ms']['p99'], 1e-6):.2f}×", "(context)", None)
        rss = row["peak_rss_kb"] / 1024
        add("peak RSS per worker at 1000 streams", f"{rss:.1f} MB", "≤ 60 MB", rss <= 60)
    if "soak" in report:
        growth = report["soak"]["growth_kb"] / 1024
        add(f"RSS growth over {report['soak']['requests']} requests", f"{growth:+.1f} MB", "< 5 MB", growth < 5)
    return out


def _spread(row: dict[str, t.Any]) -> str:
    """CPU per request: the median, and the range of the rounds when there were several."""
    rounds = row.get("rounds") or []
    if len(rounds) < 2:
        return f"{row['cpu_us_per_req']:.0f}"
    return f"{row['cpu_us_per_req']:.0f} ({min(rounds):.0f}–{max(rounds):.0f})"


def _stream_table(title: str, rows: list[dict[str, t.Any]]) -> list[str]:
    lines = [f"## {title}", "",
             "| target | streams | completed | errors | TTFB p50 ms | TTFB p99 ms | total p50 ms | total p99 ms "
             "| streams/s | CPU µs/stream | peak RSS MB | target CPU % | loadgen CPU % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["concurrency"], _order(r["target"]))):
        lines.append(f"| {r['target']} | {r['concurrency']} | {r['completed']:,} | {r['errors']} | "
                     f"{r['ttfb_ms']['p50']:.1f} | {r['ttfb_ms']['p99']:.1f} | {r['total_ms']['p50']:.0f} | "
                     f"{r['total_ms']['p99']:.0f} | {r['streams_per_s']:,.0f} | {_spread(r)} | "
                     f"{r['peak_rss_kb'] / 1024:.1f} | {r['worker_cpu_pct']:.0f} | {r['loadgen_cpu_pct']:.0f} |")
    return [*lines, ""]


def markdown(report: dict[str, t.Any]) -> str:
    env = report["environment"]
    lines = [f"# wsgiproxy benchmark: {report['mode']} run", "",
             f"{env['date']}, commit `{env['commit']}`; {env['cpus']} × {env['cpu_model']}, Linux {env['kernel']}, "
             f"Python {env['python']}, gunicorn {env['gunicorn']}, gevent {env['gevent']}, urllib3 {env['urllib3']}, "
             f"nginx {env['nginx']}, {env['wrk']}.",
             f"Load average at start {' '.join(env['loadavg'])}, at end {' '.join(env.get('loadavg_end', []))}; "
             f"calibration (fixed JSON loop on the proxy's core, lower is quieter) {env['calibration_ms']} ms "
             "at start, "
             f"{env.get('calibration_end_ms')} ms at end.",
             f"Pinning: {env['pinning']}.", ""]
    if report.get("targets"):
        lines += ["| target | what |", "|---|---|"]
        lines += [f"| {name} | {note} |" for name, note in report["targets"].items()]
        lines.append("")
    direct = {r["concurrency"]: r["rps"] for r in report.get("nonstream", []) if r["target"] == "direct"}
    if report.get("nonstream"):
        lines += ["## Non-streaming chat completions (wrk, keep-alive)", "",
                  "| target | conc. | req/s | × direct | p50 ms | p99 ms | CPU µs/req (worker) | master µs/req "
                  "| errors | target CPU % | upstream CPU % | loadgen CPU % |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(report["nonstream"], key=lambda r: (r["concurrency"], _order(r["target"]))):
            ratio = r["rps"] / direct[r["concurrency"]] if direct.get(r["concurrency"]) else 0
            lines.append(f"| {r['target']} | {r['concurrency']} | {r['rps']:,.0f} | {ratio:.3f} | "
                         f"{r['lat_p50_us'] / 1000:.3f} | {r['lat_p99_us'] / 1000:.3f} | {_spread(r)} | "
                         f"{r['master_cpu_us_per_req']:.1f} | {r['errors']} | {r['worker_cpu_pct']:.0f} | "
                         f"{r['upstream_cpu_pct']:.0f} | {r['loadgen_cpu_pct']:.0f} |")
        lines.append("")
    if report.get("stream"):
        lines += _stream_table("Streams (20 events 20 ms apart, keep-alive clients)", report["stream"])
    if report.get("claude"):
        lines += _stream_table("Claude streams (a Bedrock invoke stream of 20 binary messages 20 ms apart, relayed "
                               "as Anthropic SSE; the proxy targets only)", report["claude"])
    if report.get("memory"):
        lines += ["## Memory per worker at the end of the run", "",
                  "| target | workers | VmHWM MB | RSS MB | PSS MB | master RSS MB |", "|---|---:|---:|---:|---:|---:|"]
        for name, m in report["memory"].items():
            lines.append(f"| {name} | {m['workers']} | {m['vmhwm_kb'] / 1024:.1f} | {m['rss_end_kb'] / 1024:.1f} | "
                         f"{m['pss_end_kb'] / 1024:.1f} | {m['master_rss_kb'] / 1024:.1f} |")
        lines.append("")
    if "soak" in report:
        s = report["soak"]
        lines += ["## Soak", "",
                  f"{s['requests']:,} non-streaming requests at concurrency {s['concurrency']}: {s['rps']:,.0f} req/s, "
                  f"{s['errors']} errors, {s['cpu_us_per_req']:.0f} µs CPU/request, "
                  f"p50 {s['lat_p50_us'] / 1000:.2f} ms, "
                  f"p99 {s['lat_p99_us'] / 1000:.2f} ms. Worker RSS {s['rss_start_kb'] / 1024:.1f} MB after warm-up → "
                  f"{s['rss_end_kb'] / 1024:.1f} MB at the end (peak {s['rss_peak_kb'] / 1024:.1f} MB): growth "
                  f"{s['growth_kb'] / 1024:+.2f} MB.", ""]
    if report.get("checks"):
        lines += ["## Issue #5 targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
        for c in report["checks"]:
            met = "—" if c["ok"] is None else "yes" if c["ok"] else "no"
            lines.append(f"| {c['target']} | {c['measured']} | {c['goal']} | {met} |")
        lines.append("")
    rounds = max((len(r.get("rounds") or []) for r in report.get("nonstream", []) + report.get("stream", [])
                  + report.get("claude", [])), default=1)
    if rounds > 1:
        lines += [f"Each point was measured {rounds} times, the targets taking turns, so a burst of load from the "
                  "machine's other tenants hits them alike; the tables show the median of the rounds (counts are "
                  "summed) and, for CPU, the range of the rounds in brackets.", ""]
    lines += ["CPU µs/req: the target's worker processes (utime+stime from /proc) over the requests completed in "
              "that point; for `direct` that is the fake upstream's nginx worker. Upstream/loadgen CPU % show that "
              "the fake upstream and the load generators are not the bottleneck (they share core 1).", ""]
    return "\n".join(lines)


_STOCK = {"WSGIPROXY_WORKER_CLASS": "gevent"}
# The gunicorn targets: extra environment, and what each one is.
VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "floor": ({}, "the same gunicorn command and conf serving a static answer (tests/bench/floor_app.py): "
                  "the server's own cost, no proxying"),
    "floor-stock": (_STOCK, "floor with gunicorn's stock gevent worker (WSGIPROXY_WORKER_CLASS=gevent)"),
    "proxy": ({}, "gunicorn, 1 gevent worker, shipped conf, access log on (stdout to a file)"),
    "proxy-stock": (_STOCK, "proxy with gunicorn's stock gevent worker (WSGIPROXY_WORKER_CLASS=gevent)"),
    "proxy-nolog": ({"WSGIPROXY_ACCESSLOG": "off"}, "gunicorn, 1 gevent worker, shipped conf, access log off"),
}


def _order(name: str) -> int:
    order = ["direct", "nginx", "floor", "floor-stock", "proxy", "proxy-stock", "proxy-nolog"]
    return order.index(name) if name in order else 9


def _say(text: str) -> None:
    print(text, flush=True)


def preflight() -> None:
    missing = [tool for tool in ("wrk", "nginx") if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if missing or not T.ECHO_MODULE.exists():
        need = " ".join(missing + ([] if T.ECHO_MODULE.exists() else ["nginx echo module"]))
        raise SystemExit(f"bench: missing {need}; install with: apt-get install wrk nginx-light "
                         "libnginx-mod-http-echo (make bench does this when run as root)")


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a short run (about 1 minute)")
    group.add_argument("--soak", action="store_true", help="100k requests through the proxy, RSS sampled")
    group.add_argument("--profile", action="store_true", help="py-spy the proxy worker under load")
    parser.add_argument("--requests", type=int, default=100_000, help="soak: requests in a row")
    parser.add_argument("--targets", default="", help="comma-separated subset of direct,nginx,"
                        + ",".join(VARIANTS))
    parser.add_argument("--results", default=str(RESULTS), help="directory for <mode>.json and <mode>.md")
    args = parser.parse_args(argv)
    preflight()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mode = QUICK if args.quick else FULL
    mode_name = "soak" if args.soak else "profile" if args.profile else mode.name
    scratch = (ROOT / ".run" / "bench" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    if args.targets:
        names = [n.strip() for n in args.targets.split(",") if n.strip()]
    elif args.soak or args.profile:
        names = ["proxy"]
    else:
        names = ["direct", "nginx", "floor", "proxy"] + (["floor-stock", "proxy-stock"] if mode.extra_proxy else [])
    report: dict[str, t.Any] = {"mode": mode_name, "environment": environment()}
    bench = Bench(mode, scratch)
    begin = time.monotonic()
    try:
        if args.profile:
            from .profile import profile
            bench.start(names)
            report |= profile(bench, scratch)
        else:
            bench.start(names)
            report["targets"] = {name: target.note for name, target in bench.targets.items()}
            if args.soak:
                report["soak"] = soak(bench, args.requests, 16, max_seconds=900)
            else:
                report |= bench.run()
    finally:
        bench.stop()
    report["elapsed_s"] = round(time.monotonic() - begin, 1)
    report["environment"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    report["environment"]["calibration_end_ms"] = calibration_ms()
    report["checks"] = checks(report)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{mode_name}.json").write_text(json.dumps(report, indent=1) + "\n")
    if not args.profile:
        (results / f"{mode_name}.md").write_text(markdown(report))
        _say("\n" + markdown(report))
    _say(f"results: {results / (mode_name + '.json')} (scratch files in {scratch}); {report['elapsed_s']:.0f} s")
    return 0
