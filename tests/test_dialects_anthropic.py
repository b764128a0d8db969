"""The Anthropic face on Bedrock invoke: request allow-lists, responses, and stream translation."""

from __future__ import annotations

import base64
import copy
import json
import random
import struct
import typing as t
import zlib
from pathlib import Path

import anthropic
import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgiproxy.dialects import anthropic as dialect
from wsgiproxy.dialects.anthropic import (
    BETAS,
    FIELDS,
    IMAGE_TOKENS,
    MessagesStream,
    count_tokens,
    error_event,
    invoke_body,
    message_response,
    usage_counts,
)
from wsgiproxy.dialects.bedrock import EVENTSTREAM
from wsgiproxy.errors import ApiError

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
MODEL = "anthropic--claude-4.5-sonnet"
CLAUDE_CODE_BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
    "thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20,effort-2025-11-24"
)
USER = [{"role": "user", "content": "hi"}]


def invoke(body: dict[str, t.Any], beta: str | None = None) -> dict[str, t.Any]:
    result = json.loads(invoke_body(body, beta))
    assert isinstance(result, dict)
    return result


def base(**fields: t.Any) -> dict[str, t.Any]:
    return {"model": MODEL, "max_tokens": 100, "messages": USER, **fields}


def rejects(body: t.Any, param: str | None = None) -> ApiError:
    with pytest.raises(ApiError) as info:
        invoke_body(body, None)
    assert info.value.code == 400
    assert info.value.param == param
    return info.value


# -- the request


def test_claude_code_request_becomes_the_recorded_invoke_body() -> None:
    request = json.loads((FIXTURES / "claude_code_request.json").read_text())
    original = copy.deepcopy(request)
    expected = json.loads((FIXTURES / "claude_code_invoke.json").read_text())
    assert invoke(request, CLAUDE_CODE_BETAS) == expected
    assert request == original, "the client's body is not modified"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", MODEL),
        ("stream", True),
        ("metadata", {"user_id": "{}"}),
        ("context_management", {"edits": []}),
        ("output_config", {"effort": "high"}),
        ("output_format", {"type": "json_schema", "schema": {}}),
        ("service_tier", "auto"),
        ("container", "container_1"),
        ("mcp_servers", [{"type": "url", "url": "https://example.invalid", "name": "x"}]),
        ("inference_geo", "eu"),
    ],
)
def test_fields_bedrock_rejects_are_dropped(field: str, value: t.Any) -> None:
    assert field not in invoke(base(**{field: value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 100),
        ("messages", USER),
        ("system", "Be brief."),
        ("system", [{"type": "text", "text": "Be brief."}]),
        ("temperature", 0.2),
        ("top_p", 0.9),
        ("top_k", 5),
        ("stop_sequences", ["END"]),
        ("tools", [{"name": "f", "description": "d", "input_schema": {"type": "object"}}]),
        ("thinking", {"type": "enabled", "budget_tokens": 2048}),
        ("anthropic_beta", ["context-1m-2025-08-07"]),
    ],
)
def test_fields_bedrock_accepts_are_kept(field: str, value: t.Any) -> None:
    assert invoke(base(**{field: value}))[field] == value


def test_null_fields_are_absent() -> None:
    nulls = dict.fromkeys(["system", "tools", "tool_choice", "thinking", "temperature", "anthropic_beta"])
    assert invoke(base(**nulls)) == {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "messages": USER}


def test_version_is_set_and_overrides_the_client() -> None:
    assert invoke(base())["anthropic_version"] == "bedrock-2023-05-31"
    assert invoke(base(anthropic_version="2023-06-01"))["anthropic_version"] == "bedrock-2023-05-31"


def test_tool_choice_is_kept_while_its_tool_remains() -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    for choice in ({"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "f"}):
        assert invoke(base(tools=tools, tool_choice=choice))["tool_choice"] == choice


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "web_fetch_20250910", "name": "web_fetch"},
        {"type": "code_execution_20250825", "name": "code_execution"},
        {"type": "mcp_toolset", "mcp_server_name": "x"},
        {"type": "tool_search_tool_regex_20251119", "name": "tool_search"},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768},
        {"type": "memory_20250818", "name": "memory"},
    ],
)
def test_anthropic_defined_tools_are_removed(tool: dict[str, t.Any]) -> None:
    custom = {"name": "f", "input_schema": {"type": "object"}}
    body = invoke(base(tools=[tool, custom], tool_choice={"type": "tool", "name": tool.get("name", "-")}))
    assert body["tools"] == [custom]
    assert "tool_choice" not in body, "it named a removed tool"
    alone = invoke(base(tools=[tool], tool_choice={"type": "auto"}))
    assert "tools" not in alone and "tool_choice" not in alone


