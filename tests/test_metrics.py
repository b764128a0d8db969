"""Metrics, the usage line and request ids, in process: the app with a scripted upstream.

Single-process mode (no PROMETHEUS_MULTIPROC_DIR): each app has its own registry, so values are
read with ``registry.get_sample_value``. The multiprocess path is proven under gunicorn in
tests/test_ops_gunicorn.py.
"""

from __future__ import annotations

import json
import logging
import re
import typing as t
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.test import Client

from tests._stack import ROOT, python_child
from tests.fakes import FakeTransport, PushableResponse, response, stream_response
from tests.test_proxy import AUTH, CHAT, COMPLETION, KEY, STREAM, settings
from wsgiproxy.aicore.catalog import Deployment
from wsgiproxy.config import Credentials, SubAccount
from wsgiproxy.endpoints._upstream import usage_tokens
from wsgiproxy.errors import UpstreamUnreachable
from wsgiproxy.logs import RequestIdFilter, UsageLog, usage_line
from wsgiproxy.metrics import BUCKETS, Metrics, status_label
from wsgiproxy.proxy import WsgiProxy, create_app
from wsgiproxy.record import RequestRecord


class App:
    """The proxy, a test client and its usage lines."""

    def __init__(self, transport: FakeTransport, usage: Path, **overrides: t.Any) -> None:
        self.proxy: WsgiProxy = create_app(settings(usage_log=str(usage), **overrides), transport=transport)
        self.client = Client(self.proxy)  # type: ignore[arg-type]
        self.usage = usage

    def request(self, method: str, path: str, **kwargs: t.Any) -> t.Any:
        """A request whose body is read and closed, as a server does."""
        resp = self.client.open(path, method=method, **kwargs)
        resp.get_data()
        resp.close()
        return resp

    def value(self, name: str, **labels: str) -> float:
        registry = self.proxy.state.metrics.registry
        assert registry is not None
        return registry.get_sample_value(name, labels) or 0.0

    def usage_lines(self) -> list[dict[str, t.Any]]:
        text = self.usage.read_text() if self.usage.exists() else ""
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def make_app(tmp_path: Path) -> t.Iterator[t.Callable[..., App]]:
    apps: list[App] = []

    def make(transport: FakeTransport, **overrides: t.Any) -> App:
        apps.append(App(transport, tmp_path / "usage.log", **overrides))
        return apps[-1]

    yield make
    for app in apps:
        app.proxy.usage.close()


def test_non_stream_request_is_counted_with_tokens_and_upstream(make_app: t.Callable[..., App]) -> None:
    app = make_app(FakeTransport([response(200, COMPLETION)]))
    resp = app.request("POST", "/v1/chat/completions", json=CHAT, headers={**AUTH, "X-Request-Id": "req-42"})
    assert resp.status_code == 200 and resp.headers["X-Request-Id"] == "req-42"
    assert app.value("wsgiproxy_requests_total", endpoint="chat", model="gpt-4o", status="200") == 1
    assert app.value("wsgiproxy_request_duration_seconds_count", endpoint="chat", streamed="false") == 1
    assert app.value("wsgiproxy_time_to_first_byte_seconds_count", endpoint="chat", streamed="false") == 1
    assert app.value("wsgiproxy_tokens_total", model="gpt-4o", type="prompt") == 1
    assert app.value("wsgiproxy_tokens_total", model="gpt-4o", type="completion") == 1
    assert app.value("wsgiproxy_upstream_requests_total", subaccount="a", deployment="d1", status="200") == 1
    assert app.value("wsgiproxy_upstream_latency_seconds_count", subaccount="a", deployment="d1") == 1
    assert app.value("wsgiproxy_token_refreshes_total", subaccount="a", result="ok") == 1
    assert app.value("wsgiproxy_requests_in_flight") == 0

    (line,) = app.usage_lines()
    assert line["request_id"] == "req-42" and line["key_id"].startswith("key-") and KEY not in json.dumps(line)
    assert {k: line[k] for k in ("endpoint", "model", "subaccount", "deployment", "status", "streamed",
                                 "prompt_tokens", "completion_tokens", "disconnected")} == {
        "endpoint": "chat", "model": "gpt-4o", "subaccount": "a", "deployment": "d1", "status": 200,
        "streamed": False, "prompt_tokens": 1, "completion_tokens": 1, "disconnected": False}
    assert line["duration_ms"] >= line["ttfb_ms"] >= 0
    assert line["time"].endswith("Z") and len(line["time"]) == len("2025-01-01T00:00:00.000Z")


