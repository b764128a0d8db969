"""The simulator's Bedrock dialect in process (werkzeug test client): operations, framings, validation,
scenarios and faults, as the module docstring of ``wsgiproxy/sim/bedrock.py`` states them."""

from __future__ import annotations

import ast
import base64
import json
import re
import time
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer
from werkzeug.test import Client, TestResponse

from wsgiproxy.sim import DEPLOYMENT_IDS, SimState, create_app
from wsgiproxy.sim.eventstream import encode_message
from wsgiproxy.sim.service_key import proxy_config
from wsgiproxy.sim.text import answer_text, count_tokens

MODEL = "anthropic--claude-4.5-sonnet"
BASE = f"/v2/inference/deployments/{DEPLOYMENT_IDS[MODEL]}"
EVENTSTREAM = "application/vnd.amazon.eventstream"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                  "required": ["city"]}
WEATHER = {"name": "get_weather", "description": "weather", "input_schema": WEATHER_SCHEMA}
CONVERSE_TOOLS = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": WEATHER_SCHEMA}}}]}


@pytest.fixture
def state() -> SimState:
    return SimState()


@pytest.fixture
def client(state: SimState) -> Client:
    return Client(create_app(state))


@pytest.fixture
def headers(state: SimState) -> dict[str, str]:
    return {"Authorization": f"Bearer {state.issue_token().value}", "AI-Resource-Group": "default"}


def invoke_body(*messages: Any, **extra: Any) -> dict[str, Any]:
    turns = list(messages) or [{"role": "user", "content": "Hello there"}]
    return {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 2000, "messages": turns, **extra}


def converse_body(*messages: Any, **extra: Any) -> dict[str, Any]:
    turns = list(messages) or [{"role": "user", "content": [{"text": "Hello there"}]}]
    return {"messages": turns, **extra}


def post(client: Client, headers: dict[str, str], op: str, body: object, accept: str = EVENTSTREAM,
         **kwargs: Any) -> TestResponse:
    return client.post(f"{BASE}/{op}", json=body, headers={**headers, "Accept": accept}, **kwargs)


def frames(response: TestResponse) -> list[tuple[dict[str, Any], bytes]]:
    """Decode a binary event-stream body with boto's own parser (which checks both CRCs)."""
    assert response.status_code == 200 and response.mimetype == EVENTSTREAM
    parser = EventStreamBuffer()
    parser.add_data(response.get_data())
    response.close()
    return [(message.headers, message.payload) for message in parser]


def anthropic_events(response: TestResponse) -> list[dict[str, Any]]:
    events = []
    for headers, payload in frames(response):
        assert headers[":event-type"] == "chunk" and headers[":message-type"] == "event"
        outer = json.loads(payload)
        assert set(outer) == {"bytes", "p"} and outer["p"]
        events.append(json.loads(base64.b64decode(outer["bytes"])))
    return events


def converse_events(response: TestResponse) -> list[dict[str, Any]]:
    return [{headers[":event-type"]: json.loads(payload)} for headers, payload in frames(response)]


def text_payloads(response: TestResponse) -> list[str]:
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    body = response.get_data(as_text=True)
    response.close()
    assert body.endswith("\n\n") and "[DONE]" not in body
    blocks = body[:-2].split("\n\n")
    assert all(block.startswith("data: ") for block in blocks)
    return [block[len("data: "):] for block in blocks]


def rejected(response: TestResponse, *needles: str) -> str:
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["__type"] == "ValidationException" and response.headers["x-amzn-ErrorType"] == "ValidationException"
    for needle in needles:
        assert needle in body["message"]
    return str(body["message"])


def body_iter(response: TestResponse) -> Iterator[bytes]:
    return iter(typing.cast("typing.Iterable[bytes]", response.response))


def add_faults(client: Client, *faults: dict[str, object]) -> None:
    assert client.post("/_sim/faults", json={"faults": list(faults)}).status_code == 200