def test_custom_tools_keep_only_bedrock_fields() -> None:
    tool = {
        "type": "custom",
        "name": "f",
        "description": "d",
        "input_schema": {"type": "object"},
        "defer_loading": True,
        "input_examples": [{}],
        "strict": True,
        "eager_input_streaming": True,
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    expected = {
        "name": "f",
        "description": "d",
        "input_schema": {"type": "object"},
        "cache_control": {"type": "ephemeral"},
    }
    assert invoke(base(tools=[tool]))["tools"] == [expected]


def test_empty_tools_and_their_choice_are_dropped() -> None:
    body = invoke(base(tools=[], tool_choice={"type": "auto"}))
    assert "tools" not in body and "tool_choice" not in body
    assert "tool_choice" not in invoke(base(tool_choice={"type": "any"}))


def test_system_turns_are_hoisted_after_the_system_string() -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "system", "content": "env"},
        {"role": "assistant", "content": "two"},
        {"role": "system", "content": [{"type": "text", "text": "more"}, {"type": "text", "text": "again"}]},
        {"role": "user", "content": "three"},
    ]
    body = invoke(base(system="top", messages=messages))
    assert body["system"] == [
        {"type": "text", "text": "top"},
        {"type": "text", "text": "env"},
        {"type": "text", "text": "more"},
        {"type": "text", "text": "again"},
    ]
    assert [m["content"] for m in body["messages"]] == ["one", "two", "three"]


def test_system_turns_without_a_system_and_after_a_block_list() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "system", "content": "env"}]
    assert invoke(base(messages=messages))["system"] == [{"type": "text", "text": "env"}]
    blocks = [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}]
    assert invoke(base(system=blocks, messages=messages))["system"] == [*blocks, {"type": "text", "text": "env"}]
    assert invoke(base(system="", messages=messages))["system"] == [{"type": "text", "text": "env"}]
    assert invoke(base(system="keep me"))["system"] == "keep me", "a lone string stays a string"
    assert "system" not in invoke(base(messages=[messages[0], {"role": "system", "content": ""}])), "nothing to add"


def test_only_system_turns_is_a_bad_request() -> None:
    error = rejects(base(messages=[{"role": "system", "content": "x"}]), "messages")
    assert "user or assistant" in error.message


def test_beta_header_merges_with_the_body_filtered_and_deduplicated() -> None:
    body = base(anthropic_beta=["context-1m-2025-08-07", "oauth-2025-04-20", "interleaved-thinking-2025-05-14"])
    header = (
        " interleaved-thinking-2025-05-14 , fine-grained-tool-streaming-2025-05-14,prompt-caching-scope-2026-01-05,"
    )
    assert invoke(body, header)["anthropic_beta"] == [
        "context-1m-2025-08-07",
        "interleaved-thinking-2025-05-14",
        "fine-grained-tool-streaming-2025-05-14",
    ]
    assert invoke(base(), CLAUDE_CODE_BETAS)["anthropic_beta"] == ["interleaved-thinking-2025-05-14"]
    assert "anthropic_beta" not in invoke(base(anthropic_beta=["oauth-2025-04-20"]), "claude-code-20250219")
    assert "anthropic_beta" not in invoke(base(), "")


@pytest.mark.parametrize("beta", sorted(BETAS))
def test_every_allowed_beta_passes(beta: str) -> None:
    assert invoke(base(), beta)["anthropic_beta"] == [beta]


def test_cache_control_keeps_only_its_type_everywhere() -> None:
    wide = {"type": "ephemeral", "ttl": "1h", "scope": "global"}
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a", "cache_control": wide},
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "text", "text": "r", "cache_control": wide}],
                },
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                    "cache_control": "bad",
                },
            ],
        }
    ]
    request = base(system=[{"type": "text", "text": "s", "cache_control": wide}], messages=messages)
    original = copy.deepcopy(request)
    body = invoke(request)
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    content = body["messages"][0]["content"]
    assert content[0]["cache_control"] == {"type": "ephemeral"}
    assert content[1]["content"][0] == {"type": "text", "text": "r", "cache_control": {"type": "ephemeral"}}
    assert "cache_control" not in content[2], "a malformed cache_control is dropped"
    assert request == original


