"""The WSGI app end to end in-process, against a scripted upstream: routing, auth, errors, relaying."""

from __future__ import annotations

import io
import json
import re
import typing as t

import pytest
from werkzeug.test import Client

from tests._stack import sse_data
from tests.fakes import FakeTransport, response, stream_response
from wsgiproxy.aicore.http11 import ResponseBroken
from wsgiproxy.config import Credentials, Settings, SubAccount
from wsgiproxy.errors import UpstreamTimeout, UpstreamUnreachable
from wsgiproxy.proxy import create_app

API = "https://api.example"
KEY = "sk-test-key-123456"


def settings(**overrides: t.Any) -> Settings:
    sub = SubAccount(
        "a",
        Credentials("client", "secret", "https://auth.example/oauth/token", API),
        "rg-a",
        {"gpt-4o": (f"{API}/v2/inference/deployments/d1",),
         "text-embedding-3-small": (f"{API}/v2/inference/deployments/d2",),
         "anthropic--claude-4.5-sonnet": (f"{API}/v2/inference/deployments/d3",)},
    )
    values: dict[str, t.Any] = {"subaccounts": (sub,), "api_keys": (KEY,), **overrides}
    return Settings(**values)


def client(transport: FakeTransport, **overrides: t.Any) -> Client:
    return Client(create_app(settings(**overrides), transport=transport))  # type: ignore[arg-type]


AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def error_of(resp: t.Any) -> dict[str, t.Any]:
    assert resp.headers["Content-Type"] == "application/json"
    payload = json.loads(resp.data)
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    return payload["error"]


def test_health_needs_no_key_and_no_upstream() -> None:
    transport = FakeTransport()
    resp = client(transport).get("/health")
    assert resp.status_code == 200 and json.loads(resp.data)["status"] == "ok"
    assert transport.sent == []
    assert resp.headers["X-Request-Id"]


def test_models_lists_configured_models_and_needs_a_key() -> None:
    c = client(FakeTransport())
    assert c.get("/v1/models").status_code == 401
    data = json.loads(c.get("/v1/models", headers=AUTH).data)
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["anthropic--claude-4.5-sonnet", "gpt-4o", "text-embedding-3-small"]
    assert all(m["object"] == "model" and m["owned_by"] == "sap-ai-core" for m in data["data"])
    assert c.get("/v1/models/", headers=AUTH).status_code == 200
    assert json.loads(c.get("/v1/models/gpt-4o", headers=AUTH).data)["id"] == "gpt-4o"
    assert error_of(c.get("/v1/models/nope", headers=AUTH))["code"] == "model_not_found"


def test_models_open_when_no_keys_configured() -> None:
    assert client(FakeTransport(), api_keys=()).get("/v1/models").status_code == 200


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong-key-123456"}, {"Authorization": f"Bearer {KEY[:-1]}"},
    {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"Basic {KEY}"}, {"x-api-key": KEY[:8]},
])
def test_bad_keys_get_401(headers: dict[str, str]) -> None:
    transport = FakeTransport()
    resp = client(transport).post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "invalid_api_key"
    assert KEY not in resp.get_data(as_text=True)
    assert transport.sent == []


def test_x_api_key_is_accepted() -> None:
    transport = FakeTransport([response(200, COMPLETION)])
    resp = client(transport).post("/v1/chat/completions", json=CHAT, headers={"x-api-key": KEY})
    assert resp.status_code == 200


