"""The SSE load generator (tests/bench/sse_load.py) against a small threaded SSE server on 127.0.0.1."""

from __future__ import annotations

import argparse
import threading
import time
import typing as t
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.bench.sse_load import Load

EVENTS = (b"data: {}\n\n", b"data: {}\n\n", b"data: [DONE]\n\n")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in EVENTS:
            time.sleep(0.01)
            self.wfile.write(b"%x\r\n%b\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: t.Any) -> None:
        pass


@pytest.fixture(scope="module")
def sse_url() -> t.Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    server.shutdown()
    server.server_close()


def run_load(url: str, tmp_path: Path, rate: float, done: str = "data: [DONE]") -> dict[str, t.Any]:
    body = tmp_path / "body.json"
    body.write_text("{}")
    args = argparse.Namespace(url=url, body_file=str(body), key="k", concurrency=8, duration=1.0,
                              max_streams=10_000, timeout=10.0, rate=rate, done=done, out="")
    return Load(args).run()


def test_back_to_back_streams_are_all_measured(sse_url: str, tmp_path: Path) -> None:
    result = run_load(sse_url, tmp_path, 0.0)
    assert result["errors"] == 0 and result["completed"] == result["streams"] >= 8 * 10
    assert result["events_min"] == 3 and result["ttfb_ms"]["p50"] > 0
    assert result["total_ms"]["p50"] >= 30  # three events 10 ms apart


def test_a_rate_spaces_the_starts_whatever_the_connections_could_do(sse_url: str, tmp_path: Path) -> None:
    result = run_load(sse_url, tmp_path, 40.0)
    assert result["errors"] == 0 and result["completed"] == result["streams"]
    assert 30 <= result["streams"] <= 45  # 40 per second for one second, where back to back runs 80 or more
    assert result["rate"] == 40.0 and result["connections"] == 8


def test_a_stream_without_the_done_marker_is_an_incomplete_one(sse_url: str, tmp_path: Path) -> None:
    result = run_load(sse_url, tmp_path, 20.0, done="event: message_stop")
    assert result["completed"] == 0 and result["errors"] == result["streams"] > 0
    assert set(result["error_kinds"]) == {"incomplete"}
