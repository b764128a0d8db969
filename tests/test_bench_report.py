"""The benchmark's report arithmetic (tests/bench/run.py): rounds of a point become one row."""

from __future__ import annotations

from tests.bench.run import _spread, median_row


def test_median_row_sums_counts_and_takes_medians() -> None:
    rows = [
        {"target": "proxy", "concurrency": 64, "requests": 100, "errors": 0, "cpu_us_per_req": 300.0,
         "lat_p50_us": 10, "peak_rss_kb": 1000, "ttfb_ms": {"p50": 5.0, "p99": 9.0}, "error_kinds": {},
         "error_samples": []},
        {"target": "proxy", "concurrency": 64, "requests": 90, "errors": 2, "cpu_us_per_req": 250.0,
         "lat_p50_us": 30, "peak_rss_kb": 3000, "ttfb_ms": {"p50": 7.0, "p99": 8.0}, "error_kinds": {"eof": 2},
         "error_samples": ["eof: x"]},
        {"target": "proxy", "concurrency": 64, "requests": 110, "errors": 1, "cpu_us_per_req": 280.0,
         "lat_p50_us": 20, "peak_rss_kb": 2000, "ttfb_ms": {"p50": 6.0, "p99": 7.0}, "error_kinds": {"reset": 1},
         "error_samples": ["reset: y"]},
    ]
    row = median_row(rows)
    assert row["target"] == "proxy" and row["concurrency"] == 64
    assert row["requests"] == 300 and row["errors"] == 3
    assert row["cpu_us_per_req"] == 280.0 and row["lat_p50_us"] == 20
    assert row["peak_rss_kb"] == 3000
    assert row["ttfb_ms"] == {"p50": 6.0, "p99": 8.0}
    assert row["error_kinds"] == {"eof": 2, "reset": 1}
    assert row["error_samples"] == ["eof: x", "reset: y"]
    assert row["rounds"] == [300.0, 250.0, 280.0]
    assert _spread(row) == "280 (250–300)"


def test_one_round_is_the_row_itself() -> None:
    row = median_row([{"target": "nginx", "cpu_us_per_req": 24.4, "requests": 5}])
    assert row["requests"] == 5 and row["rounds"] == [24.4]
    assert _spread(row) == "24"
