"""The official openai SDK against the real stack: gunicorn with gevent workers, the simulator upstream.

One simulator and one proxy serve the whole module; tests that need a pristine process (token
single-flight) start their own. Every server binds 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import typing as t
from pathlib import Path

import openai
import pytest
from _stack import DEFAULT_KEY, Server, Sim, Stack, free_port, http_request

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Tell me something"}]


@pytest.fixture(autouse=True)
def clean_sim(sim: Sim) -> t.Iterator[None]:
    sim.reset()
    yield
    sim.reset()


def sdk(proxy: Server, key: str = DEFAULT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_models_list(proxy: Server) -> None:
    ids = [m.id for m in sdk(proxy).models.list()]
    assert {"gpt-4o", "gpt-5", "text-embedding-3-small"} <= set(ids)
    assert sdk(proxy).models.retrieve("gpt-4o").id == "gpt-4o"


def test_chat(proxy: Server, sim: Sim) -> None:
    completion = sdk(proxy).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=50)
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.total_tokens > 0
    last = sim.stats()["last_inference"]
    assert last["query"].get("api-version") == "2025-03-01-preview"
    assert last["headers"]["ai-resource-group"] == "default"


def test_chat_stream_arrives_spread_over_time(proxy: Server, sim: Sim) -> None:
    sim.control("/_sim/settings", {"chunk_delay_ms": 150, "chunks": 8})
    arrivals: list[float] = []
    text = ""
    stream = sdk(proxy).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    started = time.monotonic()
    for chunk in stream:
        assert chunk.usage is None  # not asked for: the usage chunk is withheld
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
            text += chunk.choices[0].delta.content
    assert text and len(arrivals) >= 6
    # Delivered as produced: the first piece long before the last, with steady gaps between.
    assert arrivals[-1] - arrivals[0] >= 0.6
    assert arrivals[0] < arrivals[-1] - 0.5
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert sum(1 for gap in gaps if gap >= 0.08) >= len(gaps) - 1
    # The proxy asked upstream for usage even though the client did not.
    assert sim.stats()["last_inference"]["json"]["stream_options"] == {"include_usage": True}


def test_chat_stream_with_usage(proxy: Server) -> None:
    chunks = list(sdk(proxy).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                                     stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].choices == []
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_stream_has_one_done(proxy: Server) -> None:
    response = http_request(proxy.url, "POST", "/v1/chat/completions",
                            {"model": "gpt-4o", "messages": MESSAGES, "stream": True}, key=DEFAULT_KEY)
    assert response.status == 200
    assert response.body.count(b"data: [DONE]") == 1 and response.body.endswith(b"data: [DONE]\n\n")
    assert response.headers["X-Accel-Buffering"] == "no" and response.headers["Cache-Control"] == "no-cache"


def test_embeddings_float_and_base64(proxy: Server, sim: Sim) -> None:
    client = sdk(proxy)
    as_base64 = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])  # SDK default
    assert sim.stats()["last_inference"]["json"]["encoding_format"] == "base64"
    as_float = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"],
                                        encoding_format="float")
    assert len(as_float.data) == 2 and len(as_float.data[0].embedding) == 1536
    for a, b in zip(as_base64.data, as_float.data):
        assert a.embedding == pytest.approx(b.embedding, rel=1e-6, abs=1e-7)
    small = client.embeddings.create(model="text-embedding-3-small", input="hello", dimensions=256,
                                     encoding_format="float")
    assert len(small.data[0].embedding) == 256
    assert small.usage.prompt_tokens > 0


def test_unknown_model_is_not_found(proxy: Server, sim: Sim) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk(proxy).chat.completions.create(model="gpt-99", messages=MESSAGES)
    assert "gpt-99" in str(info.value) and "gpt-4o" in str(info.value)
    assert sim.stats()["inference_requests"] == 0  # never silently swapped for another model


def test_bad_key_is_an_authentication_error(proxy: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(proxy, key="sk-not-the-right-key").chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        sdk(proxy, key="sk-not-the-right-key").models.list()


def test_rate_limit_carries_retry_after(proxy: Server, sim: Sim) -> None:
    sim.control("/_sim/faults", {"faults": [{"kind": "status", "status": 429, "retry_after": 7}]})
    with pytest.raises(openai.RateLimitError) as info:
        sdk(proxy).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.status_code == 429
    # The proxy's own log line went through gunicorn's error log (its format), not stray stderr.
    deadline = time.monotonic() + 5
    while "[WARNING] SAP AI Core answered 429" not in proxy.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "[WARNING] SAP AI Core answered 429 for model gpt-4o" in proxy.output()


def test_rate_limit_on_a_stream_request(proxy: Server, sim: Sim) -> None:
    sim.control("/_sim/faults", {"faults": [{"kind": "status", "status": 429, "retry_after": 3}]})
    with pytest.raises(openai.RateLimitError) as info:
        list(sdk(proxy).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert info.value.response.headers["retry-after"] == "3"


def test_upstream_server_error_passes_through(proxy: Server, sim: Sim) -> None:
    sim.control("/_sim/faults", {"faults": [{"kind": "status", "status": 500}]})
    with pytest.raises(openai.InternalServerError):
        sdk(proxy).chat.completions.create(model="gpt-4o", messages=MESSAGES)


def test_reset_mid_stream_ends_with_an_error_not_a_hang(proxy: Server, sim: Sim) -> None:
    sim.control("/_sim/faults", {"faults": [{"kind": "reset", "after_chunks": 3}]})
    received = []
    with pytest.raises(openai.APIError):
        for chunk in sdk(proxy).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            received.append(chunk)
    assert received  # the first events did arrive before the error


def test_expired_token_is_refreshed_transparently(proxy: Server, sim: Sim) -> None:
    client = sdk(proxy)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    before = sim.stats()["token_requests"]
    sim.control("/_sim/faults", {"faults": [{"kind": "expire_tokens"}]})
    completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.choices[0].message.content
    assert sim.stats()["token_requests"] == before + 1


def test_single_flight_token_fetch_under_50_concurrent_requests(stack_m: Stack, sim: Sim) -> None:
    sim.control("/_sim/settings", {"token_latency_ms": 500})
    fresh = stack_m.gunicorn(sim.config_path, workers=1)  # a new worker: no token cached yet
    try:
        results: list[int] = []
        client = sdk(fresh)

        def one() -> None:
            response = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
            results.append(response.http_response.status_code)

        threads = [threading.Thread(target=one) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == [200] * 50
        assert sim.stats()["token_requests"] == 1
    finally:
        fresh.stop()


def _open_stream_and_abort(url: str) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + DEFAULT_KEY.encode() + b"\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while b"data: {" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return received


def test_aborted_streams_free_their_upstream_connections(stack_m: Stack, sim: Sim) -> None:
    # A pool of 4 that leaked one connection per abort would be exhausted after 4 aborts.
    small_pool = stack_m.gunicorn(sim.config_path, workers=1,
                                  extra_env={"WSGIPROXY_POOL_MAXSIZE": "4", "WSGIPROXY_POOL_TIMEOUT": "2"})
    try:
        sim.control("/_sim/settings", {"chunk_delay_ms": 20, "chunks": 40})
        deadline = time.monotonic() + 120
        for i in range(200):
            assert time.monotonic() < deadline, f"only {i} aborts within the time bound"
            head = _open_stream_and_abort(small_pool.url)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
        for _ in range(100):  # the proxy notices each disconnect on its next write
            stats = sim.stats()
            if stats["streams_open"] == 0:
                break
            time.sleep(0.1)
        assert stats["streams_open"] == 0
        assert stats["streams_aborted"] >= 195
        sim.control("/_sim/settings", {"chunk_delay_ms": 0})
        completion = sdk(small_pool).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert completion.choices[0].message.content
    finally:
        small_pool.stop()


def test_request_id_round_trip(proxy: Server) -> None:
    response = http_request(proxy.url, "GET", "/health", headers={"X-Request-Id": "trace-42"})
    assert response.headers["X-Request-Id"] == "trace-42"


def test_413_for_a_large_chunked_body(stack_m: Stack, sim: Sim, tmp_path: Path) -> None:
    limited = stack_m.gunicorn(sim.config_path, workers=1, extra_env={"WSGIPROXY_MAX_BODY_BYTES": "2000"})
    try:
        host, port = limited.url.removeprefix("http://").split(":")
        payload = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                    b"Content-Type: application/json\r\nAuthorization: Bearer " + DEFAULT_KEY.encode() + b"\r\n\r\n")
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (payload[:2500], payload[2500:])) + b"0\r\n\r\n"
            sock.sendall(head + chunks)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"request_too_large"' in answer
        assert sim.stats()["inference_requests"] == 0
    finally:
        limited.stop()


def test_malformed_chunked_body_is_a_400_in_openai_json_and_the_connection_closes(proxy: Server, sim: Sim) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    before = sim.stats()["inference_requests"]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\nAuthorization: Bearer " + DEFAULT_KEY.encode() + b"\r\n\r\n")
        sock.sendall(head + b"zz\r\n{}\r\n0\r\n\r\n")  # not a hexadecimal chunk size
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after the answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert "request body could not be read" in error["message"] and "chunk" in error["message"].lower(), error
    assert b"Connection: close" in answer.split(b"\r\n\r\n", 1)[0]
    assert sim.stats()["inference_requests"] == before
    assert "Traceback" not in proxy.output()


def test_upstream_timeout_is_504_and_unreachable_is_502(stack_m: Stack, sim: Sim, tmp_path: Path) -> None:
    dead_port = free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "subAccounts": {"sim": {"service_key_json": str(sim.service_key_path), "deployment_models": {
            "gpt-4o": [json.loads(sim.config_path.read_text())["subAccounts"]["sim"]["deployment_models"]["gpt-4o"][0]],
            "gone": [f"http://127.0.0.1:{dead_port}/v2/inference/deployments/0000000000000000"]}}},
        "secret_authentication_tokens": [DEFAULT_KEY]}))
    impatient = stack_m.gunicorn(config, workers=1, extra_env={"WSGIPROXY_READ_TIMEOUT": "1"})
    try:
        sim.control("/_sim/faults", {"faults": [{"kind": "delay", "seconds": 3}]})
        with pytest.raises(openai.APIStatusError) as info:
            sdk(impatient).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert info.value.status_code == 504
        with pytest.raises(openai.APIStatusError) as info:
            sdk(impatient).chat.completions.create(model="gone", messages=MESSAGES)
        assert info.value.status_code == 502 and "cannot connect" in str(info.value)
    finally:
        impatient.stop()


def test_a_stream_that_stalls_ends_with_a_timeout_event_after_the_read_timeout(stack_m: Stack, sim: Sim) -> None:
    """The lean worker relays streams from its event loop (servers/pump.py): its timer applies the read timeout."""
    impatient = stack_m.gunicorn(sim.config_path, workers=1, extra_env={"WSGIPROXY_READ_TIMEOUT": "1"})
    try:
        sim.control("/_sim/faults", {"faults": [{"kind": "stall", "after_chunks": 2, "seconds": 4}]})
        received = []
        started = time.monotonic()
        with pytest.raises(openai.APIError, match="read timeout"):
            for chunk in sdk(impatient).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
                received.append(chunk)
        assert received and 0.9 <= time.monotonic() - started < 3.5
        assert sdk(impatient).chat.completions.create(model="gpt-4o", messages=MESSAGES).choices  # still serving
    finally:
        impatient.stop()