def test_chat_non_stream_passes_the_body_through() -> None:
    transport = FakeTransport([response(200, COMPLETION, {"Content-Type": "application/json"})])
    raw = json.dumps(CHAT).encode()
    resp = client(transport).post("/v1/chat/completions", data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 200 and json.loads(resp.data) == COMPLETION
    (call,) = transport.calls()
    assert call.url == f"{API}/v2/inference/deployments/d1/chat/completions?api-version=2025-03-01-preview"
    assert call.body == raw
    assert call.headers["Authorization"] == "Bearer tok-1"
    assert call.headers["AI-Resource-Group"] == "rg-a"
    assert call.headers["Content-Type"] == "application/json"


def test_api_version_is_configurable() -> None:
    transport = FakeTransport([response(200, COMPLETION)])
    client(transport, api_version="2024-10-21").post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert transport.calls()[0].url.endswith("?api-version=2024-10-21")


STREAM = [
    b'data: {"choices":[],"prompt_filter_results":[]}\n\n',
    b'data: {"choices":[{"delta":{"role":"assistant","content":""},"index":0}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"Hel',
    b'lo"},"index":0}]}\n\ndata: {"choices":[{"delta":{},"finish_reason":"stop","index":0}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\ndata: [DONE]\n\n',
]


def test_chat_stream_relays_events_and_requests_usage() -> None:
    upstream = stream_response(STREAM)
    transport = FakeTransport([upstream])
    resp = client(transport).post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH,
                                  buffered=False)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in resp.headers
    chunks = list(resp.response)
    resp.close()
    assert chunks[-1] == b"data: [DONE]\n\n" and chunks.count(b"data: [DONE]\n\n") == 1
    assert not any(b'"usage"' in c for c in chunks)
    assert b"".join(chunks).count(b"data: ") == 4
    sent = json.loads(transport.calls()[0].body)
    assert sent["stream_options"] == {"include_usage": True}
    assert transport.calls()[0].headers["Accept"] == "text/event-stream"
    assert upstream.done and not upstream.discarded  # read to its end: the connection goes back


def test_chat_stream_with_usage_requested_by_the_client() -> None:
    transport = FakeTransport([stream_response(STREAM)])
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    resp = client(transport).post("/v1/chat/completions", json=body, headers=AUTH, buffered=False)
    events = sse_data(b"".join(resp.response))
    resp.close()
    assert '"usage"' in events[-2] and events[-1] == "[DONE]"


def test_upstream_failure_mid_stream_ends_with_an_error_event() -> None:
    upstream = stream_response(STREAM[:2], error=ResponseBroken("connection closed before the end of the body"))
    transport = FakeTransport([upstream])
    resp = client(transport).post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH, buffered=False)
    chunks = list(resp.response)
    resp.close()
    last = json.loads(chunks[-1][6:])
    assert last["error"]["code"] == "upstream_error" and b"[DONE]" not in b"".join(chunks)
    assert "upstream stream broke" in last["error"]["message"]
    assert upstream.discarded  # a broken stream's connection is never reused


def test_upstream_timeout_mid_stream_ends_with_an_error_event() -> None:
    upstream = stream_response(STREAM[:2], error=TimeoutError("timed out"))  # what read1 raises on a read timeout
    transport = FakeTransport([upstream])
    resp = client(transport).post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH, buffered=False)
    chunks = list(resp.response)
    resp.close()
    assert "read timeout" in json.loads(chunks[-1][6:])["error"]["message"]
    assert upstream.discarded


def test_client_going_away_closes_the_upstream_response() -> None:
    upstream = stream_response(STREAM)
    transport = FakeTransport([upstream])
    resp = client(transport).post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH, buffered=False)
    iterator = iter(resp.response)
    next(iterator)
    resp.close()  # what a WSGI server does when the client disconnects
    assert upstream.discarded


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1]", "JSON list"),
        (b'{"messages": []}', "model parameter"),
        (b'{"model": "gpt-4o"}', "'messages'"),
        (b'{"model": "gpt-4o", "messages": "hi"}', "'messages'"),
        (b'{"model": "gpt-4o", "messages": [{}], "stream": "yes"}', "'stream' must be a boolean"),
        (b'{"model": "\xff"}', "not UTF-8"),
        (b'{"model": "gpt-4o", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ],
)
def test_bad_chat_requests_get_400(body: bytes, expected: str) -> None:
    transport = FakeTransport()
    resp = client(transport).post("/v1/chat/completions", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400
    assert expected in error_of(resp)["message"]
    assert transport.sent == []


def test_unknown_model_is_404_naming_the_available_models() -> None:
    transport = FakeTransport()
    resp = client(transport).post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}, headers=AUTH)
    assert resp.status_code == 404
    error = error_of(resp)
    assert error["code"] == "model_not_found" and "gpt-4o" in error["message"] and "gpt-9" in error["message"]
    assert transport.sent == []