# -- the four operations -------------------------------------------------------------------
@pytest.mark.parametrize("accept", [EVENTSTREAM, "application/json", None])
def test_invoke_answers_json_whatever_accept_says(client: Client, headers: dict[str, str], accept: str | None) -> None:
    sent = headers if accept is None else {**headers, "Accept": accept}
    raw = json.dumps(invoke_body(system="Be brief", messages=[{"role": "user", "content": "Hello there"}]))
    response = client.post(f"{BASE}/invoke", data=raw, headers=sent)  # boto3 sends no Content-Type
    assert response.status_code == 200 and response.mimetype == "application/json"
    message = response.get_json()
    text = answer_text(MODEL, "Hello there")
    assert list(message) == ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"]
    assert re.fullmatch(r"msg_bdrk_01[0-9a-f]{22}", message["id"])
    assert (message["type"], message["role"], message["model"]) == ("message", "assistant", "claude-4.5-sonnet")
    assert message["content"] == [{"type": "text", "text": text}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)
    assert message["usage"] == {"input_tokens": 4, "output_tokens": count_tokens(text)}
    assert response.headers["X-Amzn-Bedrock-Input-Token-Count"] == "4"
    assert response.headers["X-Amzn-Bedrock-Output-Token-Count"] == str(count_tokens(text))


def test_converse_answers_json(client: Client, headers: dict[str, str], state: SimState) -> None:
    body = converse_body(system=[{"text": "Be brief"}, {"cachePoint": {"type": "default"}}],
                         inferenceConfig={"maxTokens": 500, "temperature": 0.2, "topP": 0.9})
    response = post(client, headers, "converse", body)
    assert response.status_code == 200 and response.mimetype == "application/json"
    text = answer_text(MODEL, "Hello there")
    output = count_tokens(text)
    assert response.get_json() == {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 4, "outputTokens": output, "totalTokens": 4 + output, "cacheReadInputTokens": 0,
                  "cacheWriteInputTokens": 0},
        "metrics": {"latencyMs": response.get_json()["metrics"]["latencyMs"]},
    }
    assert response.get_json()["metrics"]["latencyMs"] >= 1
    counted = state.stats()["requests_by_path"]
    assert counted["converse"] == 1  # type: ignore[index]


def test_invoke_stream_as_event_stream(client: Client, headers: dict[str, str]) -> None:
    response = post(client, headers, "invoke-with-response-stream", invoke_body())
    assert response.headers["X-Amzn-Bedrock-Content-Type"] == "application/json"
    events = anthropic_events(response)
    text = answer_text(MODEL, "Hello there")
    start = events[0]
    assert start["type"] == "message_start"
    assert start["message"]["content"] == [] and start["message"]["stop_reason"] is None
    assert start["message"]["usage"] == {"input_tokens": 2, "output_tokens": 1}
    assert events[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(deltas) == text and len(deltas) == count_tokens(text)
    assert events[-3] == {"type": "content_block_stop", "index": 0}
    assert events[-2] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                          "usage": {"output_tokens": count_tokens(text)}}
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert events[-1]["type"] == "message_stop" and metrics["inputTokenCount"] == 2
    assert metrics["outputTokenCount"] == count_tokens(text) and metrics["invocationLatency"] >= 1


