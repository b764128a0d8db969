"""OpenAI chat ↔ Bedrock Converse: requests, responses, and recorded streams."""

from __future__ import annotations

import json
import random
import typing as t
from pathlib import Path

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from wsgiproxy.dialects.bedrock import EVENTSTREAM
from wsgiproxy.dialects.converse import (
    DEFAULT_MAX_TOKENS,
    EMPTY_TOOL_RESULT,
    THINKING_BUDGETS,
    ConverseChatStream,
    chat_completion,
    converse_request,
    usage_counts,
)
from wsgiproxy.errors import ApiError

FIXTURES = Path(__file__).parent / "fixtures" / "bedrock"
TEXT = "text/event-stream"
USER = {"role": "user", "content": "Hi"}


def request(**body: t.Any) -> dict[str, t.Any]:
    return converse_request({"model": "anthropic--claude-4-sonnet", "messages": [USER], **body})


def rejected(body: dict[str, t.Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        converse_request(body)
    assert info.value.code == 400
    return info.value


# -- request


def test_minimal_request() -> None:
    assert request() == {
        "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
        "inferenceConfig": {"maxTokens": DEFAULT_MAX_TOKENS},
    }
    assert DEFAULT_MAX_TOKENS == 8192


def test_system_and_developer_messages_go_to_system() -> None:
    body = request(
        messages=[
            {"role": "system", "content": "Be brief."},
            USER,
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}, {"type": "text", "text": " "}]},
        ]
    )
    assert body["system"] == [{"text": "Be brief."}, {"text": "Use French."}]
    assert body["messages"] == [{"role": "user", "content": [{"text": "Hi"}]}]


def test_same_role_turns_merge_and_tool_results_join_the_user_turn() -> None:
    body = request(
        messages=[
            {"role": "user", "content": "Weather and time in Paris?"},
            {"role": "user", "content": [{"type": "text", "text": "Please."}]},
            {
                "role": "assistant",
                "content": "Checking.",
                "reasoning_content": "dropped",
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                    {"id": "t2", "type": "function", "function": {"name": "time", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "Sunny"},
            {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "12:00"}]},
            {"role": "user", "content": "Thanks, and tomorrow?"},
        ],
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "Weather and time in Paris?"}, {"text": "Please."}]},
        {
            "role": "assistant",
            "content": [
                {"text": "Checking."},
                {"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "t2", "name": "time", "input": {}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "t1", "content": [{"text": "Sunny"}]}},
                {"toolResult": {"toolUseId": "t2", "content": [{"text": "12:00"}]}},
                {"text": "Thanks, and tomorrow?"},
            ],
        },
    ]


def test_empty_blocks_are_dropped_and_empty_tool_results_filled() -> None:
    body = request(
        messages=[
            USER,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "a", "content": ""},
            {"role": "assistant", "content": None},
            {"role": "user", "content": "   "},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": "a", "name": "f", "input": {}}}],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "a", "content": [{"text": EMPTY_TOOL_RESULT}]}}],
    }
    assert len(body["messages"]) == 3


def test_prefill_loses_trailing_whitespace() -> None:
    body = request(messages=[USER, {"role": "assistant", "content": "{\n  "}])
    assert body["messages"][-1] == {"role": "assistant", "content": [{"text": "{"}]}


def test_images() -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/4AAQ", "detail": "high"}},
        {"type": "image_url", "image_url": "data:image/webp;base64,UklGR"},
    ]
    content = request(messages=[{"role": "user", "content": parts}])["messages"][0]["content"]
    assert content == [
        {"text": "What is this?"},
        {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
        {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}}},
        {"image": {"format": "webp", "source": {"bytes": "UklGR"}}},
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/cat.png", "fetch it and send a data: URL"),
        ("http://example.com/cat.png", "fetch it and send a data: URL"),
        ("data:image/tiff;base64,AAAA", "png, jpeg, gif or webp"),
        ("data:image/png,raw", "png, jpeg, gif or webp"),
        ("data:image/png;base64,", "png, jpeg, gif or webp"),
    ],
)
def test_bad_images_are_400(url: str, expected: str) -> None:
    error = rejected({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})
    assert expected in error.message and error.param == "messages"


