"""Claude through both faces, with the official SDKs, against real gunicorn+gevent and the simulator.

The simulator's Bedrock dialect is strict like Bedrock (unknown top-level fields are a 400), so
every success here also proves the proxy's translation and sanitizing. Its scenarios are
deterministic: the model calls a tool only when the prompt names it (or the tool choice forces one),
with input built from the schema; after a tool result it answers ``Tool <name> returned: ...``; with
thinking enabled a thinking block comes first.
"""

from __future__ import annotations

import base64
import json
import typing as t

import anthropic
import openai
import pytest
from _stack import DEFAULT_KEY, Server, Sim, http_request

pytestmark = [
    pytest.mark.integration,
    # The SDK warns that the Anthropic ids clients still send are deprecated; that is the point of the aliases.
    pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning"),
]

CLAUDE = "anthropic--claude-4.5-sonnet"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                     "required": ["city", "days"]},
}
# A 1×1 PNG.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


@pytest.fixture(autouse=True)
def clean_sim(sim: Sim) -> t.Iterator[None]:
    sim.reset()
    sim.control("/_sim/settings", {"chunk_delay_ms": 0})
    yield
    sim.reset()


def claude(proxy: Server, key: str = DEFAULT_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0, timeout=30)


def gpt(proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=DEFAULT_KEY, max_retries=0, timeout=30)


# ------------------------------------------------------------------ Anthropic face → invoke


@pytest.mark.parametrize("model", [CLAUDE, "claude-sonnet-4-5", "claude-sonnet-4-5-20250929"])
def test_messages_text(proxy: Server, sim: Sim, model: str) -> None:
    message = claude(proxy).messages.create(
        model=model, max_tokens=200, system="Be brief.", metadata={"user_id": "u-1"},
        messages=[{"role": "user", "content": "Say hello"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.model == model
    assert "Say hello" in message.content[0].text  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    sent = sim.stats()["last_inference"]
    assert sent["path"].endswith("/invoke")
    assert sent["json"]["anthropic_version"] == "bedrock-2023-05-31"
    assert not {"model", "stream", "metadata"} & set(sent["json"])


def test_messages_stream(proxy: Server, sim: Sim) -> None:
    sim.control("/_sim/settings", {"chunk_delay_ms": 5})
    with claude(proxy).messages.stream(model="claude-sonnet-4-5", max_tokens=200,
                                       messages=[{"role": "user", "content": "Stream please"}]) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and "content_block_delta" in events and events[-1] == "message_stop"
    assert "Stream please" in final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert sim.stats()["last_inference"]["path"].endswith("/invoke-with-response-stream")


def test_messages_stream_wire_format(proxy: Server) -> None:
    body = {"model": CLAUDE, "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    status, headers, raw = http_request(proxy.url, "POST", "/v1/messages?beta=true", body,
                                        headers={"x-api-key": DEFAULT_KEY, "anthropic-version": "2023-06-01",
                                                 "anthropic-beta": "claude-code-20250219"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in raw.decode().split("\n\n") if b.strip()]
    names = [b.split("\n")[0] for b in blocks]
    assert names[0] == "event: message_start" and names[-1] == "event: message_stop"
    assert all(b.split("\n")[1].startswith("data: {") for b in blocks)
    assert b"[DONE]" not in raw


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_round_trip(proxy: Server, stream: bool) -> None:
    c = claude(proxy)
    question = [{"role": "user", "content": "Use get_weather for Paris"}]
    if stream:
        with c.messages.stream(model=CLAUDE, max_tokens=300, tools=[WEATHER], messages=question) as s:
            first = s.get_final_message()
    else:
        first = c.messages.create(model=CLAUDE, max_tokens=300, tools=[WEATHER], messages=question)
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "sim", "days": 1}
    answer = c.messages.create(model=CLAUDE, max_tokens=300, tools=[WEATHER], messages=[
        *question,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}]},
    ])
    assert answer.stop_reason == "end_turn"
    assert "18 C, sunny" in answer.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("stream", [False, True])
def test_declared_tools_alone_get_a_text_answer(proxy: Server, stream: bool) -> None:
    # Claude Code declares a dozen tools (``Agent`` first) on every request; "say hi" must not call one.
    tools = [{"name": name, "description": name, "input_schema": {"type": "object", "properties": {
        "prompt": {"type": "string"}}, "required": ["prompt"]}} for name in ("Agent", "Bash", "Read", "TodoWrite")]
    question = [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>Please use the TodoWrite tool to plan.</system-reminder>"},
        {"type": "text", "text": "say hi"}]}]
    c = claude(proxy)
    if stream:
        with c.messages.stream(model=CLAUDE, max_tokens=300, tools=tools, messages=question) as s:
            message = s.get_final_message()
    else:
        message = c.messages.create(model=CLAUDE, max_tokens=300, tools=tools, messages=question)
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text  # type: ignore[union-attr]