def test_invoke_stream_as_text(client: Client, headers: dict[str, str]) -> None:
    response = post(client, headers, "invoke-with-response-stream", invoke_body(), accept="*/*")
    events = [json.loads(payload) for payload in text_payloads(response)]
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"]
    assert [e["type"] for e in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == answer_text(MODEL, "Hello there")


def test_converse_stream_as_event_stream(client: Client, headers: dict[str, str]) -> None:
    response = post(client, headers, "converse-stream", converse_body())
    assert all(h[":content-type"] == "application/json" for h, _ in frames(response))
    events = converse_events(response)
    text = answer_text(MODEL, "Hello there")
    assert events[0] == {"messageStart": {"role": "assistant"}}
    deltas = [e["contentBlockDelta"] for e in events[1:-3]]
    assert all(d["contentBlockIndex"] == 0 for d in deltas)
    assert "".join(d["delta"]["text"] for d in deltas) == text
    assert events[-3:-1] == [{"contentBlockStop": {"contentBlockIndex": 0}},
                             {"messageStop": {"stopReason": "end_turn"}}]
    metadata = events[-1]["metadata"]
    output = count_tokens(text)
    assert metadata["usage"] == {"inputTokens": 2, "outputTokens": output, "totalTokens": 2 + output}
    assert metadata["metrics"]["latencyMs"] >= 1


def test_converse_stream_as_text_is_python_repr(client: Client, headers: dict[str, str]) -> None:
    client.post("/_sim/settings", json={"chunks": 2})
    payloads = text_payloads(post(client, headers, "converse-stream", converse_body(), accept="*/*"))
    assert payloads[0] == "{'messageStart': {'role': 'assistant'}}"
    events = [ast.literal_eval(payload) for payload in payloads]
    assert all(len(event) == 1 for event in events)
    assert [next(iter(e)) for e in events] == ["messageStart", "contentBlockDelta", "contentBlockDelta",
                                               "contentBlockStop", "messageStop", "metadata"]
    assert payloads[1] == repr(events[1]) and payloads[1].startswith("{'contentBlockDelta': {'delta': {'text': ")
    with pytest.raises(json.JSONDecodeError):
        json.loads(payloads[1])


def test_unknown_operation_and_counters(client: Client, headers: dict[str, str], state: SimState) -> None:
    response = post(client, headers, "chat/completions", {})
    assert response.status_code == 404 and response.get_json()["__type"] == "UnknownOperationException"
    for op in ("invoke", "invoke-with-response-stream"):
        post(client, headers, op, invoke_body()).close()
    post(client, headers, "converse-stream", converse_body()).close()
    by_path = state.stats()["requests_by_path"]
    assert {k: by_path[k] for k in ("invoke", "invoke_stream", "converse_stream")} == {  # type: ignore[index]
        "invoke": 1, "invoke_stream": 1, "converse_stream": 1}


def test_write_config_lists_claude(state: SimState) -> None:
    models = proxy_config("http://127.0.0.1:1", state.deployments)["subAccounts"]["sim"]["deployment_models"]  # type: ignore[index]
    assert models[MODEL] == [f"http://127.0.0.1:1{BASE}"]
    assert "gemini-2.5-flash" not in models


# -- scenarios -------------------------------------------------------------------------------
def test_invoke_tool_use_then_result(client: Client, headers: dict[str, str]) -> None:
    asked = {"role": "user", "content": [{"type": "text", "text": "Use get_weather for Paris"}]}
    first = post(client, headers, "invoke", invoke_body(asked, tools=[WEATHER])).get_json()
    assert first["stop_reason"] == "tool_use"
    intro, call = first["content"]
    assert intro == {"type": "text", "text": "I'll use get_weather."}
    assert re.fullmatch(r"toolu_bdrk_[0-9a-f]{24}", call["id"])
    assert call == {"type": "tool_use", "id": call["id"], "name": "get_weather", "input": {"city": "sim"}}
    assert first["usage"]["output_tokens"] == count_tokens("I'll use get_weather.") + count_tokens('{"city": "sim"}')
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                           "content": [{"type": "text", "text": "x" * 100}]}]}
    second = post(client, headers, "invoke", invoke_body(asked, {"role": "assistant", "content": first["content"]},
                                                         result, tools=[WEATHER])).get_json()
    assert second["content"] == [{"type": "text", "text": "Tool get_weather returned: " + "x" * 80}]
    assert second["stop_reason"] == "end_turn"


def test_invoke_tool_choice(client: Client, headers: dict[str, str]) -> None:
    other = {"name": "lookup", "input_schema": {"type": "object", "properties": {
        "kind": {"type": "string", "enum": ["a", "b"]}, "n": {"type": "number"}, "ok": {"type": "boolean"},
        "tags": {"type": "array"}, "meta": {"type": "object"}, "maybe": {"type": ["null", "integer"]}, "any": {}}}}
    named = post(client, headers, "invoke", invoke_body(tools=[WEATHER, other],
                                                        tool_choice={"type": "tool", "name": "lookup"})).get_json()
    assert named["content"][1]["name"] == "lookup"
    assert named["content"][1]["input"] == {"kind": "a", "n": 1.5, "ok": True, "tags": [], "meta": {}, "maybe": 1,
                                            "any": "sim"}
    forced = post(client, headers, "invoke", invoke_body(tools=[WEATHER, other], tool_choice={"type": "any"}))
    assert forced.get_json()["content"][1]["name"] == "get_weather"
    mentioned = {"role": "user", "content": "then LOOKUP the rest"}
    forced = post(client, headers, "invoke", invoke_body(mentioned, tools=[WEATHER, other],
                                                         tool_choice={"type": "any"}))
    assert forced.get_json()["content"][1]["name"] == "lookup"
    named = post(client, headers, "invoke", invoke_body(mentioned, tools=[WEATHER, other],
                                                        tool_choice={"type": "tool", "name": "get_weather"}))
    assert named.get_json()["content"][1]["name"] == "get_weather"
    none = post(client, headers, "invoke", invoke_body(mentioned, tools=[WEATHER, other],
                                                       tool_choice={"type": "none"})).get_json()
    assert none["content"] == [{"type": "text", "text": answer_text(MODEL, "then LOOKUP the rest")}]


