"""The simulator over real loopback sockets: threaded SimServer, TLS, the gevent CLI, the openai SDK."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from urllib3.exceptions import ProtocolError, ReadTimeoutError, SSLError

from wsgiproxy.sim import DEPLOYMENT_IDS, SimServer
from wsgiproxy.sim.faults import Fault
from wsgiproxy.sim.text import answer_text

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
GPT4O = DEPLOYMENT_IDS["gpt-4o"]
CHAT_SUFFIX = "/chat/completions?api-version=2025-03-01-preview"
BROKEN = (ProtocolError, SSLError, ConnectionError)


@pytest.fixture
def pool() -> Iterator[urllib3.PoolManager]:
    with urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=10)) as manager:
        yield manager


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as server:
        yield server


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": str(folder / "ca.pem"), "cert": str(folder / "cert.pem"), "key": str(folder / "key.pem")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.private_key_pem.write_to_path(paths["key"])
    for index, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(paths["cert"], append=index > 0)
    return paths


def fetch_token(pool: urllib3.PoolManager, base: str, client_id: str = "sim-client",
                client_secret: str = "sim-secret") -> str:
    response = pool.request("POST", base + "/oauth/token", fields={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret,
    }, encode_multipart=False)
    assert response.status == 200, response.data
    return str(response.json()["access_token"])


def open_chat(pool: urllib3.PoolManager, base: str, token: str, *, stream: bool = True,
              read_timeout: float = 10, deployment: str = GPT4O) -> urllib3.BaseHTTPResponse:
    body = {"messages": [{"role": "user", "content": "hello there"}], "stream": stream}
    return pool.request(
        "POST", f"{base}/v2/inference/deployments/{deployment}{CHAT_SUFFIX}", body=json.dumps(body),
        headers={"Authorization": f"Bearer {token}", "AI-Resource-Group": "default",
                 "Content-Type": "application/json"},
        preload_content=False, timeout=urllib3.Timeout(connect=5, read=read_timeout),
    )


class EventReader:
    """Reads ``data:`` events off a streamed response, keeping leftovers between calls."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self.response = response
        self.buffer = b""

    def read(self, limit: int | None = None) -> tuple[list[str], Exception | None]:
        """Events until the end, *limit* events, or an error (returned, not raised)."""
        events: list[str] = []
        try:
            while limit is None or len(events) < limit:
                while b"\n\n" in self.buffer and (limit is None or len(events) < limit):
                    event, self.buffer = self.buffer.split(b"\n\n", 1)
                    assert event.startswith(b"data: ")
                    events.append(event[6:].decode())
                if limit is not None and len(events) >= limit:
                    break
                data = self.response.read1(65536)
                if not data:
                    break
                self.buffer += data
            return events, None
        except (*BROKEN, ReadTimeoutError) as exc:
            return events, exc


def read_events(response: urllib3.BaseHTTPResponse, limit: int | None = None) -> tuple[list[str], Exception | None]:
    return EventReader(response).read(limit)


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def control(pool: urllib3.PoolManager, base: str, path: str, payload: object = None) -> object:
    method = "GET" if payload is None else "POST"
    response = pool.request(method, base + path, body=None if payload is None else json.dumps(payload))
    assert response.status == 200, response.data
    return response.json()


# -- threaded in-process server ------------------------------------------------------------
def test_stream_over_the_wire_is_chunked_and_paced(sim: SimServer, pool: urllib3.PoolManager) -> None:
    sim.state.update_settings({"chunk_delay_ms": 20})
    token = fetch_token(pool, sim.url)
    listing = pool.request("GET", sim.url + "/v2/lm/deployments",
                           headers={"Authorization": f"Bearer {token}", "AI-Resource-Group": "default"}).json()
    assert {r["deploymentUrl"] for r in listing["resources"]} == {
        sim.deployment_url(model) for model in DEPLOYMENT_IDS}
    response = open_chat(pool, sim.url, token)
    assert response.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in response.headers
    reader = EventReader(response)
    started = time.monotonic()
    first, _ = reader.read(1)
    first_at = time.monotonic() - started
    rest, error = reader.read()
    response.release_conn()
    assert error is None and rest[-1] == "[DONE]" and json.loads(first[0])["choices"] == []
    assert time.monotonic() - started - first_at >= 0.02 * (len(rest) - 1)
    wait_for(lambda: sim.state.stats()["streams_completed"] == 1)


