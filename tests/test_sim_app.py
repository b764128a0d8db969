"""The simulator's WSGI app in process (werkzeug test client): every endpoint, error and fault."""

from __future__ import annotations

import base64
import json
import re
import struct
import time
import typing
from collections.abc import Iterator

import pytest
from werkzeug.test import Client, TestResponse

from wsgiproxy.sim import DEPLOYMENT_IDS, SimState, create_app
from wsgiproxy.sim.text import answer_text

GPT4O = DEPLOYMENT_IDS["gpt-4o"]
SMALL = DEPLOYMENT_IDS["text-embedding-3-small"]
LARGE = DEPLOYMENT_IDS["text-embedding-3-large"]
MISTRAL = DEPLOYMENT_IDS["mistralai--mistral-small-instruct"]
CHAT = f"/v2/inference/deployments/{GPT4O}/chat/completions?api-version=2025-03-01-preview"
EMBED = f"/v2/inference/deployments/{SMALL}/embeddings?api-version=2025-03-01-preview"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
FORM = {"grant_type": "client_credentials", "client_id": "sim-client", "client_secret": "sim-secret"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> SimState:
    return SimState(clock=clock)


@pytest.fixture
def client(state: SimState) -> Client:
    return Client(create_app(state))


@pytest.fixture
def headers(state: SimState) -> dict[str, str]:
    return {"Authorization": f"Bearer {state.issue_token().value}", "AI-Resource-Group": "default"}


def user(text: object) -> dict[str, object]:
    return {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}


def events(response: TestResponse) -> list[str]:
    body = response.get_data(as_text=True)
    response.close()
    assert body.endswith("\n\n")
    blocks = body[:-2].split("\n\n")
    assert all(block.startswith("data: ") for block in blocks)
    return [block[len("data: "):] for block in blocks]


def error_of(response: TestResponse) -> dict[str, object]:
    body = response.get_json()
    error: dict[str, object] = body["error"]
    assert set(error) == {"code", "message", "param", "type"}
    return error


def body_iter(response: TestResponse) -> Iterator[bytes]:
    """The unbuffered body, to read a stream event by event."""
    return iter(typing.cast("typing.Iterable[bytes]", response.response))


# -- token endpoint ----------------------------------------------------------------------
def test_token_from_form(client: Client, state: SimState) -> None:
    response = client.post("/oauth/token", data=FORM)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "jti"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 43199
    assert state.check_token(body["access_token"]) == "valid"
    assert state.stats()["token_requests"] == 1


def test_token_from_basic_with_grant_type_in_query(client: Client) -> None:
    basic = base64.b64encode(b"sim-client:sim-secret").decode()
    response = client.post("/oauth/token?grant_type=client_credentials", headers={"Authorization": f"Basic {basic}"})
    assert response.status_code == 200 and response.get_json()["access_token"]


def test_token_rejections(client: Client) -> None:
    bad = client.post("/oauth/token", data={**FORM, "client_secret": "nope"})
    assert bad.status_code == 401
    assert bad.get_json() == {"error": "unauthorized", "error_description": "Bad credentials"}
    for form in ({k: v for k, v in FORM.items() if k != "grant_type"}, {**FORM, "grant_type": "password"}):
        response = client.post("/oauth/token", data=form)
        assert response.status_code == 400 and response.get_json()["error"] == "unsupported_grant_type"


def test_token_ttl_setting(client: Client) -> None:
    client.post("/_sim/settings", json={"token_ttl": 120})
    assert client.post("/oauth/token", data=FORM).get_json()["expires_in"] == 120


# -- deployments -------------------------------------------------------------------------
def test_deployment_listing_has_full_records(client: Client, headers: dict[str, str]) -> None:
    response = client.get("/v2/lm/deployments?scenarioId=foundation-models&status=RUNNING", headers=headers)
    body = response.get_json()
    assert response.status_code == 200 and body["count"] == len(DEPLOYMENT_IDS) == len(body["resources"])
    for record in body["resources"]:
        assert record["deploymentUrl"] == f"http://localhost/v2/inference/deployments/{record['id']}"
        assert re.fullmatch(r"[0-9a-f]{16}", record["id"])
        for key in ("createdAt", "modifiedAt", "submissionTime", "startTime"):
            assert TIMESTAMP.match(record[key]), key
        assert record["status"] == record["targetStatus"] == "RUNNING"
        assert isinstance(record["configurationName"], str) and record["configurationId"]
        resources = record["details"]["resources"]
        assert resources["backend_details"] == resources["backendDetails"]
        assert DEPLOYMENT_IDS[resources["backend_details"]["model"]["name"]] == record["id"]


@pytest.mark.parametrize(
    ("query", "count", "shown"),
    [
        ("executableIds=azure-openai", 5, 5),
        ("executableIds=aws-bedrock,gcp-vertexai", 2, 2),
        ("status=STOPPED", 0, 0),
        ("scenarioId=orchestration", 0, 0),
        ("$top=2&$skip=1", 8, 2),
        ("$skip=7", 8, 1),
    ],
)
def test_deployment_filters(client: Client, headers: dict[str, str], query: str, count: int, shown: int) -> None:
    body = client.get(f"/v2/lm/deployments?{query}", headers=headers).get_json()
    assert (body["count"], len(body["resources"])) == (count, shown)


def test_deployment_by_id_and_errors(client: Client, headers: dict[str, str]) -> None:
    record = client.get(f"/v2/lm/deployments/{GPT4O}", headers=headers).get_json()
    assert record["details"]["resources"]["backend_details"]["model"] == {"name": "gpt-4o", "version": "2024-08-06"}
    missing = client.get("/v2/lm/deployments/0000000000000000", headers=headers)
    assert missing.status_code == 404
    assert set(missing.get_json()["error"]) == {"code", "message", "requestId", "target", "details"}
    assert missing.get_json()["error"]["requestId"] == missing.headers["x-request-id"]
    assert client.get("/v2/lm/deployments?status=BOGUS", headers=headers).status_code == 400
    unauthenticated = client.get("/v2/lm/deployments")
    assert (unauthenticated.status_code, unauthenticated.get_data(as_text=True)) == (401, "Unauthorized")


# -- gateway checks ----------------------------------------------------------------------
def test_inference_auth_failures(client: Client, headers: dict[str, str], clock: FakeClock) -> None:
    body = user("hi")
    missing = client.post(CHAT, json=body, headers={"AI-Resource-Group": "default"})
    assert (missing.status_code, missing.get_data(as_text=True)) == (401, "Unauthorized")
    assert missing.mimetype == "text/plain"
    unknown = client.post(CHAT, json=body, headers={**headers, "Authorization": "Bearer forged"})
    assert (unknown.status_code, unknown.get_data(as_text=True)) == (401, "Unauthorized")
    clock.now += 43200
    expired = client.post(CHAT, json=body, headers=headers)
    assert (expired.status_code, expired.get_data(as_text=True)) == (401, "Jwt is expired")


def test_expire_tokens_fault(client: Client, headers: dict[str, str]) -> None:
    assert client.post(CHAT, json=user("hi"), headers=headers).status_code == 200
    client.post("/_sim/faults", json={"faults": [{"kind": "expire_tokens"}]})
    response = client.post(CHAT, json=user("hi"), headers=headers)
    assert (response.status_code, response.get_data(as_text=True)) == (401, "Jwt is expired")
    fresh = client.post("/oauth/token", data=FORM).get_json()["access_token"]
    renewed = {**headers, "Authorization": f"Bearer {fresh}"}
    assert client.post(CHAT, json=user("hi"), headers=renewed).status_code == 200


def test_resource_group_and_deployment_404(client: Client, headers: dict[str, str]) -> None:
    no_group = {"Authorization": headers["Authorization"]}
    for path, sent in ((CHAT, no_group), (CHAT, {**headers, "AI-Resource-Group": "other"}),
                       ("/v2/inference/deployments/ffffffffffffffff/chat/completions", headers)):
        response = client.post(path, json=user("hi"), headers=sent)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "NotFound"


def test_unimplemented_dialects_and_unknown_paths(client: Client, headers: dict[str, str]) -> None:
    for model, suffix in (("gemini-2.5-flash", "models/x:generateContent"),):
        response = client.post(f"/v2/inference/deployments/{DEPLOYMENT_IDS[model]}/{suffix}", json={}, headers=headers)
        assert response.status_code == 501
        assert "does not implement" in response.get_json()["error"]["message"]
    unknown = client.post(f"/v2/inference/deployments/{GPT4O}/completions", json={}, headers=headers)
    assert unknown.status_code == 404 and unknown.get_json()["error"]["message"] == "Resource not found"
    assert client.get("/v2/nothing/here", headers=headers).status_code == 404


def test_every_response_has_a_request_id(client: Client, headers: dict[str, str]) -> None:
    for response in (client.get("/nowhere"), client.get("/_sim/stats"), client.post(CHAT, json={}),
                     client.post("/oauth/token", data={})):
        assert re.fullmatch(r"[0-9a-f-]{36}", response.headers["x-request-id"])


# -- chat --------------------------------------------------------------------------------
def test_chat_completion(client: Client, headers: dict[str, str]) -> None:
    response = client.post(CHAT, json=user("Tell me a joke"), headers=headers)
    body = response.get_json()
    assert response.status_code == 200 and body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-2024-08-06" and body["system_fingerprint"].startswith("fp_")
    choice = body["choices"][0]
    expected = answer_text("gpt-4o", "Tell me a joke")
    assert choice["message"] == {"role": "assistant", "content": expected, "refusal": None}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert choice["content_filter_results"]["hate"] == {"filtered": False, "severity": "safe"}
    assert body["prompt_filter_results"][0]["prompt_index"] == 0
    usage = body["usage"]
    assert usage["prompt_tokens"] == 6 and usage["completion_tokens"] == len(expected.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_content_parts_and_quote_limit(client: Client, headers: dict[str, str]) -> None:
    parts = [{"type": "text", "text": "x" * 50}, {"type": "image_url", "image_url": {"url": "data:,"}},
             {"type": "text", "text": "y" * 50}]
    content = client.post(CHAT, json=user(parts), headers=headers).get_json()["choices"][0]["message"]["content"]
    assert content.endswith("You said: " + ("x" * 50 + " " + "y" * 50)[:80])


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_chat_token_limit_truncates(client: Client, headers: dict[str, str], field: str) -> None:
    body = client.post(CHAT, json={**user("hi"), field: 3}, headers=headers).get_json()
    assert body["choices"][0]["message"]["content"] == "Hello! This is"
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3


def test_sap_hosted_model_answers_without_api_version(client: Client, headers: dict[str, str]) -> None:
    path = f"/v2/inference/deployments/{MISTRAL}/chat/completions"
    body = client.post(path, json={**user("hi"), "model": "mistralai--mistral-small-instruct"},
                       headers=headers).get_json()
    assert body["model"] == "mistralai--mistral-small-instruct" and "prompt_filter_results" not in body
    assert body["choices"][0]["message"]["tool_calls"] == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (b'{"model": "gpt-4o"}', "messages"),
        (b'{"messages": []}', "messages"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}',
         "stream_options"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    ],
)
def test_chat_validation(client: Client, headers: dict[str, str], body: bytes, param: str | None) -> None:
    response = client.post(CHAT, data=body, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_operation_must_fit_the_model(client: Client, headers: dict[str, str]) -> None:
    chat_on_embedder = client.post(f"/v2/inference/deployments/{SMALL}/chat/completions", json=user("x"),
                                   headers=headers)
    embed_on_chat = client.post(f"/v2/inference/deployments/{GPT4O}/embeddings", json={"input": "x"}, headers=headers)
    for response in (chat_on_embedder, embed_on_chat):
        assert response.status_code == 400 and error_of(response)["code"] == "OperationNotSupported"


# -- chat stream -------------------------------------------------------------------------
@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream_order(client: Client, headers: dict[str, str], include_usage: bool) -> None:
    body = {**user("stream please"), "stream": True, "stream_options": {"include_usage": include_usage}}
    response = client.post(CHAT, json=body, headers=headers)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert "Content-Length" not in response.headers
    data = events(response)
    assert data.count("[DONE]") == 1 and data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    first, role, *rest = chunks
    assert first["choices"] == [] and first["id"] == "" and first["model"] == "" and first["prompt_filter_results"]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    if include_usage:
        *rest, usage = rest
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
        assert all(chunk["usage"] is None for chunk in chunks[:-1])
    else:
        assert all("usage" not in chunk for chunk in chunks)
    *content, finish = rest
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text == answer_text("gpt-4o", "stream please") and len(content) == len(text.split())
    assert {c["id"] for c in chunks[1:]} == {role["id"]} and role["object"] == "chat.completion.chunk"


def test_chat_stream_forced_chunks_and_sap_hosted_order(client: Client, headers: dict[str, str]) -> None:
    client.post("/_sim/settings", json={"chunks": 20})
    path = f"/v2/inference/deployments/{MISTRAL}/chat/completions"
    data = events(client.post(path, json={**user("hi"), "stream": True}, headers=headers))
    chunks = [json.loads(item) for item in data[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"  # no Azure filter chunk first
    assert len(chunks) == 1 + 20 + 1
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == answer_text(
        "mistralai--mistral-small-instruct", "hi")


# -- embeddings --------------------------------------------------------------------------
def test_embeddings_float_default(client: Client, headers: dict[str, str]) -> None:
    body = client.post(EMBED, json={"input": ["one two", "three"]}, headers=headers).get_json()
    assert body["object"] == "list" and body["model"] == "text-embedding-3-small"
    assert [d["index"] for d in body["data"]] == [0, 1] and {d["object"] for d in body["data"]} == {"embedding"}
    vector = body["data"][0]["embedding"]
    assert len(vector) == 1536 and abs(sum(v * v for v in vector) - 1) < 1e-5
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    again = client.post(EMBED, json={"input": "one two"}, headers=headers).get_json()
    assert again["data"][0]["embedding"] == vector


def test_embeddings_base64_and_dimensions(client: Client, headers: dict[str, str]) -> None:
    large = f"/v2/inference/deployments/{LARGE}/embeddings"
    assert len(client.post(large, json={"input": "x"}, headers=headers).get_json()["data"][0]["embedding"]) == 3072
    floats = client.post(EMBED, json={"input": "x", "dimensions": 256}, headers=headers).get_json()
    encoded = client.post(EMBED, json={"input": "x", "dimensions": 256, "encoding_format": "base64"},
                          headers=headers).get_json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert list(struct.unpack("<256f", raw)) == floats["data"][0]["embedding"]


def test_embeddings_token_inputs(client: Client, headers: dict[str, str]) -> None:
    one = client.post(EMBED, json={"input": [1, 2, 3]}, headers=headers).get_json()
    many = client.post(EMBED, json={"input": [[1, 2, 3], [4]]}, headers=headers).get_json()
    assert len(one["data"]) == 1 and len(many["data"]) == 2
    assert one["data"][0]["embedding"] == many["data"][0]["embedding"]
    assert many["usage"]["prompt_tokens"] == 4


@pytest.mark.parametrize(
    "body", [{}, {"input": ""}, {"input": []}, {"input": [1, "a"]}, {"input": "x", "dimensions": 4000},
             {"input": "x", "encoding_format": "hex"}],
)
def test_embeddings_validation(client: Client, headers: dict[str, str], body: dict[str, object]) -> None:
    response = client.post(EMBED, json=body, headers=headers)
    assert response.status_code == 400 and error_of(response)["param"] in ("input", "dimensions", "encoding_format")


# -- faults ------------------------------------------------------------------------------
def add_faults(client: Client, *faults: dict[str, object]) -> None:
    response = client.post("/_sim/faults", json={"faults": list(faults)})
    assert response.status_code == 200, response.get_data(as_text=True)


def test_status_faults(client: Client, headers: dict[str, str]) -> None:
    add_faults(client, {"kind": "status", "status": 429, "retry_after": 7, "times": 2},
               {"kind": "status", "status": 500}, {"kind": "status", "status": 503, "body": {"custom": True}})
    for _ in range(2):
        limited = client.post(CHAT, json=user("x"), headers=headers)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
        error = limited.get_json()["error"]
        assert error["code"] == "429"
        assert "ChatCompletions_Create" in error["message"] and "7 seconds" in error["message"]
    failed = client.post(CHAT, json=user("x"), headers=headers)
    assert failed.status_code == 500 and failed.get_json()["error"]["code"] == "internal_error"
    custom = client.post(CHAT, json=user("x"), headers=headers)
    assert (custom.status_code, custom.get_json()) == (503, {"custom": True})
    assert client.post(CHAT, json=user("x"), headers=headers).status_code == 200


def test_fault_match_and_targets(client: Client, headers: dict[str, str]) -> None:
    add_faults(client, {"kind": "status", "status": 429, "match": "/embeddings"},
               {"kind": "status", "status": 503, "target": "token"},
               {"kind": "status", "status": 500, "target": "lm"})
    assert client.post(CHAT, json=user("x"), headers=headers).status_code == 200
    assert client.post(EMBED, json={"input": "x"}, headers=headers).status_code == 429
    token = client.post("/oauth/token", data=FORM)
    assert token.status_code == 503 and token.get_json()["error"] == "temporarily_unavailable"
    assert client.post("/oauth/token", data=FORM).status_code == 200
    lm = client.get("/v2/lm/deployments", headers=headers)
    assert lm.status_code == 500 and lm.get_json()["error"]["code"] == "SimulatedFault"
    assert client.get("/_sim/faults").get_json() == {"faults": []}


def test_delay_fault_and_latency_setting(client: Client, headers: dict[str, str]) -> None:
    add_faults(client, {"kind": "delay", "seconds": 0.2})
    started = time.monotonic()
    assert client.post(CHAT, json=user("x"), headers=headers).status_code == 200
    assert time.monotonic() - started >= 0.2
    client.post("/_sim/settings", json={"latency_ms": 100})
    started = time.monotonic()
    client.post(CHAT, json=user("x"), headers=headers)
    assert 0.1 <= time.monotonic() - started < 1


def test_reset_fault_without_stream_breaks_before_answering(client: Client, headers: dict[str, str]) -> None:
    add_faults(client, {"kind": "reset"})
    with pytest.raises(ConnectionResetError):
        client.post(CHAT, json=user("x"), headers=headers)


def test_stream_faults_and_accounting(client: Client, headers: dict[str, str], state: SimState) -> None:
    body = {**user("x"), "stream": True}
    add_faults(client, {"kind": "reset", "after_chunks": 3}, {"kind": "stall", "seconds": 0.3, "after_chunks": 2})
    response = client.post(CHAT, json=body, headers=headers, buffered=False)
    stream = body_iter(response)
    received = [next(stream) for _ in range(3)]
    assert all(item.startswith(b"data: ") for item in received)
    with pytest.raises(ConnectionResetError):
        next(stream)
    response.close()
    assert state.stats()["streams_reset"] == 1

    stalled = client.post(CHAT, json=body, headers=headers, buffered=False)
    stream = body_iter(stalled)
    gaps = []
    for _ in range(4):
        started = time.monotonic()
        next(stream)
        gaps.append(time.monotonic() - started)
    assert gaps[2] >= 0.3 and max(gaps[:2] + gaps[3:]) < 0.25
    assert state.stats()["streams_open"] == 1
    stalled.close()  # the client goes away mid-stream
    completed = client.post(CHAT, json=body, headers=headers)
    events(completed)
    stats = state.stats()
    assert (stats["streams_open"], stats["streams_completed"], stats["streams_aborted"]) == (0, 1, 1)


# -- control API -------------------------------------------------------------------------
def test_settings_validation(client: Client) -> None:
    current = client.post("/_sim/settings", json={"chunk_delay_ms": 5, "chunks": 20}).get_json()
    assert current["chunk_delay_ms"] == 5 and current["chunks"] == 20 and current["token_ttl"] == 43199
    for bad in ({"bogus": 1}, {"latency_ms": -1}, {"chunks": 0}, {"token_ttl": "long"}):
        assert client.post("/_sim/settings", json=bad).status_code == 400
    assert client.get("/_sim/settings").get_json() == current


def test_fault_validation(client: Client) -> None:
    for bad in ({"faults": [{"kind": "explode"}]}, {"faults": [{"kind": "status", "status": 99}]},
                {"faults": [{"kind": "delay", "seconds": -1}]}, {"faults": [{"kind": "status", "target": "x"}]},
                {"faults": "no"}, {"faults": [{"kind": "reset", "extra": 1}]}):
        assert client.post("/_sim/faults", json=bad).status_code == 400, bad
    add_faults(client, {"kind": "delay", "seconds": 1, "times": 3})
    assert client.get("/_sim/faults").get_json()["faults"][0]["remaining"] == 3
    assert client.delete("/_sim/faults").get_json() == {"faults": []}


def test_stats_and_reset(client: Client, headers: dict[str, str]) -> None:
    client.post("/oauth/token", data=FORM)
    client.post(CHAT, json={**user("x"), "max_tokens": 9}, headers={**headers, "X-Extra": "1"})
    client.post(EMBED, json={"input": "x"}, headers=headers)
    client.post("/_sim/settings", json={"latency_ms": 1})
    add_faults(client, {"kind": "delay"})
    stats = client.get("/_sim/stats").get_json()
    assert stats["token_requests"] == 1 and stats["inference_requests"] == 2
    assert stats["requests_by_path"] == {"token": 1, "chat_completions": 1, "embeddings": 1}
    assert stats["faults_pending"] == 1
    last = stats["last_inference"]
    assert last["path"] == f"/v2/inference/deployments/{SMALL}/embeddings"
    assert last["query"] == {"api-version": "2025-03-01-preview"} and last["json"] == {"input": "x"}
    assert last["headers"]["authorization"] == "Bearer ***" and last["headers"]["ai-resource-group"] == "default"
    client.post("/_sim/reset")
    stats = client.get("/_sim/stats").get_json()
    assert stats["token_requests"] == 0 and stats["requests_by_path"] == {} and stats["faults_pending"] == 0
    assert stats["last_inference"] is None
    assert client.get("/_sim/settings").get_json()["latency_ms"] == 0
    assert client.post(CHAT, json=user("x"), headers=headers).status_code == 200  # tokens survive a reset


def test_stream_body_close_is_idempotent(client: Client, headers: dict[str, str], state: SimState) -> None:
    response = client.post(CHAT, json={**user("x"), "stream": True}, headers=headers, buffered=False)
    iterator = body_iter(response)
    next(iterator)
    response.close()
    response.close()
    assert state.stats()["streams_aborted"] == 1 and state.stats()["streams_open"] == 0