def test_invoke_tools_declared_but_not_mentioned_answer_text(client: Client, headers: dict[str, str]) -> None:
    other = {"name": "lookup", "input_schema": {"type": "object"}}
    for choice in (None, {"type": "auto"}):
        extra = {} if choice is None else {"tool_choice": choice}
        answer = post(client, headers, "invoke", invoke_body(tools=[WEATHER, other], **extra)).get_json()
        assert answer["content"] == [{"type": "text", "text": answer_text(MODEL, "Hello there")}]
        assert answer["stop_reason"] == "end_turn"
    # Only a whole word counts, and Claude Code's <system-reminder> spans are not searched.
    near = {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>use the lookup tool</system-reminder>"},
        {"type": "text", "text": "get_weathers lookups my-lookup get weather"}]}
    answer = post(client, headers, "invoke", invoke_body(near, tools=[WEATHER, other])).get_json()
    assert answer["stop_reason"] == "end_turn" and [b["type"] for b in answer["content"]] == ["text"]


def test_invoke_mentioned_tool_is_called(client: Client, headers: dict[str, str]) -> None:
    bash = {"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}
    # The first declared tool that is mentioned, wherever the mention is.
    for said, name in [("run bash to list files", "Bash"), ("Use GET_WEATHER for Paris", "get_weather"),
                       ("get_weather, then BASH.", "Bash")]:
        asked = {"role": "user", "content": [{"type": "text", "text": "Hi."}, {"type": "text", "text": said}]}
        answer = post(client, headers, "invoke", invoke_body(asked, tools=[bash, WEATHER])).get_json()
        assert answer["stop_reason"] == "tool_use", said
        assert answer["content"][0] == {"type": "text", "text": f"I'll use {name}."}
        assert answer["content"][1]["name"] == name


def test_invoke_stream_tool_use_fragments(client: Client, headers: dict[str, str]) -> None:
    asked = {"role": "user", "content": "Use get_weather for Paris"}
    events = anthropic_events(post(client, headers, "invoke-with-response-stream",
                                   invoke_body(asked, tools=[WEATHER])))
    start = next(e for e in events if e["type"] == "content_block_start" and e["index"] == 1)
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
    assert re.fullmatch(r"toolu_bdrk_[0-9a-f]{24}", start["content_block"]["id"])
    parts = [e["delta"]["partial_json"] for e in events
             if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"]
    assert len(parts) == 3 and all(parts) and json.loads("".join(parts)) == {"city": "sim"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_invoke_thinking(client: Client, headers: dict[str, str]) -> None:
    said = "Please think about the meaning of life for a while"
    body = invoke_body({"role": "user", "content": said}, thinking={"type": "enabled", "budget_tokens": 1024})
    message = post(client, headers, "invoke", body).get_json()
    thought = f"Thinking about: {said[:40]}"
    thinking, text = message["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == thought
    assert base64.b64decode(thinking["signature"]) and text["text"] == answer_text(MODEL, said)
    assert message["usage"]["output_tokens"] == count_tokens(thought) + count_tokens(text["text"])
    events = anthropic_events(post(client, headers, "invoke-with-response-stream", body))
    assert events[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta" and e["index"] == 0]
    assert "".join(d.get("thinking", "") for d in deltas) == thought
    assert deltas[-1] == {"type": "signature_delta", "signature": thinking["signature"]}


def test_max_tokens_and_stop_sequences(client: Client, headers: dict[str, str]) -> None:
    short = post(client, headers, "invoke", invoke_body(max_tokens=3)).get_json()
    assert short["content"][0]["text"] == "Hello! This is" and short["stop_reason"] == "max_tokens"
    assert short["usage"]["output_tokens"] == 3
    stopped = post(client, headers, "invoke", invoke_body(stop_sequences=["zzz", "SAP"])).get_json()
    assert stopped["content"][0]["text"] == f"Hello! This is {MODEL} on the "
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "SAP")
    converse = post(client, headers, "converse", converse_body(inferenceConfig={"maxTokens": 2})).get_json()
    assert converse["output"]["message"]["content"] == [{"text": "Hello! This"}]
    assert converse["stopReason"] == "max_tokens"
    events = converse_events(post(client, headers, "converse-stream",
                                  converse_body(inferenceConfig={"stopSequences": ["This"]})))
    assert events[-2] == {"messageStop": {"stopReason": "stop_sequence"}}


def test_converse_tool_use_stream_and_result(client: Client, headers: dict[str, str]) -> None:
    asked = {"role": "user", "content": [{"text": "Weather?"}]}
    events = converse_events(post(client, headers, "converse-stream", converse_body(asked, toolConfig={
        **CONVERSE_TOOLS, "toolChoice": {"tool": {"name": "get_weather"}}})))
    names = [next(iter(e)) for e in events]
    assert names == ["messageStart", *["contentBlockDelta"] * 3, "contentBlockStop", "contentBlockStart",
                     *["contentBlockDelta"] * 3, "contentBlockStop", "messageStop", "metadata"]
    start = events[5]["contentBlockStart"]
    tool_id = start["start"]["toolUse"]["toolUseId"]
    assert re.fullmatch(r"tooluse_[0-9a-f]{24}", tool_id) and start["contentBlockIndex"] == 1
    assert start["start"]["toolUse"]["name"] == "get_weather"
    fragments = [e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events[6:9]]
    assert json.loads("".join(fragments)) == {"city": "sim"}
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}

    called = {"role": "assistant", "content": [{"text": "I'll use get_weather."},
                                               {"toolUse": {"toolUseId": tool_id, "name": "get_weather",
                                                            "input": {"city": "sim"}}}]}
    result = {"role": "user", "content": [{"toolResult": {"toolUseId": tool_id, "content": [{"json": {"t": 21}}],
                                                          "status": "success"}}]}
    answer = post(client, headers, "converse", converse_body(asked, called, result, toolConfig=CONVERSE_TOOLS))
    assert answer.get_json()["output"]["message"]["content"] == [{"text": 'Tool get_weather returned: {"t":21}'}]
    assert answer.get_json()["stopReason"] == "end_turn"


def test_converse_tool_rule(client: Client, headers: dict[str, str]) -> None:
    lookup = {"toolSpec": {"name": "lookup", "inputSchema": {"json": {"type": "object"}}}}
    tools = {"tools": [*CONVERSE_TOOLS["tools"], lookup]}

    def called(said: str, **choice: Any) -> str | None:
        asked = {"role": "user", "content": [{"text": said}]}
        config = {**tools, "toolChoice": choice} if choice else tools
        answer = post(client, headers, "converse", converse_body(asked, toolConfig=config)).get_json()
        blocks = answer["output"]["message"]["content"]
        if answer["stopReason"] != "tool_use":
            assert blocks == [{"text": answer_text(MODEL, said)}] and answer["stopReason"] == "end_turn"
            return None
        assert blocks[0] == {"text": f"I'll use {blocks[1]['toolUse']['name']}."}
        return str(blocks[1]["toolUse"]["name"])

    assert called("Weather in Paris?") is None
    assert called("Weather in Paris?", auto={}) is None
    assert called("Use get_weather for Paris") == "get_weather"
    assert called("Lookup then get_weather") == "get_weather"
    assert called("Lookup please", auto={}) == "lookup"
    assert called("Weather in Paris?", any={}) == "get_weather"
    assert called("Lookup please", any={}) == "lookup"
    assert called("Weather in Paris?", tool={"name": "lookup"}) == "lookup"
    assert called("Use get_weather", tool={"name": "lookup"}) == "lookup"
    events = converse_events(post(client, headers, "converse-stream", converse_body(
        {"role": "user", "content": [{"text": "Weather in Paris?"}]}, toolConfig=tools)))
    assert [next(iter(e)) for e in events].count("contentBlockStart") == 0
    assert events[-2] == {"messageStop": {"stopReason": "end_turn"}}


def test_converse_thinking_is_reasoning_content(client: Client, headers: dict[str, str]) -> None:
    body = converse_body(inferenceConfig={"maxTokens": 4000},
                         additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 2000}})
    content = post(client, headers, "converse", body).get_json()["output"]["message"]["content"]
    reasoning = content[0]["reasoningContent"]["reasoningText"]
    assert reasoning["text"] == "Thinking about: Hello there" and reasoning["signature"]
    assert content[1] == {"text": answer_text(MODEL, "Hello there")}
    events = converse_events(post(client, headers, "converse-stream", body))
    deltas = [e["contentBlockDelta"]["delta"]["reasoningContent"] for e in events
              if e.get("contentBlockDelta", {}).get("contentBlockIndex") == 0]
    assert "".join(d.get("text", "") for d in deltas) == reasoning["text"]
    assert deltas[-1] == {"signature": reasoning["signature"]}


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["model", "stream", "metadata", "context_management"])
def test_invoke_rejects_extraneous_keys(client: Client, headers: dict[str, str], field: str) -> None:
    response = post(client, headers, "invoke", invoke_body(**{field: True}))
    assert rejected(response) == (f"Malformed input request: #: extraneous key [{field}] is not permitted, "
                                  "please reformat your input and try again.")