def test_reset_fault_breaks_the_stream_on_the_threaded_server(sim: SimServer, pool: urllib3.PoolManager) -> None:
    token = fetch_token(pool, sim.url)
    sim.state.add_faults([Fault.parse({"kind": "reset", "after_chunks": 3})])
    response = open_chat(pool, sim.url, token)
    events, error = read_events(response)
    response.close()
    assert len(events) == 3 and isinstance(error, BROKEN)
    wait_for(lambda: sim.state.stats()["streams_reset"] == 1)


def test_reset_stall_and_delay_without_stream(sim: SimServer, pool: urllib3.PoolManager) -> None:
    token = fetch_token(pool, sim.url)
    control(pool, sim.url, "/_sim/faults", {"faults": [
        {"kind": "reset"}, {"kind": "delay", "seconds": 3}, {"kind": "stall", "seconds": 3, "after_chunks": 2},
    ]})
    # Read timeouts well above a loaded machine's scheduling delays, well below the faults' 3 s.
    with pytest.raises(BROKEN):
        open_chat(pool, sim.url, token, stream=False)
    with pytest.raises(ReadTimeoutError):
        open_chat(pool, sim.url, token, stream=False, read_timeout=1.0)
    response = open_chat(pool, sim.url, token, read_timeout=1.0)
    events, error = read_events(response)
    response.close()
    assert len(events) == 2 and isinstance(error, ReadTimeoutError)


def test_client_abort_is_counted(sim: SimServer, pool: urllib3.PoolManager) -> None:
    sim.state.update_settings({"chunk_delay_ms": 30})
    response = open_chat(pool, sim.url, sim.token())
    events, _ = read_events(response, 2)
    assert len(events) == 2 and sim.state.stats()["streams_open"] == 1
    response.close()  # drops the connection mid-stream
    wait_for(lambda: sim.state.stats()["streams_aborted"] == 1)
    assert sim.state.stats()["streams_open"] == 0


def test_tls_serving_and_config_files(tls: dict[str, str], tmp_path: Path) -> None:
    with SimServer(certfile=tls["cert"], keyfile=tls["key"]) as sim, \
            urllib3.PoolManager(ca_certs=tls["ca"], retries=False) as pool:
        assert sim.url.startswith("https://127.0.0.1:")
        token = fetch_token(pool, sim.url)
        events, error = read_events(open_chat(pool, sim.url, token))
        assert error is None and events[-1] == "[DONE]"
        sim.state.add_faults([Fault.parse({"kind": "reset", "after_chunks": 2})])
        response = open_chat(pool, sim.url, token)
        events, error = read_events(response)
        response.close()
        assert len(events) == 2 and isinstance(error, BROKEN)

        config = json.loads(sim.write_config(tmp_path, proxy_keys=["k"]).read_text())
        key = json.loads((tmp_path / "sim-service-key.json").read_text())
        assert key == sim.service_key() and key["url"] == key["serviceurls"]["AI_API_URL"] == sim.url
        assert config["secret_authentication_tokens"] == ["k"]
        assert config["subAccounts"]["sim"]["deployment_models"]["gpt-4o"] == [sim.deployment_url("gpt-4o")]