def test_cache_control_becomes_a_cache_point() -> None:
    system = [{"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}]
    body = request(messages=[{"role": "system", "content": system}, USER])
    assert body["system"] == [{"text": "Long rules"}, {"cachePoint": {"type": "default"}}]


def test_tools_and_choices() -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "weather", "description": "Weather now", "parameters": {"type": "object"}},
        },
        {"type": "function", "function": {"name": "time"}},
    ]
    specs = [
        {"toolSpec": {"name": "weather", "description": "Weather now", "inputSchema": {"json": {"type": "object"}}}},
        {"toolSpec": {"name": "time", "inputSchema": {"json": {"type": "object", "properties": {}}}}},
    ]
    assert request(tools=tools)["toolConfig"] == {"tools": specs}
    assert request(tools=tools, tool_choice="auto")["toolConfig"]["toolChoice"] == {"auto": {}}
    assert request(tools=tools, tool_choice="required")["toolConfig"]["toolChoice"] == {"any": {}}
    named = {"type": "function", "function": {"name": "time"}}
    assert request(tools=tools, tool_choice=named)["toolConfig"]["toolChoice"] == {"tool": {"name": "time"}}
    assert "toolConfig" not in request(tools=tools, tool_choice="none")
    assert "toolConfig" not in request(tools=[])


def test_tool_choice_none_keeps_tools_when_the_history_uses_them() -> None:
    history = [
        USER,
        {
            "role": "assistant",
            "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "a", "content": "ok"},
    ]
    tools = [{"type": "function", "function": {"name": "f"}}]
    config = request(messages=history, tools=tools, tool_choice="none")["toolConfig"]
    assert config == {
        "tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object", "properties": {}}}}}]
    }
    # no tools declared at all: Bedrock still needs a toolConfig for the history's blocks
    assert request(messages=history)["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]
    }


def test_inference_config() -> None:
    body = request(max_tokens=100, temperature=0.5, top_p=0.9, stop="END", top_k=40)
    assert body["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]}
    assert body["additionalModelRequestFields"] == {"top_k": 40}
    body = request(max_completion_tokens=50, max_tokens=100, stop=["a", "", "b"], temperature=1.7)
    assert body["inferenceConfig"] == {"maxTokens": 50, "stopSequences": ["a", "b"], "temperature": 1.0}


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high"])
def test_reasoning_effort_enables_thinking(effort: str) -> None:
    budget = THINKING_BUDGETS[effort]
    body = request(reasoning_effort=effort, temperature=0.2, top_p=0.5, top_k=5)
    assert body["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": budget}}
    config = body["inferenceConfig"]
    assert config["maxTokens"] > budget and "temperature" not in config and "topP" not in config
    assert request(reasoning_effort=effort, max_tokens=500)["inferenceConfig"]["maxTokens"] == budget + 500
    assert request(reasoning_effort=effort, max_tokens=40000)["inferenceConfig"]["maxTokens"] == 40000