def test_gemini_is_refused_clearly_for_now() -> None:
    sub = SubAccount("g", Credentials("client", "secret", "https://auth.example/oauth/token", API), "default",
                     {"gemini-2.5-flash": (f"{API}/v2/inference/deployments/d9",)})
    transport = FakeTransport()
    resp = client(transport, subaccounts=(sub,)).post("/v1/chat/completions",
                                                      json={**CHAT, "model": "gemini-2.5-flash"}, headers=AUTH)
    assert resp.status_code == 400 and error_of(resp)["code"] == "model_not_supported"
    assert transport.sent == []


def test_anthropic_routes_answer_anthropic_errors() -> None:
    c = client(FakeTransport())
    for headers, status, kind in [({}, 401, "authentication_error"), (AUTH, 404, "not_found_error")]:
        resp = c.post("/v1/messages?beta=true", headers=headers,
                      json={"model": "claude-nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
        assert resp.status_code == status
        assert json.loads(resp.data) == {"type": "error", "error": {"type": kind, "message": json.loads(
            resp.data)["error"]["message"]}}
    resp = c.post("/v1/messages", headers=AUTH, data=b"{not json", content_type="application/json")
    assert resp.status_code == 400 and json.loads(resp.data)["error"]["type"] == "invalid_request_error"
    resp = c.post("/v1/messages", headers=AUTH, json={"model": "gpt-4o", "max_tokens": 5,
                                                      "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 400 and "not a Claude model" in json.loads(resp.data)["error"]["message"]
    resp = c.post("/v1/messages/count_tokens", headers=AUTH, json={"model": "claude-sonnet-4-5", "messages": [
        {"role": "user", "content": "count these words please"}]})
    assert resp.status_code == 200 and json.loads(resp.data)["input_tokens"] > 0


def test_root_and_event_logging_need_no_key_and_no_upstream() -> None:
    transport = FakeTransport()
    c = client(transport)
    assert c.head("/").status_code == 200 and c.get("/").status_code == 200
    resp = c.post("/api/event_logging/batch", json={"events": []})
    assert resp.status_code == 200 and json.loads(resp.data) == {}
    assert transport.sent == []


def test_body_over_the_limit_is_413() -> None:
    resp = client(FakeTransport(), max_body_bytes=100).post(
        "/v1/chat/completions", data=b"x" * 101, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 413 and error_of(resp)["code"] == "request_too_large"


def post_chunked(c: Client, raw: bytes) -> t.Any:
    """A body without Content-Length, as gunicorn hands over a chunked request."""
    return c.post("/v1/chat/completions", input_stream=io.BytesIO(raw),
                  headers={**AUTH, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                  environ_overrides={"wsgi.input_terminated": True})


def test_chunked_body_over_the_limit_is_413() -> None:
    resp = post_chunked(client(FakeTransport(), max_body_bytes=100), b"x" * 101)
    assert resp.status_code == 413


def test_chunked_body_of_exactly_the_limit_is_accepted() -> None:
    raw = json.dumps(CHAT).encode()
    transport = FakeTransport([response(200, COMPLETION)])
    resp = post_chunked(client(transport, max_body_bytes=len(raw)), raw)
    assert resp.status_code == 200 and transport.calls()[0].body == raw


@pytest.mark.parametrize("status", [400, 404, 422, 429, 500, 503])
def test_upstream_errors_keep_status_and_message(status: int) -> None:
    body = {"error": {"code": "content_filter" if status == 400 else str(status), "message": f"upstream says {status}",
                      "param": None, "type": None}}
    headers = {"Retry-After": "7"} if status == 429 else {}
    transport = FakeTransport([response(status, body, headers)])
    resp = client(transport).post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == status
    assert error_of(resp)["message"] == f"upstream says {status}"
    if status == 429:
        assert resp.headers["Retry-After"] == "7"
        assert error_of(resp)["type"] == "rate_limit_error"


def test_plain_text_upstream_errors_become_json() -> None:
    transport = FakeTransport([response(404, b"Resource group not found")])
    resp = client(transport).post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == 404 and error_of(resp)["message"] == "Resource group not found"


def test_upstream_401_refreshes_the_token_once() -> None:
    transport = FakeTransport([response(401, b"Jwt is expired"), response(200, COMPLETION)])
    resp = client(transport).post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == 200
    assert [c.headers["Authorization"] for c in transport.calls()] == ["Bearer tok-1", "Bearer tok-2"]
    assert len(transport.tokens()) == 2


def test_upstream_401_twice_is_a_502_about_the_proxy_credentials() -> None:
    transport = FakeTransport([response(401, b"Jwt is expired"), response(401, b"Jwt is expired")])
    resp = client(transport).post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == 502 and error_of(resp)["code"] == "upstream_auth_failed"


def test_token_failure_is_a_502() -> None:
    transport = FakeTransport(token_answer=response(401, {"error": "unauthorized", "error_description": "Bad credentials"}))
    resp = client(transport).post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == 502 and "Bad credentials" in error_of(resp)["message"]
    assert error_of(resp)["code"] == "upstream_auth_failed"


@pytest.mark.parametrize(("exc", "status"), [(UpstreamTimeout("slow"), 504), (UpstreamUnreachable("down"), 502)])
def test_transport_failures(exc: Exception, status: int) -> None:
    transport = FakeTransport([exc])
    resp = client(transport).post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == status


def test_unexpected_errors_are_500_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    transport = FakeTransport([lambda: 1 / 0])
    resp = client(transport).post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert resp.status_code == 500
    error = error_of(resp)
    assert "Traceback" not in error["message"] and resp.headers["X-Request-Id"] in error["message"]
    assert "ZeroDivisionError" in caplog.text


def test_unknown_path_and_method() -> None:
    c = client(FakeTransport())
    assert error_of(c.get("/v2/whatever"))["code"] == "unknown_url"
    resp = c.get("/v1/chat/completions", headers=AUTH)
    assert resp.status_code == 405 and resp.headers["Allow"] == "POST"


def test_request_id_is_taken_from_the_client_when_sane() -> None:
    c = client(FakeTransport())
    assert c.get("/health", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    assert c.get("/health", headers={"X-Request-Id": "bad id\x01"}).headers["X-Request-Id"] != "bad id\x01"


def test_new_request_ids_are_32_hex_digits_and_unique() -> None:
    c = client(FakeTransport())
    ids = {c.get("/health").headers["X-Request-Id"] for _ in range(200)}
    assert len(ids) == 200 and all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids), sorted(ids)[:3]


def test_embeddings_pass_every_field_through() -> None:
    answer = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": "AAAA"}],
              "model": "text-embedding-3-small", "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    transport = FakeTransport([response(200, answer)])
    body = {"model": "text-embedding-3-small", "input": ["a"], "dimensions": 256, "encoding_format": "base64",
            "user": "u1"}
    resp = client(transport).post("/v1/embeddings", json=body, headers=AUTH)
    assert resp.status_code == 200 and json.loads(resp.data) == answer
    (call,) = transport.calls()
    assert json.loads(call.body) == body
    assert call.url == f"{API}/v2/inference/deployments/d2/embeddings?api-version=2025-03-01-preview"


@pytest.mark.parametrize("body", [{"model": "text-embedding-3-small"}, {"model": "text-embedding-3-small", "input": 5},
                                  {"model": "text-embedding-3-small", "input": "a", "encoding_format": "hex"}])
def test_bad_embeddings_requests(body: dict[str, t.Any]) -> None:
    assert client(FakeTransport()).post("/v1/embeddings", json=body, headers=AUTH).status_code == 400


def test_round_robin_across_subaccounts_and_urls() -> None:
    creds = Credentials("c", "s", "https://auth.example/oauth/token", API)
    subs = (SubAccount("a", creds, "rg-a", {"gpt-4o": (f"{API}/d/a1", f"{API}/d/a2")}),
            SubAccount("b", creds, "rg-b", {"gpt-4o": (f"{API}/d/b1",)}))
    transport = FakeTransport([response(200, COMPLETION) for _ in range(6)])
    c = Client(create_app(Settings(subaccounts=subs), transport=transport))  # type: ignore[arg-type]
    for _ in range(6):
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    urls = [call.url.split("/chat")[0].rsplit("/", 1)[-1] for call in transport.calls()]
    assert urls == ["a1", "b1", "a2", "b1", "a1", "b1"]
    assert [call.headers["AI-Resource-Group"] for call in transport.calls()][:2] == ["rg-a", "rg-b"]


def test_no_key_or_token_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    transport = FakeTransport([response(401, b"Jwt is expired"), response(429, {"error": {"message": "slow down"}}),
                               UpstreamUnreachable("cannot connect to api.example")])
    c = client(transport)
    c.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    c.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer wrong-key-123456"})
    assert caplog.records, "the failures above were logged"
    for secret in (KEY, KEY[:8], "tok-1", "tok-2", "wrong-key", "secret"):
        assert secret not in caplog.text


def test_exact_routes_agree_with_the_url_map() -> None:
    from werkzeug.test import EnvironBuilder

    from wsgiproxy.proxy import EXACT_ROUTES, url_map

    assert ("/v1/chat/completions", "POST") in EXACT_ROUTES and ("/health", "HEAD") in EXACT_ROUTES
    assert url_map() is url_map()  # built once per process
    assert {(rule.rule, method) for rule in url_map().iter_rules() if not rule.arguments
            for method in rule.methods or ()} == set(EXACT_ROUTES)
    for (path, method), (endpoint, _) in EXACT_ROUTES.items():
        environ = EnvironBuilder(path=path, method=method).get_environ()
        assert url_map().bind_to_environ(environ).match() == (endpoint, {})
    match = url_map().bind_to_environ(EnvironBuilder(path="/v1/models/gpt-4o").get_environ()).match()
    assert match == ("model", {"model": "gpt-4o"}) and ("/v1/models/gpt-4o", "GET") not in EXACT_ROUTES


def test_routes_outside_the_exact_table_still_route() -> None:
    c = client(FakeTransport([response(200, COMPLETION)]))
    assert c.post("/v1/chat/completions/", json=CHAT, headers=AUTH).status_code == 200  # trailing slash
    assert c.head("/health").status_code == 200 and c.head("/health").data == b""
    resp = c.get("/v1/chat/completions", headers=AUTH)
    assert resp.status_code == 405 and resp.headers["Allow"] == "POST"


def test_made_up_request_ids_are_32_hex_digits() -> None:
    ids = {client(FakeTransport()).get("/health").headers["X-Request-Id"] for _ in range(20)}
    assert len(ids) == 20 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


class _FailingInput:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def read(self, size: int = -1) -> bytes:
        raise self.error


@pytest.mark.parametrize("error", [ValueError("Invalid chunk size"), ConnectionResetError("client gone"),
                                   TimeoutError()])
def test_a_body_the_server_cannot_read_is_a_400(error: Exception) -> None:
    from wsgiproxy.body import read_body
    from wsgiproxy.errors import ApiError

    for environ in ({"wsgi.input": _FailingInput(error), "CONTENT_LENGTH": "10"},
                    {"wsgi.input": _FailingInput(error), "HTTP_TRANSFER_ENCODING": "chunked"}):
        with pytest.raises(ApiError) as refused:
            read_body(environ, 1000)
        assert refused.value.code == 400 and "request body could not be read" in refused.value.message


DEEP = b"[" * 100_000 + b"]" * 100_000  # JSON the stdlib decoder cannot parse without recursing too deep


CLAUDE_CHAT = {**CHAT, "model": "anthropic--claude-4.5-sonnet"}  # a Converse call
CLAUDE_MESSAGES = {"model": "anthropic--claude-4.5-sonnet", "max_tokens": 5,
                   "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(("path", "body", "upstream_status", "status"), [
    ("/v1/chat/completions", CLAUDE_CHAT, 200, 502),
    ("/v1/messages", CLAUDE_MESSAGES, 200, 502),
    ("/v1/chat/completions", CHAT, 500, 500),  # an upstream error, relayed with its status
])
def test_upstream_json_nested_too_deeply_is_an_upstream_error(path: str, body: dict[str, t.Any], upstream_status: int,
                                                              status: int) -> None:
    transport = FakeTransport([response(upstream_status, DEEP, {"content-type": "application/json"})])
    resp = client(transport).post(path, json=body, headers=AUTH)
    assert resp.status_code == status
    assert "Internal error" not in resp.json["error"]["message"]
