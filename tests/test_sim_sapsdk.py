"""SAP's own SDK (``sap-ai-sdk-gen[amazon]``, boto3 underneath) against a real SimServer on loopback.

This is the proof that the Bedrock dialect speaks the wire protocol clients parse: boto3
decodes the JSON answers and the binary event-streams, and raises ``EventStreamError``
for an exception frame.  The SDK's credentials come from keyword arguments; HOME,
AICORE_HOME and every AICORE_/AWS_ variable are isolated so no user configuration or
network beyond 127.0.0.1 is involved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from wsgiproxy.sim import SimServer
from wsgiproxy.sim.faults import Fault
from wsgiproxy.sim.text import answer_text, count_tokens

pytest.importorskip("gen_ai_hub.proxy.native.amazon.clients")
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError, EventStreamError  # noqa: E402
from gen_ai_hub.proxy.gen_ai_hub_proxy.client import GenAIHubProxyClient  # noqa: E402
from gen_ai_hub.proxy.native.amazon.clients import Session  # noqa: E402

pytestmark = pytest.mark.integration

MODEL = "anthropic--claude-4.5-sonnet"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city"]}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch, SimServer() as server:
        for name in list(os.environ):
            if name.startswith(("AICORE_", "AWS_", "VCAP_")) or name.lower() in ("http_proxy", "https_proxy",
                                                                                 "all_proxy"):
                patch.delenv(name)
        patch.setenv("HOME", str(home))
        patch.setenv("AICORE_HOME", str(home / "aicore"))
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield server
    GenAIHubProxyClient.clear_cache()


@pytest.fixture(scope="module")
def bedrock(sim: SimServer) -> Any:
    proxy = GenAIHubProxyClient(
        base_url=sim.url + "/v2", auth_url=sim.url + "/oauth/token", client_id=sim.client_id,
        client_secret=sim.client_secret, resource_group="default",
    )
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10)
    return Session().client(model_name=MODEL, proxy_client=proxy, config=config)


@pytest.fixture(autouse=True)
def fresh(sim: SimServer) -> None:
    sim.state.reset()


def invoke_body(text: str, **extra: Any) -> str:
    return json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 2000,
                       "messages": [{"role": "user", "content": text}], **extra})


def test_converse(bedrock: Any, sim: SimServer) -> None:
    response = bedrock.converse(messages=[{"role": "user", "content": [{"text": "Hi there"}]}])
    assert response["output"]["message"]["content"] == [{"text": answer_text(MODEL, "Hi there")}]
    assert response["stopReason"] == "end_turn"
    assert response["usage"]["inputTokens"] == 2 and response["usage"]["outputTokens"] == 14
    seen = sim.state.stats()
    assert seen["requests_by_path"]["converse"] == 1  # type: ignore[index]


def test_converse_tool_use_and_result(bedrock: Any) -> None:
    tools = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": WEATHER}}}]}
    asked = [{"role": "user", "content": [{"text": "Use get_weather for Paris"}]}]
    first = bedrock.converse(messages=asked, toolConfig=tools)
    assert first["stopReason"] == "tool_use"
    text, call = first["output"]["message"]["content"]
    assert text == {"text": "I'll use get_weather."}
    assert call["toolUse"]["name"] == "get_weather" and call["toolUse"]["input"] == {"city": "sim"}
    assert call["toolUse"]["toolUseId"].startswith("tooluse_")
    result = {"toolResult": {"toolUseId": call["toolUse"]["toolUseId"], "content": [{"text": "sunny, 21 C"}]}}
    second = bedrock.converse(toolConfig=tools, messages=[
        *asked, first["output"]["message"], {"role": "user", "content": [result]}])
    assert second["output"]["message"]["content"] == [{"text": "Tool get_weather returned: sunny, 21 C"}]
    assert second["stopReason"] == "end_turn"


def test_converse_stream_with_tool_call(bedrock: Any) -> None:
    tools = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": WEATHER}}}],
             "toolChoice": {"any": {}}}
    response = bedrock.converse_stream(messages=[{"role": "user", "content": [{"text": "Weather?"}]}],
                                       toolConfig=tools)
    events = list(response["stream"])
    names = [next(iter(event)) for event in events]
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e)
    assert text == "I'll use get_weather."
    start = next(e["contentBlockStart"] for e in events if "contentBlockStart" in e)
    assert start["start"]["toolUse"]["name"] == "get_weather" and start["contentBlockIndex"] == 1
    fragments = [e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
                 if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {})]
    assert len(fragments) == 3 and json.loads("".join(fragments)) == {"city": "sim"}
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"
    assert events[-1]["metadata"]["usage"]["totalTokens"] == 1 + 5


def test_invoke_model(bedrock: Any) -> None:
    response = bedrock.invoke_model(body=invoke_body("Hello"))
    message = json.loads(response["body"].read())
    assert message["content"] == [{"type": "text", "text": answer_text(MODEL, "Hello")}]
    assert message["id"].startswith("msg_bdrk_") and message["stop_reason"] == "end_turn"
    assert message["usage"] == {"input_tokens": 1, "output_tokens": count_tokens(answer_text(MODEL, "Hello"))}


def test_invoke_model_rejects_extraneous_keys(bedrock: Any) -> None:
    with pytest.raises(ClientError) as caught:
        bedrock.invoke_model(body=invoke_body("Hello", stream=True))
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "extraneous key [stream]" in caught.value.response["Error"]["Message"]


def test_invoke_model_with_response_stream(bedrock: Any) -> None:
    response = bedrock.invoke_model_with_response_stream(
        body=invoke_body("Think", thinking={"type": "enabled", "budget_tokens": 1024}))
    events = [json.loads(part["chunk"]["bytes"]) for part in response["body"]]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    thinking = "".join(e["delta"].get("thinking", "") for e in events if e["type"] == "content_block_delta")
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert thinking == "Thinking about: Think" and text == answer_text(MODEL, "Think")
    output = count_tokens("Thinking about: Think") + count_tokens(answer_text(MODEL, "Think"))
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == output


def test_mid_stream_exception_raises_event_stream_error(bedrock: Any, sim: SimServer) -> None:
    sim.state.add_faults([Fault.parse({"kind": "status", "status": 429, "after_chunks": 2})])
    response = bedrock.converse_stream(messages=[{"role": "user", "content": [{"text": "Hi"}]}])
    seen = []
    with pytest.raises(EventStreamError) as caught:
        for event in response["stream"]:
            seen.append(event)
    assert len(seen) == 2 and caught.value.response["Error"]["Code"] == "throttlingException"

    sim.state.add_faults([Fault.parse({"kind": "status", "after_chunks": 1, "body": {"message": "boom"}})])
    response = bedrock.invoke_model_with_response_stream(body=invoke_body("Hi"))
    with pytest.raises(EventStreamError) as caught:
        list(response["body"])
    assert caught.value.response["Error"] == {"Code": "modelStreamErrorException", "Message": "boom"}


def test_status_fault_before_the_stream_is_a_client_error(bedrock: Any, sim: SimServer) -> None:
    sim.state.add_faults([Fault.parse({"kind": "status", "status": 400})])
    with pytest.raises(ClientError) as caught:
        bedrock.converse_stream(messages=[{"role": "user", "content": [{"text": "Hi"}]}])
    assert caught.value.response["Error"]["Code"] == "ValidationException"
