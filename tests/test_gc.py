"""Garbage collection: requests leave no reference cycles, and the worker's GC tuning.

The gunicorn workers collect the youngest generation every ``WSGIPROXY_GC_THRESHOLD``
allocations instead of 700 (servers/gunicorn_hooks.py ``tune_gc``). That is safe only while a
request's objects are freed by reference counting alone: a cycle per request would wait for the
collector. These tests run every kind of request through the app with the collector saving what
it finds, and require that it finds nothing.
"""

from __future__ import annotations

import gc
import io
import json
import sys
import typing as t

import pytest

from servers import gunicorn_hooks
from tests._stack import python_child
from tests.fakes import FakeTransport, response, stream_response
from tests.test_proxy import AUTH, CHAT, COMPLETION, KEY, STREAM, settings
from wsgiproxy.aicore.http11 import ResponseBroken
from wsgiproxy.errors import UpstreamTimeout
from wsgiproxy.proxy import create_app

CLAUDE_STREAM = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m1","type":"message","role":"assistant",'
    b'"content":[],"model":"claude","usage":{"input_tokens":3,"output_tokens":0}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hi"}}\n\n',
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":1}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


def environ(method: str, path: str, body: bytes = b"", headers: t.Mapping[str, str] = AUTH) -> dict[str, t.Any]:
    env: dict[str, t.Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "3001", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "SCRIPT_NAME": "",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/json",
    }
    for name, value in headers.items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def cases() -> list[tuple[str, dict[str, t.Any], list[t.Any]]]:
    """(what, environ, upstream answers): every path a request can take through the app."""
    chat = json.dumps(CHAT).encode()
    stream = json.dumps({**CHAT, "stream": True}).encode()
    claude = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]}).encode()
    return [
        ("chat", environ("POST", "/v1/chat/completions", chat), [response(200, COMPLETION)]),
        ("chat stream", environ("POST", "/v1/chat/completions", stream), [stream_response(STREAM)]),
        ("stream cut", environ("POST", "/v1/chat/completions", stream),
         [stream_response(STREAM[:2], error=ResponseBroken("connection closed"))]),
        ("claude stream", environ("POST", "/v1/messages", claude, {"x-api-key": KEY}),
         [stream_response(CLAUDE_STREAM)]),
        ("upstream 429", environ("POST", "/v1/chat/completions", chat),
         [response(429, {"error": {"message": "slow down"}}, {"Retry-After": "3"})]),
        ("upstream down", environ("POST", "/v1/chat/completions", chat), [UpstreamTimeout("SAP AI Core did not answer in time")]),
        ("no key", environ("POST", "/v1/chat/completions", chat, {}), []),
        ("bad JSON", environ("POST", "/v1/chat/completions", b"{nope"), []),
        ("unknown model", environ("POST", "/v1/chat/completions", json.dumps({**CHAT, "model": "x"}).encode()), []),
        ("no route", environ("GET", "/v1/nothing"), []),
        ("wrong method", environ("GET", "/v1/chat/completions"), []),
        ("models", environ("GET", "/v1/models"), []),
        ("model", environ("GET", "/v1/models/gpt-4o"), []),
        ("health", environ("GET", "/health", headers={}), []),
    ]


def run(app: t.Any, env: dict[str, t.Any]) -> tuple[str, bytes]:
    status: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> None:
        status.append(line)

    body = app(env, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return status[0], data


def not_werkzeugs(garbage: list[t.Any]) -> list[t.Any]:
    """``garbage`` without werkzeug's router's own cycle: its matcher's recursive inner function
    (with its cells) is made per match, for the paths outside the exact route table."""
    ids = {id(obj) for obj in garbage}
    theirs: set[int] = set()
    todo = [obj for obj in garbage
            if callable(obj) and getattr(obj, "__module__", "") == "werkzeug.routing.matcher"]
    while todo:
        obj = todo.pop()
        if id(obj) in theirs:
            continue
        theirs.add(id(obj))
        todo.extend(ref for ref in gc.get_referents(obj) if id(ref) in ids and type(ref).__module__ == "builtins")
    return [obj for obj in garbage if id(obj) not in theirs]


def test_requests_leave_no_reference_cycles(tmp_path: t.Any) -> None:
    transport = FakeTransport()
    app = create_app(settings(usage_log=str(tmp_path / "usage.log")), transport=transport)  # type: ignore[arg-type]
    for _what, env, answers in cases():  # first use builds the process state, the routes, the caches
        transport.script[:] = answers
        run(app, env)
    runs = [case for _ in range(3) for case in cases()]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        statuses = {}
        for what, env, answers in runs:
            transport.script[:] = answers
            statuses[what] = run(app, env)[0]
        gc.collect()
        garbage = [f"{type(obj).__name__}: {obj!r}"[:200] for obj in not_werkzeugs(gc.garbage)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert statuses["chat stream"].startswith("200") and statuses["no key"].startswith("401")
    assert statuses["upstream 429"].startswith("429") and statuses["no route"].startswith("404")
    assert garbage == []


def test_gc_threshold_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gunicorn_hooks.GC_THRESHOLD_ENV, raising=False)
    assert gunicorn_hooks.gc_threshold() == gunicorn_hooks.DEFAULT_GC_THRESHOLD
    monkeypatch.setenv(gunicorn_hooks.GC_THRESHOLD_ENV, "0")
    assert gunicorn_hooks.gc_threshold() == 0
    monkeypatch.setenv(gunicorn_hooks.GC_THRESHOLD_ENV, " 25000 ")
    assert gunicorn_hooks.gc_threshold() == 25000
    for bad in ("-1", "lots", "1e4"):
        monkeypatch.setenv(gunicorn_hooks.GC_THRESHOLD_ENV, bad)
        with pytest.raises(SystemExit, match="WSGIPROXY_GC_THRESHOLD"):
            gunicorn_hooks.gc_threshold()


@pytest.mark.parametrize("threshold, expected", [(10_000, "(10000, 10, 10) True"), (0, "(700, 10, 10) False")])
def test_tune_gc(threshold: int, expected: str) -> None:
    code = ("import gc; from servers.gunicorn_hooks import tune_gc; "
            f"tune_gc({threshold}); print(gc.get_threshold(), gc.get_freeze_count() > 0)")
    assert python_child(code).strip() == expected