@pytest.mark.parametrize(("change", "needle"), [
    ({"anthropic_version": None}, "required key [anthropic_version] not found"),
    ({"max_tokens": None}, "required key [max_tokens] not found"),
    ({"anthropic_version": "2023-06-01"}, "#/anthropic_version"),
    ({"max_tokens": 0}, "#/max_tokens"),
    ({"max_tokens": True}, "#/max_tokens"),
    ({"temperature": 2}, "#/temperature"),
    ({"top_k": 1.5}, "#/top_k"),
    ({"stop_sequences": "x"}, "#/stop_sequences"),
    ({"system": 5}, "system"),
    ({"messages": []}, "at least one message"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, 'first message must use the "user" role'),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "roles must alternate"),
    ({"messages": [{"role": "system", "content": "a"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "a", "name": "x"}]}, "messages.0.name: Extra inputs"),
    ({"messages": [{"role": "user", "content": ""}]}, "non-empty content"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "Input tag 'audio'"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text.text"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "url", "url": "https://example.com/a.png"}}]}]}, "Input tag 'url'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/bmp", "data": PNG}}]}]}, "media_type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "not base64!"}}]}]}, "base64"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x"}]}]},
     "unexpected `tool_use_id`"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
     "only allowed in assistant"),
    ({"tools": [{"name": "f"}]}, "input_schema"),
    ({"tool_choice": {"type": "any"}}, "tool_choice may only be specified while providing tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "'nope' not found"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1000}}, "greater than or equal to 1024"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "`max_tokens` must be greater"),
    ({"max_tokens": 4000, "temperature": 0.5, "thinking": {"type": "enabled", "budget_tokens": 2000}},
     "`temperature` may only be set to 1"),
    ({"max_tokens": 4000, "tools": [WEATHER], "tool_choice": {"type": "any"},
      "thinking": {"type": "enabled", "budget_tokens": 2000}}, "forces tool use"),
    ({"thinking": {"type": "sometimes"}}, "thinking.type"),
])
def test_invoke_validation(client: Client, headers: dict[str, str], change: dict[str, Any], needle: str) -> None:
    body = {k: v for k, v in {**invoke_body(), **change}.items() if v is not None}
    for op in ("invoke", "invoke-with-response-stream"):
        rejected(post(client, headers, op, body), needle)