def test_thinking_table_and_none() -> None:
    assert THINKING_BUDGETS == {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
    assert "additionalModelRequestFields" not in request(reasoning_effort="none")


def test_thinking_stays_off_inside_a_tool_loop() -> None:
    history = [
        USER,
        {
            "role": "assistant",
            "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "a", "content": "ok"},
    ]
    body = request(messages=history, reasoning_effort="high", tools=[{"type": "function", "function": {"name": "f"}}])
    assert "additionalModelRequestFields" not in body


def test_harmless_openai_fields_are_ignored() -> None:
    extras = {
        "n": 1,
        "user": "u",
        "seed": 1,
        "logprobs": False,
        "parallel_tool_calls": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "response_format": {"type": "text"},
        "presence_penalty": 0,
        "metadata": {"a": "b"},
    }
    assert request(**extras) == request()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [1]}, "messages[0]"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        ({"messages": [USER], "n": 2}, "n"),
        ({"messages": [USER], "n": "1"}, "n"),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens"),
        ({"messages": [USER], "max_completion_tokens": True}, "max_completion_tokens"),
        ({"messages": [USER], "temperature": "hot"}, "temperature"),
        ({"messages": [USER], "temperature": 3}, "temperature"),
        ({"messages": [USER], "top_p": 1.5}, "top_p"),
        ({"messages": [USER], "stop": [1]}, "stop"),
        ({"messages": [USER], "logprobs": True}, "logprobs"),
        ({"messages": [USER], "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [USER], "reasoning_effort": "max"}, "reasoning_effort"),
        ({"messages": [USER], "tools": {"type": "function"}}, "tools"),
        ({"messages": [USER], "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"messages": [USER], "tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0]"),
        ({"messages": [USER], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"x": 1}},
            "tool_choice",
        ),
        ({"messages": [USER], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}]}
                ]
            },
            "messages[0].tool_calls[0]",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "[]"}}]}
                ]
            },
            "messages[0].tool_calls[0]",
        ),
        ({"messages": [{"role": "assistant", "tool_calls": {"id": "a"}}]}, "messages[0].tool_calls"),
    ],
)
def test_client_mistakes_are_400(body: dict[str, t.Any], param: str | None) -> None:
    error = rejected(body)
    if param is not None:
        assert error.param == param


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "refusal", "other"])},
    optional={"text": json_values, "image_url": json_values | st.just({"url": "data:image/png;base64,AA"})},
)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "id": json_values | st.just("t1"),
            "function": st.fixed_dictionaries(
                {}, optional={"name": json_values | st.just("f"), "arguments": json_values | st.just('{"a":1}')}
            ),
        },
    ),
    max_size=3,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "other"]) | json_values},
        optional={
            "content": st.text(max_size=5) | st.lists(parts, max_size=3) | json_values,
            "tool_calls": tool_calls | json_values,
            "tool_call_id": json_values | st.just("t1"),
        },
    )
    | json_values,
    max_size=6,
)
bodies = st.fixed_dictionaries(
    {"messages": messages | json_values},
    optional={
        key: json_values | st.sampled_from(values)
        for key, values in {
            "tools": [[{"type": "function", "function": {"name": "f"}}]],
            "tool_choice": ["auto", "none", "required", {"type": "function", "function": {"name": "f"}}],
            "max_tokens": [10, 100000],
            "reasoning_effort": ["low", "high"],
            "stop": ["x", ["y"]],
            "temperature": [0.5],
            "n": [1, 2],
            "response_format": [{"type": "text"}],
        }.items()
    },
)


@settings(max_examples=250, deadline=None)
@given(bodies)
def test_any_json_gives_a_request_or_a_400(body: dict[str, t.Any]) -> None:
    try:
        result = converse_request(body)
    except ApiError as error:
        assert error.code == 400
        return
    json.dumps(result)
    roles = [turn["role"] for turn in result["messages"]]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))
    assert all(turn["content"] for turn in result["messages"])


# -- response


def test_chat_completion() -> None:
    response = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "Think.", "signature": "sig"}}},
                    {"text": "Let me "},
                    {"text": "check."},
                    {"toolUse": {"toolUseId": "tooluse_1", "name": "weather", "input": {"city": "Zürich"}}},
                ],
            }
        },
        "stopReason": "tool_use",
        "usage": {
            "inputTokens": 10,
            "outputTokens": 7,
            "totalTokens": 37,
            "cacheReadInputTokens": 15,
            "cacheWriteInputTokens": 5,
        },
        "metrics": {"latencyMs": 10},
    }
    result = chat_completion(response, "claude", "chatcmpl-1", 1700000000)
    assert result == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "refusal": None,
                    "reasoning_content": "Think.",
                    "tool_calls": [
                        {
                            "id": "tooluse_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Zürich"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 7,
            "total_tokens": 37,
            "prompt_tokens_details": {"cached_tokens": 15},
            "cache_creation_input_tokens": 5,
        },
    }
    ChatCompletion.model_validate(result)
    assert usage_counts(response) == (30, 7)
    assert usage_counts({}) == (None, None)


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_finish_reasons(stop: str, finish: str) -> None:
    response = {"output": {"message": {"content": [{"text": "x"}]}}, "stopReason": stop}
    assert chat_completion(response, "m", "i", 0)["choices"][0]["finish_reason"] == finish


