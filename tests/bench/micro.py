"""In-process CPU micro-benchmark of the app's own work per request and per stream event (issue #5).

``python -m tests.bench.micro [--against REV] [--shared aicore] [-n N] [--batch B]`` imports two copies of the
package in one process: the working tree's ``wsgiproxy`` and ``REV``'s (default ``HEAD``, taken
with ``git archive``) as ``wsgiproxy_base`` (the package uses relative imports only). Each case
runs on both, alternating every ``B`` measurements so both see the same machine load, and the
median CPU time (``time.process_time``) per request or per event is printed side by side.

The upstream is a fake transport handing out responses built before the clock starts, so the
figures are wsgiproxy's own work plus its thin client glue: no socket, no server, no
gunicorn. Metrics run in prometheus multiprocess mode (mmap files), as under gunicorn; the usage
log goes to a file. Not collected by pytest (no ``test_`` prefix); the machine may be shared, so
read the two columns of one run against each other, not against another run.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = "wsgiproxy_base"  # the package name the --against copy is imported under
KEY = "sk-bench-key-123456"
API = "https://api.example"
EVENTS = 20


# -- the cases, built against one copy of the package ---------------------------------------


Case = t.Callable[[], float]  # one measurement: CPU seconds per request (or per event)


def _cases(package: str, workdir: str) -> dict[str, Case]:
    """Every case, each a function timing one request (or one pass of events) of ``package``."""
    import importlib

    from tests.bench import payloads
    from tests.fakes import FakeResponse, response, stream_response

    def load(module: str) -> t.Any:
        return importlib.import_module(f"{package}.{module}")

    config = load("config")
    sub = config.SubAccount("a", config.Credentials("client", "secret", "https://auth.example/oauth/token", API),
                            "rg-a", {"gpt-4o": (f"{API}/v2/inference/deployments/d1",),
                                     "anthropic--claude-4.5-sonnet": (f"{API}/v2/inference/deployments/d3",)})
    settings = config.Settings(subaccounts=(sub,), api_keys=("sk-other-key-000000", KEY),
                               usage_log=os.path.join(workdir, f"{package}-usage.log"))

    class Transport:
        """Hands out the prepared response; tokens are answered on the spot (and cached after one)."""

        def __init__(self) -> None:
            self.next: FakeResponse | None = None

        def request(self, method: str, url: str, **kw: t.Any) -> FakeResponse:
            if url.endswith("/oauth/token"):
                return response(200, {"access_token": "tok", "expires_in": 3600})
            answer, self.next = self.next, None
            assert answer is not None
            return answer

    transport = Transport()
    app = load("proxy").create_app(settings, transport=transport)
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
        statuses.append(status)

    def request_case(env: dict[str, t.Any], body: bytes, answer: t.Callable[[], t.Any] | None) -> Case:
        def run() -> float:
            environ = env.copy()
            environ["wsgi.input"] = io.BytesIO(body)
            transport.next = answer() if answer is not None else None
            started = time.process_time()
            out = app(environ, start_response)
            for _ in out:
                pass
            close = getattr(out, "close", None)
            if close is not None:
                close()
            return time.process_time() - started

        for _ in range(20):
            run()  # warm up: token, label children, caches
        if set(statuses) != {"200 OK"}:
            raise SystemExit(f"{package} {env['PATH_INFO']}: answered {sorted(set(statuses))}")
        statuses.clear()
        return run

    def json_response(body: bytes) -> t.Callable[[], FakeResponse]:
        return lambda: response(200, body, {"content-type": "application/json"})

    def streamed(pieces: list[bytes], content_type: str) -> t.Callable[[], FakeResponse]:
        return lambda: stream_response(pieces, content_type)

    completion = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}).encode()
    chat_events = openai_events()
    invoke_events = payloads.anthropic_events(EVENTS)
    invoke_frames = [payloads.invoke_frame(event) for event in invoke_events]
    auth = {"authorization": f"Bearer {KEY}"}
    chat = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    chat_stream = json.dumps({"model": "gpt-4o", "stream": True,
                              "messages": [{"role": "user", "content": "hi"}]}).encode()
    messages = json.dumps({"model": "anthropic--claude-4.5-sonnet", "max_tokens": 100, "stream": True,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
    cases: dict[str, Case] = {
        "POST /v1/chat/completions (µs/request)": request_case(
            _environ("POST", "/v1/chat/completions", chat, **auth), chat, json_response(completion)),
        "GET /health (µs/request)": request_case(_environ("GET", "/health"), b"", None),
        "GET /v1/models/gpt-4o (Map fallback, µs/request)": request_case(
            _environ("GET", "/v1/models/gpt-4o", **auth), b"", None),
        "chat stream, 20 events (µs/stream)": request_case(
            _environ("POST", "/v1/chat/completions", chat_stream, **auth), chat_stream,
            streamed(chat_events, "text/event-stream")),
        "messages stream, 20 deltas (µs/stream)": request_case(
            _environ("POST", "/v1/messages", messages, **{"x-api-key": KEY}), messages,
            streamed(invoke_frames, "application/vnd.amazon.eventstream")),
    }

    # Components on their own (calls that exist in both trees).
    proxy, logs, metrics_module = load("proxy"), load("logs"), load("metrics")
    keys = app.keys
    key_env = _environ("POST", "/v1/chat/completions", **auth)
    cases["auth: key check (µs/request)"] = _repeat(lambda: keys.check(key_env))
    make_id = getattr(app.state, "request_id", None) or proxy._request_id  # per process since the tree after HEAD
    cases["request id (µs/request)"] = _repeat(lambda: make_id(key_env))
    metrics = metrics_module.Metrics(["gpt-4o"])
    record = load("record").RequestRecord("0" * 32, endpoint="chat", key_id="key-0123456789ab", model="gpt-4o",
                                          status=200, prompt_tokens=9, completion_tokens=3)
    record.first_byte = record.started + 0.01
    record.ended = record.started + 0.02

    def metrics_request() -> None:
        metrics.request_started()
        metrics.request_done(record)

    cases["metrics: one chat request (µs/request)"] = _repeat(metrics_request)
    usage_line = logs.usage_line
    cases["usage line (µs/request)"] = _repeat(lambda: usage_line(record, 1.7e9))

    def per_event(make: t.Callable[[], t.Any], pieces: list[bytes]) -> Case:
        def run() -> float:
            feed = make().feed
            started = time.process_time()
            for piece in pieces:
                feed(piece)
            return (time.process_time() - started) / len(pieces)

        return run

    sse, openai, anthropic = load("dialects.sse"), load("dialects.openai"), load("dialects.anthropic")
    cases["SSEDecoder.feed (µs/event)"] = per_event(sse.SSEDecoder, chat_events)
    cases["ChatStream.feed (µs/event)"] = per_event(lambda: openai.ChatStream(False), chat_events)
    model = "anthropic--claude-4.5-sonnet"
    cases["MessagesStream.feed, binary (µs/event)"] = per_event(
        lambda: anthropic.MessagesStream(model, "application/vnd.amazon.eventstream"), invoke_frames)
    text_pieces = [b"data: " + event + b"\n\n" for event in invoke_events]
    cases["MessagesStream.feed, text (µs/event)"] = per_event(
        lambda: anthropic.MessagesStream(model, "application/json"), text_pieces)
    return cases


def _environ(method: str, path: str, body: bytes = b"", **headers: str) -> dict[str, t.Any]:
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
           "SERVER_NAME": "localhost", "SERVER_PORT": "3001", "SERVER_PROTOCOL": "HTTP/1.1",
           "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": False,
           "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
           "HTTP_HOST": "localhost:3001", "REMOTE_ADDR": "127.0.0.1"}
    if body:
        env["CONTENT_TYPE"] = "application/json"
        env["CONTENT_LENGTH"] = str(len(body))
    env.update({"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()})
    return env


def _repeat(fn: t.Callable[[], object], times: int = 10) -> Case:
    def run() -> float:
        started = time.process_time()
        for _ in range(times):
            fn()
        return (time.process_time() - started) / times

    return run


def _median(times: list[float]) -> float:
    return statistics.median(times) * 1e6


def openai_events() -> list[bytes]:
    """One upstream read per event, as an Azure OpenAI stream arrives 20 ms apart."""
    head = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    events = [head + '"choices":[],"prompt_filter_results":[{"prompt_index":0}]}']
    events.append(head + '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}')
    events += [head + f'"choices":[{{"index":0,"delta":{{"content":"word{i} "}},"finish_reason":null}}]}}'
               for i in range(EVENTS - 1)]
    events.append(head + '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')
    events.append(head + '"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":20,"total_tokens":29}}')
    return [b"data: " + event.encode() + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]


# -- both trees in one process, interleaved ------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--against", default="HEAD", help="git revision to compare with (default: HEAD)")
    parser.add_argument("-n", type=int, default=3000, help="measurements per case and tree (default: 3000)")
    parser.add_argument("--shared", nargs="*", default=[], metavar="SUBPACKAGE",
                        help="subpackages both copies take from the working tree, e.g. aicore: "
                        "to leave someone else's work in progress out of the comparison")
    parser.add_argument("--batch", type=int, default=100, help="measurements before switching trees (default: 100)")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="micro-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = workdir  # before prometheus_client is imported: as under gunicorn
    archive = subprocess.run(["git", "archive", args.against, "wsgiproxy"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", workdir, "--transform", f"s,^wsgiproxy,{BASE},"], input=archive, check=True)
    for name in args.shared:
        shutil.rmtree(os.path.join(workdir, BASE, name))
        shutil.copytree(ROOT / "wsgiproxy" / name, os.path.join(workdir, BASE, name))
    sys.path.insert(0, workdir)
    sys.path.insert(0, str(ROOT))
    trees = {BASE: _cases(BASE, workdir), "wsgiproxy": _cases("wsgiproxy", workdir)}
    results: dict[str, dict[str, float]] = {tree: {} for tree in trees}
    for name in trees["wsgiproxy"]:
        times: dict[str, list[float]] = {tree: [] for tree in trees}
        for _ in range(max(args.n // args.batch, 1)):
            for tree, cases in trees.items():  # alternate, so both see the same machine load
                run = cases[name]
                gc.collect()
                gc.disable()  # a collection would land on whichever measurement is unlucky
                times[tree] += [run() for _ in range(args.batch)]
                gc.enable()
        for tree in trees:
            results[tree][name] = _median(times[tree])
    width = max(map(len, results["wsgiproxy"]))
    print(f"{'case':<{width}}  {args.against[:12]:>12}  {'working tree':>12}  {'change':>7}")
    for name, value in results["wsgiproxy"].items():
        old = results[BASE][name]
        print(f"{name:<{width}}  {old:12.1f}  {value:12.1f}  {(value - old) / old * 100:+6.0f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