def test_invoke_accepts_the_whole_allow_list(client: Client, headers: dict[str, str]) -> None:
    turns = [
        {"role": "user", "content": [{"type": "text", "text": "Look", "cache_control": {"type": "ephemeral"}},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": PNG}},
                                     {"type": "document", "source": {"type": "text", "data": "doc"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "c2ln"},
                                          {"type": "redacted_thinking", "data": "xyz"},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True}]},
        {"role": "assistant", "content": ""},
    ]
    body = invoke_body(*turns, anthropic_beta=["interleaved-thinking-2025-05-14"], system=[{"type": "text",
                       "text": "sys"}], temperature=1, top_p=0.9, top_k=5, stop_sequences=["\n\nHuman:"],
                       tools=[WEATHER], tool_choice={"type": "auto"}, thinking={"type": "disabled"})
    response = post(client, headers, "invoke", body)
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]"])
def test_non_object_bodies(client: Client, headers: dict[str, str], raw: bytes) -> None:
    for op in ("invoke", "converse"):
        response = client.post(f"{BASE}/{op}", data=raw, headers=headers)
        rejected(response)


@pytest.mark.parametrize(("change", "needle"), [
    ({"modelId": "x", "stream": True}, "unknown field(s): modelId, stream"),
    ({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}, "must start with a user message"),
    ({"messages": [{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}]},
     "A conversation must alternate between user and assistant roles"),
    ({"messages": []}, "must start with a user message"),
    ({"messages": [{"role": "user", "content": []}]}, "is empty"),
    ({"messages": [{"role": "user", "content": [{"audio": {}}]}]}, "must set exactly one of"),
    ({"messages": [{"role": "user", "content": [{"text": "a", "image": {}}]}]}, "must set exactly one of"),
    ({"messages": [{"role": "user", "content": [{"image": {"format": "bmp", "source": {"bytes": PNG}}}]}]},
     "format"),
    ({"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "%%%"}}}]}]},
     "not valid base64"),
    ({"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {
        "s3Location": {"uri": "s3://b/k"}}}}]}]}, "must set bytes"),
    ({"messages": [{"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "r"}]}}]}],
      "toolConfig": CONVERSE_TOOLS}, "does not match a toolUse"),
    ({"messages": [{"role": "user", "content": [{"text": "a"}]}, {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}]}]}, "toolConfig field must be defined"),
    ({"inferenceConfig": {"max_tokens": 5}}, "unknown field max_tokens"),
    ({"inferenceConfig": {"maxTokens": 0}}, "maxTokens"),
    ({"inferenceConfig": {"temperature": 3}}, "temperature"),
    ({"toolConfig": {"tools": []}}, "toolConfig.tools"),
    ({"toolConfig": {"tools": [{"toolSpec": {"name": "bad name", "inputSchema": {"json": {}}}}]}}, "pattern"),
    ({"toolConfig": {**CONVERSE_TOOLS, "toolChoice": {"tool": {"name": "nope"}}}}, "'nope'"),
    ({"toolConfig": {**CONVERSE_TOOLS, "toolChoice": {"none": {}}}}, "toolChoice"),
    ({"system": "be brief"}, "system"),
    ({"additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 512}}}, "1024"),
    ({"inferenceConfig": {"maxTokens": 1500},
      "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 2000}}}, "max_tokens"),
    ({"inferenceConfig": {"temperature": 0.2},
      "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 2000}}}, "temperature"),
])
def test_converse_validation(client: Client, headers: dict[str, str], change: dict[str, Any], needle: str) -> None:
    body = {**converse_body(), **change}
    for op in ("converse", "converse-stream"):
        rejected(post(client, headers, op, body), needle)


def test_converse_accepts_the_whole_allow_list(client: Client, headers: dict[str, str]) -> None:
    turns = [
        {"role": "user", "content": [{"text": "Look"}, {"image": {"format": "webp", "source": {"bytes": PNG}}},
                                     {"cachePoint": {"type": "default"}}]},
        {"role": "assistant", "content": [{"reasoningContent": {"reasoningText": {"text": "hm", "signature": "s"}}},
                                          {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "status": "error",
                                                     "content": [{"text": "failed"}]}}]},
    ]
    body = converse_body(*turns, system=[{"text": "sys"}], inferenceConfig={"maxTokens": 100, "stopSequences": []},
                         toolConfig={**CONVERSE_TOOLS, "toolChoice": {"auto": {}}},
                         additionalModelRequestFields={"top_k": 5},
                         additionalModelResponseFieldPaths=["/stop_sequence"],
                         guardrailConfig={}, promptVariables={}, requestMetadata={"k": "v"},
                         performanceConfig={"latency": "standard"})
    response = post(client, headers, "converse", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["output"]["message"]["content"] == [{"text": "Tool get_weather returned: failed"}]


# -- faults ----------------------------------------------------------------------------------
def test_status_faults_in_bedrock_shape(client: Client, headers: dict[str, str]) -> None:
    add_faults(client, {"kind": "status", "status": 429}, {"kind": "status", "status": 500},
               {"kind": "status", "status": 503}, {"kind": "status", "status": 418, "body": {"own": 1}})
    limited = post(client, headers, "invoke", invoke_body())
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.get_json() == {"message": "Too many requests, please wait before trying again."}
    failed = post(client, headers, "converse", converse_body())
    assert failed.status_code == 500 and failed.get_json()["__type"] == "InternalServerException"
    unavailable = post(client, headers, "converse-stream", converse_body())
    assert unavailable.status_code == 503 and unavailable.get_json()["__type"] == "ServiceUnavailableException"
    own = post(client, headers, "invoke", invoke_body())
    assert (own.status_code, own.get_json()) == (418, {"own": 1})


@pytest.mark.parametrize(("status", "kind"), [(429, "throttlingException"), (400, "validationException"),
                                              (503, "serviceUnavailableException"),
                                              (500, "modelStreamErrorException")])
def test_mid_stream_status_is_an_exception_frame(client: Client, headers: dict[str, str], state: SimState,
                                                 status: int, kind: str) -> None:
    add_faults(client, {"kind": "status", "status": status, "after_chunks": 2})
    received = frames(post(client, headers, "converse-stream", converse_body()))
    assert [h[":message-type"] for h, _ in received] == ["event", "event", "exception"]
    exception_headers, payload = received[-1]
    assert exception_headers[":exception-type"] == kind
    assert json.loads(payload) == {"message": f"Simulated stream failure (HTTP {status})"}
    assert state.stats()["streams_completed"] == 1


def test_mid_stream_status_message_and_short_streams(client: Client, headers: dict[str, str]) -> None:
    add_faults(client, {"kind": "status", "after_chunks": 1, "body": "boom"},
               {"kind": "status", "after_chunks": 99, "body": {"message": "late"}})
    first = frames(post(client, headers, "invoke-with-response-stream", invoke_body()))
    assert len(first) == 2 and json.loads(first[1][1]) == {"message": "boom"}
    late = frames(post(client, headers, "converse-stream", converse_body()))
    assert late[-2][0][":event-type"] == "metadata" and json.loads(late[-1][1]) == {"message": "late"}


def test_mid_stream_status_in_text_framing_answers_before_the_stream(client: Client, headers: dict[str, str]) -> None:
    add_faults(client, {"kind": "status", "status": 429, "after_chunks": 2})
    response = post(client, headers, "converse-stream", converse_body(), accept="*/*")
    assert response.status_code == 429 and response.get_json()["message"]
    add_faults(client, {"kind": "status", "status": 429, "after_chunks": 2})
    response = post(client, headers, "converse", converse_body())
    assert response.status_code == 429, "non-stream calls answer the status up front"


@pytest.mark.parametrize("accept", [EVENTSTREAM, "*/*"])
def test_reset_and_stall_mid_stream(client: Client, headers: dict[str, str], state: SimState, accept: str) -> None:
    add_faults(client, {"kind": "reset", "after_chunks": 3}, {"kind": "stall", "seconds": 0.3, "after_chunks": 2})
    response = post(client, headers, "converse-stream", converse_body(), accept=accept, buffered=False)
    stream = body_iter(response)
    received = [next(stream) for _ in range(3)]
    assert all(received)
    with pytest.raises(ConnectionResetError):
        next(stream)
    response.close()
    assert state.stats()["streams_reset"] == 1

    stalled = post(client, headers, "invoke-with-response-stream", invoke_body(), accept=accept, buffered=False)
    stream = body_iter(stalled)
    gaps = []
    for _ in range(4):
        started = time.monotonic()
        next(stream)
        gaps.append(time.monotonic() - started)
    stalled.close()
    assert gaps[2] >= 0.3 and max(gaps[:2] + gaps[3:]) < 0.25


def test_reset_before_a_non_stream_answer_and_pacing(client: Client, headers: dict[str, str]) -> None:
    add_faults(client, {"kind": "reset"})
    with pytest.raises(ConnectionResetError):
        post(client, headers, "invoke", invoke_body())
    client.post("/_sim/settings", json={"chunk_delay_ms": 20, "chunks": 3})
    started = time.monotonic()
    events = converse_events(post(client, headers, "converse-stream", converse_body()))
    assert len(events) == 7 and time.monotonic() - started >= 6 * 0.02


def test_eventstream_header_limits() -> None:
    with pytest.raises(ValueError):
        encode_message({"x" * 256: "v"}, b"")
    assert len(encode_message({}, b"")) == 16