def test_tool_only_answer_has_null_content() -> None:
    response = {"output": {"message": {"content": [{"toolUse": {"toolUseId": "a", "name": "f", "input": {}}}]}}}
    message = chat_completion(response, "m", "i", 0)["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["arguments"] == "{}"


def test_malformed_response_is_502() -> None:
    with pytest.raises(ApiError) as info:
        chat_completion({"output": None}, "m", "i", 0)
    assert info.value.code == 502


# -- streams


def run(
    name: str, content_type: str | None, usage: bool = False, pieces: list[int] | None = None
) -> tuple[list[bytes], ConverseChatStream]:
    data = (FIXTURES / name).read_bytes()
    stream = ConverseChatStream("claude-4", "chatcmpl-x", 1700000000, usage, content_type)
    out: list[bytes] = []
    start = 0
    for cut in [*(pieces or []), len(data)]:
        out += stream.feed(data[start:cut])
        start = cut
    return out + stream.finish(), stream


def splits(length: int) -> list[list[int] | None]:
    rng = random.Random(length)
    return [None, list(range(1, length)), *(sorted(rng.sample(range(1, length), 25)) for _ in range(5))]


def payloads(events: list[bytes]) -> list[t.Any]:
    result = []
    for event in events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"data: ") == 1, event
        data = event[6:-2]
        result.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return result


def deltas(items: list[t.Any]) -> list[tuple[dict[str, t.Any], str | None]]:
    return [
        (i["choices"][0]["delta"], i["choices"][0]["finish_reason"])
        for i in items
        if isinstance(i, dict) and i.get("choices")
    ]


def test_eventstream_fixtures_are_valid_for_botocore() -> None:
    for path in FIXTURES.glob("*.eventstream"):
        parser = EventStreamBuffer()
        parser.add_data(path.read_bytes())
        assert list(parser), path


@pytest.mark.parametrize("usage", [False, True])
def test_text_stream(usage: bool) -> None:
    data = (FIXTURES / "converse_text.eventstream").read_bytes()
    for pieces in splits(len(data)):
        out, stream = run("converse_text.eventstream", EVENTSTREAM, usage, pieces)
        items = payloads(out)
        assert deltas(items) == [
            ({"role": "assistant", "content": ""}, None),
            ({"content": "Hello"}, None),
            ({"content": ", wörld"}, None),
            ({"content": "!"}, None),
            ({}, "stop"),
        ]
        assert items[-1] == "[DONE]" and items.count("[DONE]") == 1
        chunks = items[:-1]
        assert {(c["id"], c["object"], c["created"], c["model"]) for c in chunks} == {
            ("chatcmpl-x", "chat.completion.chunk", 1700000000, "claude-4")
        }
        for chunk in chunks:
            ChatCompletionChunk.model_validate(chunk)
        expected_usage = {
            "prompt_tokens": 32,
            "completion_tokens": 5,
            "total_tokens": 37,
            "prompt_tokens_details": {"cached_tokens": 20},
            "cache_creation_input_tokens": 0,
        }
        if usage:
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == expected_usage
        else:
            assert all(c["choices"] for c in chunks)
        assert stream.token_counts() == (32, 5)