# -- the CLI under gevent ------------------------------------------------------------------
def start_cli(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "wsgiproxy.sim", "--port", "0", "--ready-file", str(ready),
         "--write-config", str(tmp_path), "--proxy-key", "k1", "--proxy-key", "k2", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr", "wb"),  # noqa: SIM115
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 15
    while not (ready.exists() and ready.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.communicate(timeout=10)
            raise AssertionError("simulator did not start: " + (tmp_path / "stderr").read_text())
        time.sleep(0.05)
    return process, ready.read_text().strip()


def stop_cli(process: subprocess.Popen[bytes], url: str) -> None:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert out.decode().splitlines() == [f"wsgiproxy-sim listening on {url}"]


def test_cli_serves_streams_under_gevent(tmp_path: Path) -> None:
    process, url = start_cli(tmp_path, "--chunk-delay-ms", "20", "--client-secret", "s3")
    try:
        config = json.loads((tmp_path / "config.json").read_text())
        account = config["subAccounts"]["sim"]
        assert account["service_key_json"] == "sim-service-key.json" and account["resource_group"] == "default"
        assert set(account["deployment_models"]) == {
            "gpt-4o", "gpt-4.1", "gpt-5", "text-embedding-3-small", "text-embedding-3-large",
            "mistralai--mistral-small-instruct", "anthropic--claude-4.5-sonnet"}
        assert config["secret_authentication_tokens"] == ["k1", "k2"]
        key = json.loads((tmp_path / "sim-service-key.json").read_text())
        assert key["serviceurls"]["AI_API_URL"] == key["url"] == url and key["clientsecret"] == "s3"

        with urllib3.PoolManager(retries=False, maxsize=4) as pool:
            token = fetch_token(pool, url, key["clientid"], key["clientsecret"])
            control(pool, url, "/_sim/faults", {"faults": [{"kind": "reset"}, {"kind": "reset", "after_chunks": 3}]})
            with pytest.raises(BROKEN):
                open_chat(pool, url, token, stream=False)
            response = open_chat(pool, url, token)
            events, error = read_events(response)
            response.close()
            assert len(events) == 3 and isinstance(error, BROKEN)

            response = open_chat(pool, url, token)
            events, _ = read_events(response, 2)
            assert len(events) == 2
            response.close()
            wait_for(lambda: control(pool, url, "/_sim/stats")["streams_aborted"] == 1)  # type: ignore[index]

            def one_stream(_: int) -> int:
                connection = http.client.HTTPConnection(url.split("//")[1], timeout=20)
                try:
                    connection.request("POST", f"/v2/inference/deployments/{GPT4O}/chat/completions", body=json.dumps(
                        {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
                        headers={"Authorization": f"Bearer {token}", "AI-Resource-Group": "default"})
                    return connection.getresponse().read().count(b"data: ")
                finally:
                    connection.close()

            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(150) as executor:
                counts = list(executor.map(one_stream, range(150)))
            elapsed = time.monotonic() - started
            assert set(counts) == {len(answer_text("gpt-4o", "hi").split()) + 4}
            assert elapsed < 8  # one stream takes ~0.35 s; 150 in sequence would take ~50 s
            stats = control(pool, url, "/_sim/stats")
            assert isinstance(stats, dict)
            assert (stats["streams_completed"], stats["streams_reset"], stats["streams_open"]) == (150, 1, 0)
    finally:
        if process.poll() is None:
            stop_cli(process, url)


def test_cli_tls_reset(tmp_path: Path, tls: dict[str, str]) -> None:
    process, url = start_cli(tmp_path, "--certfile", tls["cert"], "--keyfile", tls["key"])
    try:
        assert url.startswith("https://127.0.0.1:")
        with urllib3.PoolManager(ca_certs=tls["ca"], retries=False) as pool:
            token = fetch_token(pool, url)
            control(pool, url, "/_sim/faults", {"faults": [{"kind": "reset", "after_chunks": 2}]})
            response = open_chat(pool, url, token)
            events, error = read_events(response)
            response.close()
            assert len(events) == 2 and isinstance(error, BROKEN)
            events, error = read_events(open_chat(pool, url, token))
            assert error is None and events[-1] == "[DONE]"
    finally:
        stop_cli(process, url)


# -- conformance with the official openai SDK ----------------------------------------------
def test_openai_sdk_conformance(sim: SimServer) -> None:
    import openai

    def client(model: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=sim.deployment_url(model), api_key=sim.token(), max_retries=0,
            default_headers={"AI-Resource-Group": "default"}, default_query={"api-version": "2025-03-01-preview"},
        )

    expected = answer_text("gpt-4o", "Hi SDK")
    messages = [{"role": "user", "content": "Hi SDK"}]
    with client("gpt-4o") as chat:
        completion = chat.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
        assert completion.choices[0].message.content == expected and completion.usage is not None
        stream = chat.chat.completions.create(model="gpt-4o", messages=messages, stream=True,  # type: ignore
                                              stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == len(expected.split())
        sim.state.add_faults([Fault.parse({"kind": "status", "status": 429, "retry_after": 3})])
        with pytest.raises(openai.RateLimitError) as limited:
            chat.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
        assert limited.value.response.headers["retry-after"] == "3"

    with client("text-embedding-3-small") as embedder:
        encoded = embedder.embeddings.create(model="text-embedding-3-small", input=["a b", "c"], dimensions=64)
        floats = embedder.embeddings.create(model="text-embedding-3-small", input=["a b", "c"], dimensions=64,
                                            encoding_format="float")
        assert [d.embedding for d in encoded.data] == [d.embedding for d in floats.data]
        assert len(floats.data[0].embedding) == 64 and floats.usage.prompt_tokens == 3
    last = sim.state.stats()["last_inference"]
    assert isinstance(last, dict) and last["query"] == {"api-version": "2025-03-01-preview"}
