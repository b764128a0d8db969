"""Prometheus metrics for dashboards and alerts, correct across gunicorn's worker processes.

Mode: prometheus-client chooses multiprocess mode when it is first imported, from
``PROMETHEUS_MULTIPROC_DIR`` (``conf/gunicorn.conf.py`` sets it before anything imports the
client). Each worker then writes its values to mmap files in that directory, and a scrape sums
them with a ``MultiProcessCollector`` on a fresh registry. Without the variable (waitress, tests)
values live in this process and a registry of the app's own exposes them.

Metric objects are created on first use in each process (after the fork), never at import.
A non-streamed chat request records 12 values: in-flight up and down, the request counter, the
duration and time-to-first-byte histograms (a histogram observation is two values, its sum and
one bucket; ``_count`` is summed from the buckets at scrape time), two token counters, the
upstream counter and latency histogram. Each of those series is read by ``conf/grafana`` or
``conf/prometheus``, with labels the others lack, so none is redundant. The probes ``/health``
and ``/metrics`` record only the request counter (and, in single-process mode, in flight up and
down: a scrape sees itself); no latency histograms, which every dashboard panel excludes them from.

In multiprocess mode under gevent, each of those would be an mmap write under a lock (about
35 µs per request on a bench core). Instead a worker sums them in memory (:class:`_Batch`) and
writes each series' total once a second, before it renders a scrape, and when it exits: a scrape
may lag the other workers by up to a second, and a worker killed with SIGKILL loses at most its
last second of counts. The in-flight gauge is written the same way, as the worker's count at the
time of the write, and without the probes: a scrape never sees a stale probe of another worker.
(In single-process mode values are written at once, and a scrape sees itself in flight.)

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

import bisect
import logging
import os
import threading
import time
import typing as t

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from . import process
from .answers import Reply

if t.TYPE_CHECKING:
    from .config import Settings
    from .endpoints import Call
    from .record import RequestRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _flush_seconds() -> float:
    """How often a worker writes its sums (multiprocess mode under gevent): 1 s, or
    ``WSGIPROXY_METRICS_FLUSH_SECONDS`` (a positive number)."""
    try:
        value = float(os.environ.get("WSGIPROXY_METRICS_FLUSH_SECONDS", "") or 1.0)
    except ValueError:
        return 1.0
    return value if 0 < value <= 3600 else 1.0

log = logging.getLogger("wsgiproxy.metrics")

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


Child = t.Any  # a labelled Counter or Histogram child, or a Gauge


class _Batch:
    """This process's increments and observations, summed in memory and written by :meth:`flush`.

    Only under gevent (one thread: no update can interleave with a flush). A flush writes one
    ``inc`` per counter and, per histogram, its sum and each bucket's count, as ``observe`` would.
    """

    def __init__(self, in_flight_gauge: Child) -> None:
        self.counts: dict[Child, float] = {}
        self.observed: dict[Child, list[float]] = {}
        self.in_flight = 0  # requests of this process being served, probes excluded
        self._in_flight_gauge = in_flight_gauge
        self._written_in_flight = 0
        self._flusher: threading.Thread | None = None

    def started(self) -> None:
        self.in_flight += 1
        if self._flusher is None:
            self._start()

    def ended(self) -> None:
        self.in_flight -= 1

    def inc(self, child: Child, amount: float = 1.0) -> None:
        counts = self.counts
        counts[child] = counts.get(child, 0.0) + amount
        if self._flusher is None:
            self._start()

    def observe(self, child: Child, value: float) -> None:
        values = self.observed.get(child)
        if values is None:
            self.observed[child] = [value]
        else:
            values.append(value)

    def flush(self) -> None:
        counts, self.counts = self.counts, {}
        observed, self.observed = self.observed, {}
        for child, amount in counts.items():
            if amount:
                child.inc(amount)
        for child, values in observed.items():
            _observe_all(child, values)
        if self.in_flight != self._written_in_flight:
            self._written_in_flight = self.in_flight
            self._in_flight_gauge.set(self.in_flight)

    def _start(self) -> None:
        self._flusher = threading.Thread(target=self._flush_forever, name="wsgiproxy-metrics", daemon=True)
        self._flusher.start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(_flush_seconds())
            try:
                self.flush()
            except Exception:  # a full disk must not end the flushing for good
                log.exception("writing the metrics of process %s failed", os.getpid())


def _observe_all(child: Child, values: list[float]) -> None:
    """``child.observe(v)`` for every value, with one write per bucket and one for the sum."""
    bounds = getattr(child, "_upper_bounds", None)
    if bounds is None or not hasattr(child, "_sum") or not hasattr(child, "_buckets"):
        for value in values:  # a prometheus-client without these internals: the public way
            child.observe(value)
        return
    per_bucket = [0] * len(bounds)
    for value in values:
        per_bucket[bisect.bisect_left(bounds, value)] += 1  # the first bound >= value, as observe() picks
    child._sum.inc(sum(values))
    for index, count in enumerate(per_bucket):
        if count:
            child._buckets[index].inc(count)


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
        # Multiprocess mode under gevent: values are summed in memory and written once a second.
        self.batch = _Batch(self.in_flight) if registry is None and process.gevent_patched() else None


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


def flush_pending() -> None:
    """Write what this process summed in memory (gunicorn worker_exit: nothing counted is lost)."""
    instruments = _shared.get(os.getpid())
    if instruments is not None and instruments.batch is not None:
        instruments.batch.flush()


def _inc(child: Child, amount: float = 1.0) -> None:
    child.inc(amount)


def _observe(child: Child, value: float) -> None:
    child.observe(value)


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
        batch = self._m.batch
        self._batch = batch
        self._inc = batch.inc if batch is not None else _inc
        self._observe = batch.observe if batch is not None else _observe

        if batch is not None:
            self.request_started: t.Callable[[], None] = batch.started
            self._request_ended: t.Callable[[], None] = batch.ended
        else:
            self.request_started = self._m.in_flight.inc
            self._request_ended = self._m.in_flight.dec

    def probe_started(self) -> None:
        """A ``/health`` or ``/metrics`` request begins: in flight only when values are written at once."""
        if self._batch is None:
            self._m.in_flight.inc()

    @classmethod
    def for_settings(cls, settings: Settings, registry: CollectorRegistry | None = None) -> Metrics:
        return cls((model for sub in settings.subaccounts for model in sub.deployments), registry)

    def model_label(self, model: str | None) -> str:
        if model is None:
            return "-"
        return model if model in self._models else OTHER

    def request_done(self, record: RequestRecord) -> None:
        """Counts a finished request; ``record.ended`` must be set."""
        m, inc, observe = self._m, self._inc, self._observe
        self._request_ended()
        endpoint, model, status = record.endpoint, record.model, record.status
        child = self._requests.get((endpoint, model, status))
        if child is None:
            child = self._requests[(endpoint, model, status)] = m.requests.labels(
                endpoint, self.model_label(model), status_label(status))
        inc(child)
        streamed = record.streamed
        timing = self._timings.get((endpoint, streamed))
        if timing is None:
            flag = "true" if streamed else "false"
            timing = self._timings[(endpoint, streamed)] = (
                m.duration.labels(endpoint, flag), m.ttfb.labels(endpoint, flag))
        started = record.started
        observe(timing[0], (record.ended or started) - started)
        if record.first_byte is not None:
            observe(timing[1], record.first_byte - started)
        prompt, completion = record.prompt_tokens, record.completion_tokens
        if prompt or completion:
            tokens = self._tokens.get(model)
            if tokens is None:
                label = self.model_label(model)
                tokens = self._tokens[model] = (m.tokens.labels(label, "prompt"), m.tokens.labels(label, "completion"))
            if prompt:
                inc(tokens[0], prompt)
            if completion:
                inc(tokens[1], completion)
        if record.disconnected and streamed:
            inc(m.disconnects.labels(endpoint, self.model_label(model)))

    def probe_done(self, record: RequestRecord) -> None:
        """Counts a finished ``/health`` or ``/metrics`` request: no latency histograms (see the module doc)."""
        if self._batch is None:
            self._m.in_flight.dec()
        endpoint, status = record.endpoint, record.status
        child = self._requests.get((endpoint, None, status))
        if child is None:
            child = self._requests[(endpoint, None, status)] = self._m.requests.labels(
                endpoint, "-", status_label(status))
        self._inc(child)

    def upstream_done(self, subaccount: str, deployment: str, status: int | None, seconds: float) -> None:
        """One request to SAP AI Core answered with ``status`` (None: it failed without an answer)."""
        children = self._upstream.get((subaccount, deployment, status))
        if children is None:
            children = self._upstream[(subaccount, deployment, status)] = (
                self._m.upstream.labels(subaccount, deployment, status_label(status)),
                self._m.upstream_latency.labels(subaccount, deployment),
            )
        self._inc(children[0])
        if status is not None:
            self._observe(children[1], seconds)

    def token_refreshed(self, subaccount: str, ok: bool) -> None:
        self._inc(self._m.token_refreshes.labels(subaccount, "ok" if ok else "error"))

    def render(self) -> bytes:
        """The text exposition of every metric (all workers' in multiprocess mode)."""
        if self._batch is not None:
            self._batch.flush()  # this worker's own counts, the scrape itself included
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # fresh per scrape, or series would repeat
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def metrics_endpoint(call: Call) -> Reply:
    """``GET /metrics``: unauthenticated, like /health; keep it off the public listener (nginx)."""
    body = call.client.metrics.render()
    return Reply(200, (("Cache-Control", "no-store"), ("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)), body)