TOOL_DELTAS = [
    ({"role": "assistant", "content": ""}, None),
    ({"content": "Let me check."}, None),
    (
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "tooluse_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        None,
    ),
    ({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}, None),
    ({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris", "metric": true, "note": null}'}}]}, None),
    (
        {
            "tool_calls": [
                {"index": 1, "id": "tooluse_def", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]
        },
        None,
    ),
    ({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}, None),
    ({}, "tool_calls"),
]


@pytest.mark.parametrize(
    ("name", "content_type"), [("converse_tools.sse", TEXT), ("converse_tools.eventstream", EVENTSTREAM)]
)
def test_tool_stream(name: str, content_type: str) -> None:
    data = (FIXTURES / name).read_bytes()
    for pieces in splits(len(data)):
        out, stream = run(name, content_type, True, pieces)
        items = payloads(out)
        assert deltas(items) == TOOL_DELTAS
        assert items[-2]["usage"]["total_tokens"] == 90 and items[-1] == "[DONE]"
        assert stream.token_counts() == (50, 40)
    arguments: dict[int, str] = {}
    for delta, _ in deltas(items):
        for call in delta.get("tool_calls", []):
            arguments[call["index"]] = arguments.get(call["index"], "") + call["function"]["arguments"]
    assert {i: json.loads(a) for i, a in arguments.items()} == {
        0: {"city": "Paris", "metric": True, "note": None},
        1: {},
    }


def test_openai_sdk_accumulates_the_tool_stream() -> None:
    from openai.lib.streaming.chat import ChatCompletionStreamState

    out, _ = run("converse_tools.sse", TEXT, True)
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for item in payloads(out)[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(item))
    completion = state.get_final_completion()
    message = completion.choices[0].message
    assert message.content == "Let me check." and completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]  # type: ignore[union-attr]
    assert calls == [
        ("tooluse_abc", "get_weather", {"city": "Paris", "metric": True, "note": None}),
        ("tooluse_def", "get_time", {}),
    ]
    assert completion.usage is not None and completion.usage.completion_tokens == 40


def test_reasoning_stream() -> None:
    out, stream = run("converse_reasoning.eventstream", EVENTSTREAM, False, [3, 50, 51])
    assert deltas(payloads(out)) == [
        ({"role": "assistant", "content": ""}, None),
        ({"reasoning_content": "The user greets. "}, None),
        ({"reasoning_content": "Answer briefly."}, None),
        ({"content": "Hi!"}, None),
        ({}, "length"),
    ]
    assert stream.token_counts() == (108, 30)


def test_exception_mid_stream_is_an_error_event_without_done() -> None:
    data = (FIXTURES / "converse_exception.eventstream").read_bytes()
    for pieces in splits(len(data)):
        items = payloads(run("converse_exception.eventstream", EVENTSTREAM, True, pieces)[0])
        assert deltas(items) == [({"role": "assistant", "content": ""}, None), ({"content": "Hello"}, None)]
        error = items[-1]["error"]
        assert error["type"] == "rate_limit_error" and "Too many tokens" in error["message"]
        assert "[DONE]" not in items and len(items) == 3


def test_truncated_stream_is_an_error_event_without_done() -> None:
    items = payloads(run("converse_truncated.sse", TEXT, True, [10, 100])[0])
    assert deltas(items)[-1] == ({"content": ", wörld"}, None)
    assert "error" in items[-1] and "[DONE]" not in items
    out, stream = run("converse_text.eventstream", EVENTSTREAM, True)
    cut = (FIXTURES / "converse_text.eventstream").read_bytes()
    stream = ConverseChatStream("m", "i", 0, True, EVENTSTREAM)
    items = payloads(stream.feed(cut[:-10]) + stream.finish())
    assert "error" in items[-1] and "[DONE]" not in items


def test_stop_without_metadata_still_ends_with_done() -> None:
    data = b"data: {'messageStart': {'role': 'assistant'}}\n\ndata: {'messageStop': {'stopReason': 'end_turn'}}\n\n"
    stream = ConverseChatStream("m", "i", 0, True, TEXT)
    items = payloads(stream.feed(data) + stream.finish())
    assert items[-1] == "[DONE]" and deltas(items)[-1] == ({}, "stop")
    assert stream.token_counts() == (None, None)


stream_events = st.lists(
    st.tuples(
        st.sampled_from(
            ["messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata"]
        ),
        st.dictionaries(
            st.sampled_from(["start", "delta", "contentBlockIndex", "stopReason", "usage"]), json_values, max_size=3
        ),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(stream_events, st.booleans())
def test_any_converse_events_give_openai_events(events: list[tuple[str, dict[str, t.Any]]], usage: bool) -> None:
    data = b"".join(b"data: " + json.dumps({kind: body}).encode() + b"\n\n" for kind, body in events)
    stream = ConverseChatStream("m", "i", 0, usage, TEXT)
    items = payloads(stream.feed(data) + stream.finish())
    assert items[-1] == "[DONE]" or "error" in items[-1]
    assert items.count("[DONE]") <= 1