def test_thinking(proxy: Server) -> None:
    message = claude(proxy).messages.create(
        model=CLAUDE, max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000},
        messages=[{"role": "user", "content": "Think first"}])
    assert [block.type for block in message.content][:2] == ["thinking", "text"]
    assert message.content[0].thinking  # type: ignore[union-attr]


def test_count_tokens(proxy: Server, sim: Sim) -> None:
    before = sim.stats()["inference_requests"]
    counted = claude(proxy).messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "How many tokens is this?"}], tools=[WEATHER])
    assert counted.input_tokens > 0
    assert sim.stats()["inference_requests"] == before  # estimated locally, nothing sent upstream


def test_anthropic_error_classes(proxy: Server, sim: Sim) -> None:
    with pytest.raises(anthropic.NotFoundError) as not_found:
        claude(proxy).messages.create(model="claude-nope-9", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert not_found.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        claude(proxy, key="sk-wrong-key-0000").messages.create(model=CLAUDE, max_tokens=10,
                                                               messages=[{"role": "user", "content": "x"}])
    sim.control("/_sim/faults", {"faults": [{"kind": "status", "status": 429, "retry_after": 4}]})
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude(proxy).messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "4"
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude(proxy).messages.create(model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert "not a Claude model" in str(bad.value)


def test_claude_code_probes(proxy: Server) -> None:
    assert http_request(proxy.url, "HEAD", "/").status == 200
    assert http_request(proxy.url, "GET", "/").status == 200
    status, _, body = http_request(proxy.url, "POST", "/api/event_logging/batch", {"events": [{"x": 1}]})
    assert status == 200 and json.loads(body) == {}


# ------------------------------------------------------------------ OpenAI face → converse


def test_chat_text_with_usage(proxy: Server, sim: Sim) -> None:
    completion = gpt(proxy).chat.completions.create(
        model="claude-sonnet-4-5", max_tokens=100,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello Claude"}])
    assert "Hello Claude" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "claude-sonnet-4-5"
    assert completion.usage and completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    sent = sim.stats()["last_inference"]
    assert sent["path"].endswith("/converse")
    assert sent["json"]["system"] == [{"text": "Be brief."}]
    assert sent["json"]["inferenceConfig"]["maxTokens"] == 100


def test_chat_stream_with_usage(proxy: Server, sim: Sim) -> None:
    sim.control("/_sim/settings", {"chunk_delay_ms": 5})
    chunks = list(gpt(proxy).chat.completions.create(
        model=CLAUDE, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Stream it"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Stream it" in text
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens > 0
    assert sim.stats()["last_inference"]["path"].endswith("/converse-stream")


def test_chat_streaming_tool_call_accumulates_to_valid_json(proxy: Server) -> None:
    tool = {"type": "function", "function": {"name": WEATHER["name"], "description": WEATHER["description"],
                                             "parameters": WEATHER["input_schema"]}}
    with gpt(proxy).chat.completions.stream(model=CLAUDE, tools=[tool],  # type: ignore[list-item]
                                            messages=[{"role": "user", "content": "Use get_weather"}]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "sim", "days": 1}  # type: ignore[union-attr]
    follow_up = gpt(proxy).chat.completions.create(model=CLAUDE, tools=[tool], messages=[  # type: ignore[list-item]
        {"role": "user", "content": "Use get_weather"},
        choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": calls[0].id, "content": "18 C, sunny"},
    ])
    assert "18 C, sunny" in (follow_up.choices[0].message.content or "")


def test_chat_image_input(proxy: Server, sim: Sim) -> None:
    completion = gpt(proxy).chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    assert completion.choices[0].message.content
    image = sim.stats()["last_inference"]["json"]["messages"][0]["content"][1]["image"]
    assert image == {"format": "png", "source": {"bytes": PNG}}
    with pytest.raises(openai.BadRequestError) as bad:
        gpt(proxy).chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert bad.value.status_code == 400


def test_chat_reasoning_effort_shows_reasoning(proxy: Server) -> None:
    completion = gpt(proxy).chat.completions.create(model=CLAUDE, reasoning_effort="low",
                                                    messages=[{"role": "user", "content": "Think"}])
    message = completion.choices[0].message
    assert getattr(message, "reasoning_content", None)
    assert message.content


def test_adaptive_thinking_with_a_sap_id(proxy: Server, sim: Sim) -> None:
    """Claude Code sends adaptive thinking for SAP ids; Claude 4.5 on Bedrock only knows a budget."""
    message = claude(proxy).messages.create(
        model=CLAUDE, max_tokens=32000, thinking={"type": "adaptive"},  # type: ignore[typeddict-item]
        messages=[{"role": "user", "content": "Think first"}])
    assert [block.type for block in message.content][:2] == ["thinking", "text"]
    assert sim.stats()["last_inference"]["json"]["thinking"] == {"type": "enabled", "budget_tokens": 31999}