@pytest.mark.parametrize("kind", ["enabled", "adaptive"])
def test_thinking_drops_temperature_and_top_k(kind: str) -> None:
    thinking = {"type": kind, "budget_tokens": 1024, "display": "omitted"}
    body = invoke(base(thinking=thinking, temperature=0.5, top_k=3, top_p=0.95))
    assert "temperature" not in body and "top_k" not in body and body["top_p"] == 0.95
    assert body["thinking"] == {"type": kind, "budget_tokens": 1024}


def test_disabled_thinking_keeps_temperature() -> None:
    body = invoke(base(thinking={"type": "disabled"}, temperature=0.5))
    assert body["temperature"] == 0.5 and body["thinking"] == {"type": "disabled"}


def test_max_tokens_is_required() -> None:
    error = rejects({"model": MODEL, "messages": USER}, "max_tokens")
    assert error.message.startswith("'max_tokens' is required")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ("text", None),
        (base(max_tokens="10"), "max_tokens"),
        (base(max_tokens=True), "max_tokens"),
        (base(max_tokens=0), "max_tokens"),
        (base(max_tokens=1.5), "max_tokens"),
        ({"max_tokens": 10}, "messages"),
        (base(messages=[]), "messages"),
        (base(messages={"role": "user"}), "messages"),
        (base(messages=["hi"]), "messages.0"),
        (base(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
        (base(messages=[{"role": "user"}]), "messages.0.content"),
        (base(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
        (base(messages=[{"role": "user", "content": ["x"]}]), "messages.0.content.0"),
        (base(system=5), "system"),
        (base(system=["x"]), "system.0"),
        (base(tools={"name": "f"}), "tools"),
        (base(tools=["f"]), "tools"),
        (base(tools=[{"name": "f"}, {"description": "nameless"}]), "tools.1.name"),
        (base(tools=[{"name": ["f"]}]), "tools.0.name"),
        (base(tool_choice="auto", tools=[{"name": "f"}]), "tool_choice"),
        (base(thinking=True), "thinking"),
        (base(anthropic_beta=[1]), "anthropic_beta"),
        (base(anthropic_beta={"a": 1}), "anthropic_beta"),
    ],
)
def test_malformed_requests_are_clear_400s(body: t.Any, param: str | None) -> None:
    rejects(body, param)


def test_lone_surrogates_still_give_utf8() -> None:
    raw = invoke_body(base(messages=[{"role": "user", "content": "a\ud800b"}]), None)
    assert json.loads(raw.decode("utf-8"))["messages"][0]["content"] == "a\ud800b"
    assert "ü".encode() in invoke_body(base(system="Grüße"), None), "other text is not escaped"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
anything = json_values | st.sampled_from(["user", "system", "text", "tool_result", "custom", "tool", "enabled", "f"])


def mostly(good: st.SearchStrategy[t.Any]) -> st.SearchStrategy[t.Any]:
    """``good`` three times in four, else any JSON: deep paths get reached, and broken too."""
    return st.integers(0, 3).flatmap(lambda draw: good if draw else anything)


names = st.sampled_from(["f", "g"])
cache_control = st.fixed_dictionaries({"type": st.just("ephemeral")}, optional={"ttl": anything, "scope": anything})
block = st.fixed_dictionaries(
    {"type": mostly(st.sampled_from(["text", "tool_result", "tool_use", "image", "thinking"]))},
    optional={
        "text": mostly(st.text(max_size=8)),
        "content": mostly(st.text(max_size=8) | st.lists(st.fixed_dictionaries({"type": st.just("text")}), max_size=2)),
        "cache_control": mostly(cache_control),
        "name": mostly(names),
    },
)
message = st.fixed_dictionaries(
    {
        "role": mostly(st.sampled_from(["user", "assistant", "system"])),
        "content": mostly(st.text(max_size=8) | st.lists(mostly(block), max_size=3)),
    }
)
tool = st.fixed_dictionaries(
    {"name": mostly(names)},
    optional={
        "type": mostly(st.sampled_from(["custom", "web_search_20250305", "bash_20250124"])),
        "input_schema": json_values,
        "cache_control": mostly(cache_control),
        "defer_loading": st.booleans(),
    },
)
requests = st.fixed_dictionaries(
    {"max_tokens": mostly(st.integers(1, 5)), "messages": mostly(st.lists(mostly(message), min_size=1, max_size=4))},
    optional={
        "system": mostly(st.text(max_size=8) | st.lists(mostly(block), max_size=2)),
        "tools": mostly(st.lists(mostly(tool), max_size=3)),
        "tool_choice": mostly(
            st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool"])}, optional={"name": names})
        ),
        "thinking": mostly(st.fixed_dictionaries({"type": st.sampled_from(["enabled", "adaptive", "disabled"])})),
        "anthropic_beta": mostly(st.lists(st.sampled_from(sorted(BETAS)) | st.text(max_size=8), max_size=3)),
        "temperature": anything,
        "metadata": anything,
    },
)


@settings(max_examples=400, deadline=None)
@given(body=mostly(requests), header=st.none() | st.text(max_size=40))
def test_any_json_gives_a_body_or_a_400(body: t.Any, header: str | None) -> None:
    try:
        raw = invoke_body(body, header)
    except ApiError as exc:
        assert exc.code == 400 and exc.message
    else:
        result = json.loads(raw)
        assert result["anthropic_version"] == "bedrock-2023-05-31" and result["messages"]
        assert set(result) <= set(FIELDS)
    try:
        assert count_tokens(body) >= 1
    except ApiError as exc:
        assert exc.code == 400


# -- the non-stream response


def test_message_response_names_the_client_model_and_drops_bedrock_metrics() -> None:
    raw = (FIXTURES / "invoke_response.json").read_bytes()
    upstream = json.loads(raw)
    message = message_response(raw, MODEL)
    assert message["model"] == MODEL and message["type"] == "message"
    assert "amazon-bedrock-invocationMetrics" not in message
    del upstream["amazon-bedrock-invocationMetrics"]
    assert {**upstream, "model": MODEL} == message
    assert usage_counts(message["usage"]) == (4028, 10)
    parsed = anthropic.types.Message.model_validate(message)
    assert [block.type for block in parsed.content] == ["thinking", "text", "tool_use"]


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'"message"', b"\xff\xfe"])
def test_message_response_that_is_not_an_object_is_a_502(raw: bytes) -> None:
    with pytest.raises(ApiError) as info:
        message_response(raw, MODEL)
    assert info.value.code == 502


