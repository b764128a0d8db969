"""Prometheus metrics for dashboards and alerts, correct across gunicorn's worker processes.

Mode: prometheus-client chooses multiprocess mode when it is first imported, from
``PROMETHEUS_MULTIPROC_DIR`` (``conf/gunicorn.conf.py`` sets it before anything imports the
client). Each worker then writes its values to mmap files in that directory, and a scrape sums
them with a ``MultiProcessCollector`` on a fresh registry. Without the variable (waitress, tests)
values live in this process and a registry of the app's own exposes them.

Metric objects are created on first use in each process (after the fork), never at import.
Writes per request (each an mmap write under a lock in multiprocess mode; a histogram observation
is two, its sum and one bucket, ``_count`` being summed from the buckets at scrape time): a
non-streamed chat request makes 12: in-flight up and down, the request counter, the duration and
time-to-first-byte histograms, two token counters, the upstream counter and latency histogram.
Each of those series is read by ``conf/grafana`` or ``conf/prometheus``, with labels the others
lack, so none is redundant. The probes ``/health`` and ``/metrics`` make three instead of seven:
in flight up and down (a scrape sees itself) and the request counter; no latency histograms,
which every dashboard panel excludes them from.

Label values come only from bounded sets: endpoint names of the route table, configured model
names (``other`` for anything else), a fixed table of status codes, configured subaccount names
and deployment ids. Nothing a client sends becomes a label value as is.

=========================================  =========  ====================================
metric                                     type       labels
=========================================  =========  ====================================
wsgiproxy_requests_total                   counter    endpoint, model, status
wsgiproxy_request_duration_seconds         histogram  endpoint, streamed
wsgiproxy_time_to_first_byte_seconds       histogram  endpoint, streamed
wsgiproxy_requests_in_flight               gauge      (livesum across workers)
wsgiproxy_workers                          gauge      (livesum: worker processes alive)
wsgiproxy_upstream_requests_total          counter    subaccount, deployment, status
wsgiproxy_upstream_latency_seconds         histogram  subaccount, deployment
wsgiproxy_tokens_total                     counter    model, type (prompt, completion)
wsgiproxy_token_refreshes_total            counter    subaccount, result (ok, error)
wsgiproxy_stream_disconnects_total         counter    endpoint, model
=========================================  =========  ====================================
"""

from __future__ import annotations

import os
import typing as t

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.wrappers import Response

if t.TYPE_CHECKING:
    from .config import Settings
    from .endpoints import Call
    from .record import RequestRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# LLM latencies: 50 ms (a cached embedding) to 10 min (a long reasoning stream).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_EXACT_STATUSES = frozenset({200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 499,
                             500, 502, 503, 504})
_STATUS_LABELS = {code: str(code) if code in _EXACT_STATUSES else f"{code // 100}xx" for code in range(100, 600)}
OTHER = "other"