def test_stream_tokens_come_from_the_translator(make_app: t.Callable[..., App]) -> None:
    app = make_app(FakeTransport([stream_response(STREAM)]))
    resp = app.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH, buffered=False)
    assert app.value("wsgiproxy_requests_in_flight") == 1  # until the body is closed
    chunks = list(resp.response)
    resp.close()
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert app.value("wsgiproxy_requests_in_flight") == 0
    assert app.value("wsgiproxy_requests_total", endpoint="chat", model="gpt-4o", status="200") == 1
    assert app.value("wsgiproxy_request_duration_seconds_count", endpoint="chat", streamed="true") == 1
    assert app.value("wsgiproxy_tokens_total", model="gpt-4o", type="completion") == 1
    assert app.value("wsgiproxy_stream_disconnects_total", endpoint="chat", model="gpt-4o") == 0
    (line,) = app.usage_lines()
    assert line["streamed"] is True and line["prompt_tokens"] == 1 and line["disconnected"] is False


def test_client_disconnect_mid_stream_is_recorded(make_app: t.Callable[..., App]) -> None:
    app = make_app(FakeTransport([stream_response(STREAM)]))
    resp = app.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH, buffered=False)
    next(iter(resp.response))
    resp.close()  # what a WSGI server does when the client has gone
    assert app.value("wsgiproxy_stream_disconnects_total", endpoint="chat", model="gpt-4o") == 1
    assert app.value("wsgiproxy_requests_in_flight") == 0
    (line,) = app.usage_lines()
    assert line["disconnected"] is True and line["ttfb_ms"] is not None