@pytest.mark.parametrize(
    ("usage", "counts"),
    [
        ({"input_tokens": 3, "output_tokens": 4}, (3, 4)),
        ({"input_tokens": 3, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 5}, (18, None)),
        ({"output_tokens": 4, "cache_read_input_tokens": None}, (None, 4)),
        ({"input_tokens": "3", "output_tokens": True}, (None, None)),
        (None, (None, None)),
        ([1, 2], (None, None)),
    ],
)
def test_usage_counts(usage: t.Any, counts: tuple[int | None, int | None]) -> None:
    assert usage_counts(usage) == counts


# -- the stream

EXPECTED = FIXTURES / "invoke_stream.expected"


def text_stream() -> bytes:
    """SAP AI Core's text framing of an invoke stream: ``data: <Anthropic event JSON>`` lines."""
    return (FIXTURES / "invoke_stream.txt").read_bytes()


def upstream_events() -> list[bytes]:
    return [line[6:] for line in text_stream().splitlines() if line.startswith(b"data: ")]


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message, every header a string (type 7)."""
    encoded = b"".join(
        bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
        for name, value in headers.items()
    )
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def chunk(event: bytes) -> bytes:
    """An invoke ``chunk`` frame wrapping one Anthropic event, padded as real Bedrock does."""
    payload = json.dumps({"bytes": base64.b64encode(event).decode(), "p": "abcdefghijklmnop"[: len(event) % 16]})
    headers = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, payload.encode())


def exception_frame(kind: str, message: str) -> bytes:
    headers = {":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"}
    return frame(headers, json.dumps({"message": message}).encode())


def binary_stream(events: list[bytes] | None = None) -> bytes:
    return b"".join(chunk(event) for event in (upstream_events() if events is None else events))


def test_the_test_encoder_writes_what_botocore_reads() -> None:
    """The binary fixtures are real event-stream: botocore (boto3's parser) reads them back."""
    eventstream = pytest.importorskip("botocore.eventstream")
    buffer = eventstream.EventStreamBuffer()
    buffer.add_data(binary_stream() + exception_frame("throttlingException", "slow down"))
    messages = list(buffer)
    payloads = [base64.b64decode(json.loads(m.payload)["bytes"]) for m in messages[:-1]]
    assert payloads == upstream_events()
    assert messages[-1].headers[":exception-type"] == "throttlingException"


FRAMINGS = {"text": ("application/json", text_stream), "binary": (EVENTSTREAM, binary_stream)}


def pieces(data: bytes, split: int | str | None) -> list[bytes]:
    if split is None:
        return [data]
    if isinstance(split, int):
        return [data[i : i + split] for i in range(0, len(data), split)]
    rng, cuts = random.Random(split), []
    position = 0
    while position < len(data):
        cuts.append(data[position : position + rng.randint(1, 300)])
        position += len(cuts[-1])
    return cuts


def translate(
    data: bytes, content_type: str | None, split: int | str | None = None
) -> tuple[list[bytes], MessagesStream]:
    stream = MessagesStream(MODEL, content_type)
    out: list[bytes] = []
    for piece in pieces(data, split):
        out += stream.feed(piece)
    out += stream.finish()
    return out, stream


def parse(events: list[bytes]) -> list[tuple[str, dict[str, t.Any]]]:
    parsed = []
    for event in events:
        name, data, end = event.split(b"\n", 2)
        assert name.startswith(b"event: ") and data.startswith(b"data: ") and end == b"\n", event
        body = json.loads(data[6:])
        assert body["type"] == name[7:].decode()
        parsed.append((body["type"], body))
    return parsed


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
@pytest.mark.parametrize("split", [None, 1, 5, 64, "seed-1", "seed-2", "seed-3"])
def test_stream_becomes_the_recorded_anthropic_sse(framing: str, split: int | str | None) -> None:
    content_type, make = FRAMINGS[framing]
    out, stream = translate(make(), content_type, split)
    assert b"".join(out) == EXPECTED.read_bytes()
    assert all(event.count(b"\nevent: ") == 0 and event.count(b"data: ") == 1 for event in out), "one event each"
    assert stream.token_counts() == (21 + 1200 + 3000, 87)
    assert stream.done


def test_recorded_output_keeps_every_event_but_edits_start_and_stop() -> None:
    out, _ = translate(text_stream(), None)
    events = parse(out)
    upstream = [json.loads(event) for event in upstream_events()]
    assert [kind for kind, _ in events] == [event["type"] for event in upstream]
    assert events[0][1]["message"]["model"] == MODEL
    assert events[0][1]["message"] == {**upstream[0]["message"], "model": MODEL}
    assert events[-1][1] == {"type": "message_stop"}
    assert [body for _, body in events[1:-1]] == upstream[1:-1], "deltas are forwarded unchanged"
    assert b"[DONE]" not in b"".join(out)


def sdk_stream(body: bytes) -> anthropic.MessageStream:
    """The official SDK reading ``body`` as the response to ``messages.stream``."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://proxy.invalid",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    manager = client.messages.stream(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    return manager.__enter__()


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_the_anthropic_sdk_accumulates_the_translated_stream(framing: str) -> None:
    content_type, make = FRAMINGS[framing]
    out, _ = translate(make(), content_type, "seed-4")
    message = sdk_stream(b"".join(out)).get_final_message()
    assert message.model == MODEL and message.stop_reason == "tool_use"
    thinking, text, tool = message.content
    assert thinking.type == "thinking" and thinking.thinking == "The user wants a greeting in a file."
    assert thinking.signature == "EqQBCkYIBRgCKkBsig=="
    assert text.type == "text" and text.text == "Grüße, I'll write it."
    assert tool.type == "tool_use" and tool.name == "Bash" and tool.id == "toolu_bdrk_01A"
    assert tool.input == {"command": "echo hi > a.txt", "description": "Write"}
    assert message.usage.output_tokens == 87 and message.usage.cache_read_input_tokens == 3000


def test_the_anthropic_sdk_raises_on_the_error_event() -> None:
    events = upstream_events()[:9]
    out, _ = translate(binary_stream(events) + exception_frame("throttlingException", "Too many requests"), EVENTSTREAM)
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk_stream(b"".join(out)).get_final_message()
    assert info.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Too many requests (throttlingException)"},
    }


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [
        ("throttlingException", "rate_limit_error"),
        ("serviceUnavailableException", "overloaded_error"),
        ("ModelNotReadyException", "overloaded_error"),
        ("validationException", "invalid_request_error"),
        ("modelTimeoutException", "timeout_error"),
        ("modelStreamErrorException", "api_error"),
        ("internalServerException", "api_error"),
    ],
)
def test_exception_mid_stream_is_one_error_event_and_the_end(kind: str, error_type: str) -> None:
    events = upstream_events()
    data = binary_stream(events[:9]) + exception_frame(kind, "upstream said no") + binary_stream(events[9:])
    out, stream = translate(data, EVENTSTREAM, 3)
    parsed = parse(out)
    assert [name for name, _ in parsed[:9]] == [json.loads(event)["type"] for event in events[:9]]
    assert parsed[9:] == [
        ("error", {"type": "error", "error": {"type": error_type, "message": f"upstream said no ({kind})"}})
    ]
    assert stream.token_counts() == (4221, 2), "as far as message_start reported"


def test_anthropic_error_event_in_text_framing_keeps_its_type() -> None:
    data = b"".join(b"data: " + event + b"\n\n" for event in upstream_events()[:4])
    data += b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    data += b'data: {"type":"message_stop"}\n\n'
    out, _ = translate(data, "text/event-stream", 7)
    assert out[-1] == error_event("Overloaded", "overloaded_error") and len(out) == 5


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_stream_cut_before_the_answer_ends_with_an_error(framing: str) -> None:
    content_type, make = FRAMINGS[framing]
    data = make()
    cut = data[: data.index(b"stop_reason", len(data) // 2) if framing == "text" else len(data) * 3 // 4]
    out, stream = translate(cut, content_type, 11)
    assert parse(out)[-1][0] == "error"
    assert parse(out)[-1][1]["error"]["type"] == "api_error"
    assert [name for name, _ in parse(out)].count("error") == 1
    assert stream.done


def test_stream_cut_after_message_delta_is_completed() -> None:
    events = upstream_events()[:-1]
    for content_type, data in [(EVENTSTREAM, binary_stream(events)), (None, b"\n".join(b"data: " + e for e in events))]:
        out, _ = translate(data, content_type, 13)
        assert b"".join(out) == EXPECTED.read_bytes()


def test_nothing_follows_message_stop() -> None:
    data = text_stream() + b'data: {"type":"ping"}\n\n'
    out, _ = translate(data, None, 1)
    assert b"".join(out) == EXPECTED.read_bytes()


def test_empty_stream_is_an_error() -> None:
    out, stream = translate(b"", EVENTSTREAM)
    assert parse(out) == [
        (
            "error",
            {
                "type": "error",
                "error": {
                    "type": "api_error",
                    "message": "SAP AI Core ended the stream before the message was complete.",
                },
            },
        )
    ]
    assert stream.token_counts() == (None, None)


event_types = st.sampled_from(
    ["message_start", "message_delta", "message_stop", "content_block_delta", "ping", "error", "future_event", "a\nb"]
)
events = st.fixed_dictionaries(
    {"type": event_types},
    optional={"message": mostly(st.fixed_dictionaries({}, optional={"usage": anything})), "usage": anything},
)


@settings(max_examples=200, deadline=None)
@given(
    upstream=st.lists(mostly(events), max_size=8),
    binary=st.booleans(),
    noise=st.binary(max_size=40),
    split=st.integers(1, 50),
)
def test_any_upstream_stream_ends_once_and_never_raises(
    upstream: list[t.Any], binary: bool, noise: bytes, split: int
) -> None:
    encoded = [json.dumps(event).encode() for event in upstream]
    if binary:
        data, content_type = binary_stream(encoded) + noise, EVENTSTREAM
    else:
        data, content_type = b"".join(b"data: " + event + b"\n\n" for event in encoded) + noise, None
    out, stream = translate(data, content_type, split)
    names = [name for name, _ in parse(out)]
    assert names and names[-1] in ("message_stop", "error")
    assert names.count("message_stop") + names.count("error") == 1
    prompt, completion = stream.token_counts()
    assert prompt is None or isinstance(prompt, int)
    assert completion is None or isinstance(completion, int)


def test_error_event_shape() -> None:
    assert (
        error_event("boom") == b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"boom"}}\n\n'
    )
    assert (
        json.loads(error_event("slow", "overloaded_error").split(b"data: ")[1])["error"]["type"] == "overloaded_error"
    )


# -- count_tokens


def test_count_tokens_follows_the_documented_method() -> None:
    body = {
        "model": MODEL,
        "system": "12345678",  # 2
        "messages": [
            {"role": "user", "content": "abcd"},  # 4 + 1
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "abcde", "signature": "ignored"},  # 2
                    {"type": "tool_use", "id": "x", "name": "Bash", "input": {"a": 1}},  # 1 + ceil(7/4)=2
                ],
            },  # + 4
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "x", "content": [{"type": "text", "text": "abc"}]},  # 1
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 999}},
                ],
            },  # + 4
        ],
        "tools": [{"name": "Bash", "description": "Run it", "input_schema": {"type": "object"}}],  # 8+1+2+5
    }
    assert count_tokens(body) == 2 + 5 + (4 + 2 + 3) + (4 + 1 + IMAGE_TOKENS) + (8 + 1 + 2 + 5)


def test_count_tokens_claude_code_request_is_stable() -> None:
    request = json.loads((FIXTURES / "claude_code_request.json").read_text())
    assert count_tokens(request) == count_tokens(copy.deepcopy(request)) > 0
    assert count_tokens({"messages": [{"role": "user", "content": "foo"}], "tools": []}) == 5


@pytest.mark.parametrize("body", [[], "x", {}, {"messages": "hi"}])
def test_count_tokens_needs_messages(body: t.Any) -> None:
    with pytest.raises(ApiError) as info:
        count_tokens(body)
    assert info.value.code == 400


@pytest.mark.parametrize(("sap_model", "knows"), [
    ("anthropic--claude-4.5-sonnet", False), ("anthropic--claude-3.7-sonnet", False),
    ("anthropic--claude-4-opus", False),
    ("anthropic--claude-4.6-opus", True), ("anthropic--claude-4.7-opus", True), ("anthropic--claude-5-sonnet", True),
])
def test_which_models_know_adaptive_thinking(sap_model: str, knows: bool) -> None:
    assert dialect.knows_adaptive_thinking(sap_model) is knows


@pytest.mark.parametrize(("max_tokens", "expected"), [
    (32000, {"type": "enabled", "budget_tokens": 31999}),
    (64000, {"type": "enabled", "budget_tokens": 31999}),
    (4000, {"type": "enabled", "budget_tokens": 3999}),
    (1024, None),  # no room for Bedrock's minimum budget: no thinking
])
def test_adaptive_thinking_becomes_a_budget_for_older_models(max_tokens: int, expected: dict | None) -> None:
    body = {"model": "m", "max_tokens": max_tokens, "temperature": 0.5, "messages": [{"role": "user", "content": "x"}],
            "thinking": {"type": "adaptive", "display": "omitted"}}
    sent = json.loads(dialect.invoke_body(body, None, adaptive_thinking=False))
    assert sent.get("thinking") == expected
    assert json.loads(dialect.invoke_body(body, None))["thinking"] == {"type": "adaptive"}


def test_unchanged_events_go_out_in_upstream_bytes() -> None:
    spaced = b'{"type": "ping"}'
    escaped = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\\u00fc"}}'
    multiline = b'{"type":\n"ping"}'
    out, _ = translate(binary_stream([spaced, escaped, multiline]), EVENTSTREAM)
    assert out[0] == b"event: ping\ndata: " + spaced + b"\n\n"
    assert out[1] == b"event: content_block_delta\ndata: " + escaped + b"\n\n"
    assert out[2] == b'event: ping\ndata: {"type":"ping"}\n\n', "an SSE data line holds no newline"
    text, _ = translate(b"data: " + spaced + b"\n", "application/json")
    assert text[0] == b"event: ping\ndata: " + spaced + b"\n\n"