def status_label(status: int | None) -> str:
    """An exact code for the common ones, else its class (``3xx``); ``other`` outside 100-599."""
    return _STATUS_LABELS.get(status, OTHER) if status is not None else "error"


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class _Instruments:
    """The metric objects themselves; in multiprocess mode there must be one set per process."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Counter("wsgiproxy_requests", "Client requests by endpoint, model and status.",
                                ("endpoint", "model", "status"), registry=registry)
        self.duration = Histogram("wsgiproxy_request_duration_seconds",
                                  "Time from request to the end of the response (streams included).",
                                  ("endpoint", "streamed"), buckets=BUCKETS, registry=registry)
        self.ttfb = Histogram("wsgiproxy_time_to_first_byte_seconds",
                              "Time from request to the first body byte handed to the server.",
                              ("endpoint", "streamed"), buckets=BUCKETS, registry=registry)
        self.in_flight = Gauge("wsgiproxy_requests_in_flight", "Requests being served, open streams included.",
                               multiprocess_mode="livesum", registry=registry)
        self.workers = Gauge("wsgiproxy_workers", "Worker processes that have started (1 per process).",
                             multiprocess_mode="livesum", registry=registry)
        self.workers.set(1)
        self.upstream = Counter("wsgiproxy_upstream_requests", "Requests to SAP AI Core deployments by status "
                                "(error: no answer).", ("subaccount", "deployment", "status"), registry=registry)
        self.upstream_latency = Histogram("wsgiproxy_upstream_latency_seconds",
                                          "Time until SAP AI Core answered with a status line and headers.",
                                          ("subaccount", "deployment"), buckets=BUCKETS, registry=registry)
        self.tokens = Counter("wsgiproxy_tokens", "Tokens reported by SAP AI Core, by model and type.",
                              ("model", "type"), registry=registry)
        self.token_refreshes = Counter("wsgiproxy_token_refreshes", "OAuth token fetches per subaccount.",
                                       ("subaccount", "result"), registry=registry)
        self.disconnects = Counter("wsgiproxy_stream_disconnects",
                                   "Streams the client closed before they ended.", ("endpoint", "model"),
                                   registry=registry)


_shared: dict[int, _Instruments] = {}  # multiprocess mode: pid -> the one set of this process


def _instruments(registry: CollectorRegistry | None) -> _Instruments:
    if registry is not None:
        return _Instruments(registry)
    pid = os.getpid()
    instruments = _shared.get(pid)
    if instruments is None:
        _shared.clear()  # a set inherited through fork belongs to the parent
        instruments = _shared[pid] = _Instruments(None)
    return instruments


def worker_started() -> None:
    """Counts this worker in ``wsgiproxy_workers`` before its first request (gunicorn post_worker_init)."""
    if multiprocess_mode():
        _instruments(None)


Child = t.Any  # a labelled Counter or Histogram child


class Metrics:
    """What the app records, with label children bound once and cached (the request path is hot).

    :param models: the configured model names; any other name is recorded as ``other``.
    :param registry: single-process mode only: where the metrics are registered (a new
        registry by default); ignored in multiprocess mode.
    """

    def __init__(self, models: t.Iterable[str] = (), registry: CollectorRegistry | None = None) -> None:
        self.multiprocess = multiprocess_mode()
        self.registry = None if self.multiprocess else (registry or CollectorRegistry())
        self._m = _instruments(self.registry)
        self._models = frozenset(models)
        self._requests: dict[tuple[str, str | None, int], Child] = {}
        self._timings: dict[tuple[str, bool], tuple[Child, Child]] = {}
        self._tokens: dict[str | None, tuple[Child, Child]] = {}
        self._upstream: dict[tuple[str, str, int | None], tuple[Child, Child]] = {}
        self.request_started = self._m.in_flight.inc

    @classmethod
    def for_settings(cls, settings: Settings, registry: CollectorRegistry | None = None) -> Metrics:
        return cls((model for sub in settings.subaccounts for model in sub.deployments), registry)

    def model_label(self, model: str | None) -> str:
        if model is None:
            return "-"
        return model if model in self._models else OTHER

    def request_done(self, record: RequestRecord) -> None:
        """Counts a finished request; ``record.ended`` must be set."""
        m = self._m
        m.in_flight.dec()
        endpoint, model, status = record.endpoint, record.model, record.status
        child = self._requests.get((endpoint, model, status))
        if child is None:
            child = self._requests[(endpoint, model, status)] = m.requests.labels(
                endpoint, self.model_label(model), status_label(status))
        child.inc()
        streamed = record.streamed
        timing = self._timings.get((endpoint, streamed))
        if timing is None:
            flag = "true" if streamed else "false"
            timing = self._timings[(endpoint, streamed)] = (
                m.duration.labels(endpoint, flag), m.ttfb.labels(endpoint, flag))
        started = record.started
        timing[0].observe((record.ended or started) - started)
        if record.first_byte is not None:
            timing[1].observe(record.first_byte - started)
        prompt, completion = record.prompt_tokens, record.completion_tokens
        if prompt or completion:
            tokens = self._tokens.get(model)
            if tokens is None:
                label = self.model_label(model)
                tokens = self._tokens[model] = (m.tokens.labels(label, "prompt"), m.tokens.labels(label, "completion"))
            if prompt:
                tokens[0].inc(prompt)
            if completion:
                tokens[1].inc(completion)
        if record.disconnected and streamed:
            m.disconnects.labels(endpoint, self.model_label(model)).inc()

    def probe_done(self, record: RequestRecord) -> None:
        """Counts a finished ``/health`` or ``/metrics`` request: no latency histograms (see the module doc)."""
        self._m.in_flight.dec()
        endpoint, status = record.endpoint, record.status
        child = self._requests.get((endpoint, None, status))
        if child is None:
            child = self._requests[(endpoint, None, status)] = self._m.requests.labels(
                endpoint, "-", status_label(status))
        child.inc()

    def upstream_done(self, subaccount: str, deployment: str, status: int | None, seconds: float) -> None:
        """One request to SAP AI Core answered with ``status`` (None: it failed without an answer)."""
        children = self._upstream.get((subaccount, deployment, status))
        if children is None:
            children = self._upstream[(subaccount, deployment, status)] = (
                self._m.upstream.labels(subaccount, deployment, status_label(status)),
                self._m.upstream_latency.labels(subaccount, deployment),
            )
        children[0].inc()
        if status is not None:
            children[1].observe(seconds)

    def token_refreshed(self, subaccount: str, ok: bool) -> None:
        self._m.token_refreshes.labels(subaccount, "ok" if ok else "error").inc()

    def render(self) -> bytes:
        """The text exposition of every metric (all workers' in multiprocess mode)."""
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # fresh per scrape, or series would repeat
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def metrics_endpoint(call: Call) -> Response:
    """``GET /metrics``: unauthenticated, like /health; keep it off the public listener (nginx)."""
    body = call.client.metrics.render()
    return Response(body, content_type=CONTENT_TYPE_PLAIN_0_0_4, headers={"Cache-Control": "no-store"})