def pushed_request(app: App, pieces: list[bytes | None]) -> t.Any:
    """A streamed chat request whose body the test pushes, as the lean worker does (servers/pump.py)."""
    from werkzeug.test import EnvironBuilder

    app.proxy._transport.script.append(PushableResponse(pieces))  # type: ignore[union-attr]
    environ = EnvironBuilder("/v1/chat/completions", method="POST", json={**CHAT, "stream": True},
                             headers=AUTH).get_environ()
    statuses = []
    body = app.proxy(environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert statuses == ["200 OK"] and body.upstream() is not None  # type: ignore[attr-defined]
    return body


def test_a_pushed_stream_is_recorded_like_an_iterated_one(make_app: t.Callable[..., App]) -> None:
    app = make_app(FakeTransport([]))
    body = pushed_request(app, [None, *STREAM])
    assert body.step() == b""
    assert app.value("wsgiproxy_requests_in_flight") == 1
    while not body.over:
        body.step()
    body.close()
    assert app.value("wsgiproxy_requests_in_flight") == 0
    assert app.value("wsgiproxy_tokens_total", model="gpt-4o", type="completion") == 1
    assert app.value("wsgiproxy_stream_disconnects_total", endpoint="chat", model="gpt-4o") == 0
    (line,) = app.usage_lines()
    assert line["streamed"] is True and line["disconnected"] is False and line["ttfb_ms"] is not None


def test_a_client_leaving_a_pushed_stream_is_recorded(make_app: t.Callable[..., App]) -> None:
    app = make_app(FakeTransport([]))
    body = pushed_request(app, list(STREAM))
    body.step()
    assert body.step()  # the first event with a choice
    body.close()  # the pump ended: the client went away
    assert app.value("wsgiproxy_stream_disconnects_total", endpoint="chat", model="gpt-4o") == 1
    (line,) = app.usage_lines()
    assert line["disconnected"] is True and line["ttfb_ms"] is not None


def test_an_expired_pushed_stream_is_not_a_disconnect(make_app: t.Callable[..., App]) -> None:
    app = make_app(FakeTransport([]))
    body = pushed_request(app, [STREAM[0], None])
    body.step()
    assert b"read timeout" in body.expire() and body.over
    body.close()
    assert app.value("wsgiproxy_stream_disconnects_total", endpoint="chat", model="gpt-4o") == 0


def test_upstream_failures_and_bounded_labels(make_app: t.Callable[..., App]) -> None:
    refused = UpstreamUnreachable("connection refused")
    app = make_app(FakeTransport([refused, response(429, {"error": {"message": "slow down"}})]))
    assert app.request("POST", "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 502
    assert app.request("POST", "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 429
    evil = {**CHAT, "model": "evil-{}\n"}
    assert app.request("POST", "/v1/chat/completions", json=evil, headers=AUTH).status_code == 404
    assert app.request("GET", "/no/such/path/x1").status_code == 404
    assert app.value("wsgiproxy_upstream_requests_total", subaccount="a", deployment="d1", status="error") == 1
    assert app.value("wsgiproxy_upstream_requests_total", subaccount="a", deployment="d1", status="429") == 1
    assert app.value("wsgiproxy_requests_total", endpoint="chat", model="gpt-4o", status="502") == 1
    assert app.value("wsgiproxy_requests_total", endpoint="chat", model="gpt-4o", status="429") == 1
    assert app.value("wsgiproxy_requests_total", endpoint="chat", model="-", status="404") == 1
    assert app.value("wsgiproxy_requests_total", endpoint="-", model="-", status="404") == 1
    text = app.request("GET", "/metrics").get_data(as_text=True)
    assert "evil" not in text and "/no/such" not in text


def test_status_and_model_labels_are_bounded() -> None:
    assert [status_label(s) for s in (200, 429, 502, 302, 418, 599, 0, 700, None)] == [
        "200", "429", "502", "3xx", "4xx", "5xx", "other", "other", "error"]
    metrics = Metrics(["gpt-4o"])
    assert [metrics.model_label(m) for m in ("gpt-4o", "gpt-9", None)] == ["gpt-4o", "other", "-"]
    assert BUCKETS[0] == 0.05 and BUCKETS[-1] == 600


def test_metrics_endpoint_needs_no_key_and_writes_no_usage_line(make_app: t.Callable[..., App]) -> None:
    app = make_app(FakeTransport())
    resp = app.request("GET", "/metrics")
    assert resp.status_code == 200 and resp.headers["X-Request-Id"]
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE wsgiproxy_requests_total counter" in resp.get_data(as_text=True)
    assert app.request("GET", "/health").status_code == 200
    assert app.request("POST", "/metrics").status_code == 405
    assert [line["status"] for line in app.usage_lines()] == [405]  # the unrouted POST only
    assert app.value("wsgiproxy_requests_total", endpoint="metrics", model="-", status="200") == 1


def test_usage_log_off_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for destination in ("-", "off"):
        client = Client(create_app(settings(usage_log=destination),  # type: ignore[arg-type]
                                   transport=FakeTransport([response(200, COMPLETION)])))
        with client.post("/v1/chat/completions", json=CHAT, headers=AUTH) as resp:
            resp.get_data()
        out = capsys.readouterr().out
        if destination == "-":
            assert json.loads(out.strip().splitlines()[-1])["endpoint"] == "chat"
        else:
            assert out == ""


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_app_log_lines_carry_the_request_id(make_app: t.Callable[..., App]) -> None:
    app = make_app(FakeTransport([response(429, {"error": {"message": "slow down"}})]))
    handler = _Lines()
    logger = logging.getLogger("wsgiproxy")
    logger.addHandler(handler)
    try:
        resp = app.request("POST", "/v1/chat/completions", json=CHAT, headers={**AUTH, "X-Request-Id": "abc.123"})
        logging.getLogger("wsgiproxy.test").warning("after the request")
    finally:
        logger.removeHandler(handler)
    assert resp.status_code == 429
    about = [line for line in handler.lines if "429" in line]
    assert about and all(line.endswith(" rid=abc.123") for line in about), handler.lines
    assert handler.lines[-1] == "after the request"  # no stale id once the request is over


@pytest.mark.parametrize("given", ["", "x" * 129, "a b", "id\tx", "ü", "a/b"])
def test_unusable_request_ids_are_replaced(make_app: t.Callable[..., App], given: str) -> None:
    app = make_app(FakeTransport())
    rid = app.request("GET", "/health", headers={"X-Request-Id": given} if given else {}).headers["X-Request-Id"]
    assert rid != given and len(rid) == 32


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"choices":[],"usage":{"completion_tokens":7,"completion_tokens_details":{"reasoning_tokens":2},'
     b'"prompt_tokens":11,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":18}}', (11, 7)),
    (b'{"data":[{"embedding":[0.1,0.2]}],"usage":{"prompt_tokens":5,"total_tokens":5}}', (5, None)),
    (b'{"content":"the \\"usage\\": \\"prompt_tokens\\": 99"}', (None, None)),
    (b"not json at all", (None, None)),
])
def test_usage_tokens_from_a_body_without_parsing_it(body: bytes, expected: tuple[int | None, int | None]) -> None:
    assert usage_tokens(body) == expected


def test_grafana_dashboard_queries_only_metrics_that_exist(make_app: t.Callable[..., App]) -> None:
    import re

    app = make_app(FakeTransport())
    text = app.request("GET", "/metrics").get_data(as_text=True)
    exported = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(kind, ("",))
        exported |= {name + suffix for suffix in suffixes} | {name}
    dashboard = json.loads((ROOT / "conf" / "grafana" / "wsgiproxy.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\b(wsgiproxy_[a-z_]+)\b", expr)}
    assert used and used <= exported, used - exported
    rules = (ROOT / "conf" / "prometheus" / "alerts.yml").read_text()
    used = set(re.findall(r"\b(wsgiproxy_[a-z_]+)\b", rules))
    assert used and used <= exported, used - exported


def test_usage_file_is_reopened_after_logrotate_moved_it(tmp_path: Path) -> None:
    from wsgiproxy.record import RequestRecord

    path = tmp_path / "usage.log"
    usage = UsageLog(str(path))
    record = RequestRecord("r1", endpoint="chat", status=200)
    record.ended = record.started
    usage.write(record)
    path.rename(tmp_path / "usage.log.1")
    record.ended = record.started + 2  # more than a second later
    usage.write(record)
    usage.close()
    assert len((tmp_path / "usage.log.1").read_text().splitlines()) == 1
    assert json.loads(path.read_text())["request_id"] == "r1"


_USAGE_UNDER_GEVENT = r'''
from gevent import monkey
monkey.patch_all()
import json, os, sys
import gevent
from wsgiproxy.logs import UsageLog
from wsgiproxy.record import RequestRecord

path = sys.argv[1]
writes = []
real_write = os.write
def counting_write(fd, data):
    writes.append(fd)
    return real_write(fd, data)
os.write = counting_write
usage = UsageLog(path)
for rid in ("r1", "r2", "r3"):
    record = RequestRecord(rid, endpoint="chat", status=200)
    record.ended = record.started
    usage.write(record)
print("before the loop turns:", open(path).read() == "")
gevent.sleep(0)
print("after:", [json.loads(line)["request_id"] for line in open(path)], "writes:", len(writes))
record = RequestRecord("r4", endpoint="chat", status=200)
usage.write(record)
usage.close()
print("closed:", json.loads(open(path).read().splitlines()[-1])["request_id"])
'''


def test_under_gevent_the_usage_lines_of_one_loop_turn_go_out_in_one_write(tmp_path: Path) -> None:
    path = tmp_path / "usage.log"
    assert python_child(_USAGE_UNDER_GEVENT, str(path)).splitlines() == [
        "before the loop turns: True",
        "after: ['r1', 'r2', 'r3'] writes: 1",
        "closed: r4",
    ]


# --------------------------------------------------------------------------------------------
# Multiprocess mode under gevent: sums kept in memory, written once a second (a child interpreter:
# this test process is neither gevent-patched nor in multiprocess mode).

_BATCH_SCRIPT = """
from gevent import monkey
monkey.patch_all()
import json, os, sys, tempfile, time
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
os.environ["WSGIPROXY_METRICS_FLUSH_SECONDS"] = sys.argv[1]
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from wsgiproxy.metrics import BUCKETS, Metrics, flush_pending
from wsgiproxy.record import RequestRecord

def on_disk():
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry).decode()

metrics = Metrics(["gpt-4o"])
observed = []
durations = [0.0, 0.01, 0.05, 0.0500001, 0.1, 0.3, 1.0, 59.9, 600.0, 601.0, 1e9]
for i, seconds in enumerate(durations):
    record = RequestRecord("r%d" % i, endpoint="chat", model="gpt-4o", status=200, prompt_tokens=2,
                           completion_tokens=i)
    record.first_byte = record.started + seconds / 2
    record.ended = record.started + seconds
    observed.append(record.ended - record.started)
    metrics.request_started()
    metrics.upstream_done("sub", "d1", 200, seconds)
    metrics.request_done(record)
out = {"batched": metrics._batch is not None, "before": on_disk()}
if sys.argv[2] == "wait":
    time.sleep(float(sys.argv[1]) * 2.5)
    out["after_wait"] = on_disk()
flush_pending()
out["flushed"] = on_disk()
metrics.request_started()
out["rendered"] = metrics.render().decode()  # flushes first: the scrape counts itself in flight

reference = CollectorRegistry()  # what one observe() per value writes
from prometheus_client import Histogram
upstream = Histogram("ref_upstream_seconds", "reference", buckets=BUCKETS, registry=reference)
duration = Histogram("ref_duration_seconds", "reference", buckets=BUCKETS, registry=reference)
for seconds, record_seconds in zip(durations, observed):
    upstream.observe(seconds)  # exact bucket bounds (0.05, 0.1) included
    duration.observe(record_seconds)
out["reference"] = generate_latest(reference).decode()
print(json.dumps(out))
"""


def _run_batch_script(flush_seconds: str, mode: str) -> dict[str, t.Any]:
    printed = python_child(_BATCH_SCRIPT, flush_seconds, mode)
    return t.cast("dict[str, t.Any]", json.loads(printed.strip().splitlines()[-1]))


def _samples(text: str, prefix: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def _histogram(text: str, metric: str, **labels: str) -> dict[str, float]:
    """``{"bucket 0.05": n, ..., "count": n, "sum": x}`` of the series of ``metric`` with ``labels``."""
    found = {}
    for match in re.finditer(rf"^{metric}_(bucket|count|sum)(?:{{(.*?)}})? (\S+)$", text, re.MULTILINE):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(pairs.get(k) == v for k, v in labels.items()):
            key = match.group(1) + (f" {pairs['le']}" if "le" in pairs else "")
            found[key] = float(match.group(3))
    return found


def test_multiprocess_sums_are_written_on_flush_and_match_one_write_per_value() -> None:
    out = _run_batch_script("60", "flush")
    assert out["batched"] is True
    assert not any(_samples(out["before"], "wsgiproxy_requests_total{").values())  # summed in memory so far
    flushed = out["flushed"]
    assert _samples(flushed, "wsgiproxy_requests_total{") == {
        'wsgiproxy_requests_total{endpoint="chat",model="gpt-4o",status="200"}': 11.0}
    assert _samples(flushed, "wsgiproxy_tokens_total{") == {
        'wsgiproxy_tokens_total{model="gpt-4o",type="completion"}': 55.0,
        'wsgiproxy_tokens_total{model="gpt-4o",type="prompt"}': 22.0}
    # every bucket and the sum exactly as observe() one value at a time gives them
    reference = _histogram(out["reference"], "ref_upstream_seconds")
    assert len(reference) == len(BUCKETS) + 3  # the buckets, +Inf, _count and _sum
    assert _histogram(flushed, "wsgiproxy_upstream_latency_seconds", deployment="d1") == reference
    assert _histogram(flushed, "wsgiproxy_request_duration_seconds", streamed="false") == _histogram(
        out["reference"], "ref_duration_seconds")
    assert _samples(flushed, "wsgiproxy_requests_in_flight") == {"wsgiproxy_requests_in_flight": 0.0}
    assert _samples(out["rendered"], "wsgiproxy_requests_in_flight") == {"wsgiproxy_requests_in_flight": 1.0}


def test_multiprocess_sums_are_written_by_the_flusher_without_a_scrape() -> None:
    out = _run_batch_script("0.2", "wait")
    assert not any(_samples(out["before"], "wsgiproxy_requests_total{").values())
    assert _samples(out["after_wait"], "wsgiproxy_requests_total{") == {
        'wsgiproxy_requests_total{endpoint="chat",model="gpt-4o",status="200"}': 11.0}


@given(model=st.one_of(st.none(), st.text()), subaccount=st.text(min_size=1), deployment=st.text(min_size=1),
       duration=st.floats(min_value=0, max_value=1e7), ttfb=st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
       tokens=st.tuples(st.one_of(st.none(), st.integers(0, 10**9)), st.one_of(st.none(), st.integers(0, 10**9))),
       request_id=st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True))
def test_the_usage_line_is_the_json_of_the_record(model: str | None, subaccount: str, deployment: str, duration: float,
                                                  ttfb: float | None, tokens: tuple[int | None, int | None],
                                                  request_id: str) -> None:
    record = RequestRecord(request_id, endpoint="chat.completions", key_id="k0", model=model, status=200,
                           started=1000.0, ended=1000.0 + duration, prompt_tokens=tokens[0],
                           completion_tokens=tokens[1], first_byte=None if ttfb is None else 1000.0 + ttfb)
    sub = SubAccount(subaccount, Credentials("c", "s", "https://a/oauth/token", "https://api"), "rg", {})
    record.deployment = Deployment("m", f"https://api/v2/inference/deployments/{deployment}", sub)
    line = usage_line(record, 1_700_000_000.5)
    parsed = json.loads(line)
    assert parsed == {
        "time": parsed["time"], "request_id": request_id, "key_id": "k0", "endpoint": "chat.completions",
        "model": model, "subaccount": subaccount, "deployment": record.deployment.id, "status": 200,
        "streamed": False, "prompt_tokens": tokens[0], "completion_tokens": tokens[1],
        "duration_ms": round(duration * 1000, 1), "ttfb_ms": None if ttfb is None else round(ttfb * 1000, 1),
        "disconnected": False}
    assert line.isascii() and "\n" not in line
