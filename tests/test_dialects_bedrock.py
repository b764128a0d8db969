"""Bedrock stream reading: both framings, both operations, errors and truncation."""

from __future__ import annotations

import base64
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_dialects_eventstream import encode_message, event
from wsgiproxy.dialects.bedrock import ACCEPT, EVENTSTREAM, BedrockEvent, BedrockStreamReader

TEXT = "text/event-stream"
LINES = [
    b"data: {'messageStart': {'role': 'assistant'}}\n",
    b'data: {"type": "ping"}\n\n',
    b"data: {'contentBlockDelta': {'delta': 5}}\n",
    b'data: {"bytes": "e30="}\n',
    b'data: {"type": "error"}\n',
    b"data: [DONE]\n",
    b"data: {'x': {'y': (1, 2)}}\n",
    b"data: {'a': ",
    b"\r\n",
]


def read(content_type: str | None, operation: str, data: bytes, split: int | None = None) -> list[BedrockEvent]:
    reader = BedrockStreamReader(content_type, operation)  # type: ignore[arg-type]
    pieces = [data] if split is None else [data[i : i + split] for i in range(0, len(data), split)]
    events: list[BedrockEvent] = []
    for piece in pieces:
        events += reader.feed(piece)
    return events + reader.finish()


def exception(kind: str, message: str) -> BedrockEvent:
    return BedrockEvent("exception", {"exceptionType": kind, "message": message})


CONVERSE = [
    BedrockEvent("messageStart", {"role": "assistant"}),
    BedrockEvent("contentBlockDelta", {"delta": {"text": "Hi"}, "contentBlockIndex": 0}),
    BedrockEvent("contentBlockStop", {"contentBlockIndex": 0}),
    BedrockEvent("messageStop", {"stopReason": "end_turn"}),
    BedrockEvent("metadata", {"usage": {"inputTokens": 3, "outputTokens": 1, "totalTokens": 4}, "metrics": {}}),
]

ANTHROPIC = [
    {"type": "message_start", "message": {"id": "msg_1", "role": "assistant", "content": [], "usage": {}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
    {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 3}},
]


def converse_binary() -> bytes:
    return b"".join(event(e.type, json.dumps(e.body).encode()) for e in CONVERSE)


def chunk(anthropic: dict[str, object]) -> bytes:
    payload = {"bytes": base64.b64encode(json.dumps(anthropic).encode()).decode(), "p": "abcdefgh"}
    return event("chunk", json.dumps(payload).encode())


def exception_frame(kind: str, message: str) -> bytes:
    headers = {":message-type": "exception", ":exception-type": kind, ":content-type": "application/json"}
    return encode_message(headers, json.dumps({"message": message}).encode())  # type: ignore[arg-type]


def test_accept_is_the_binary_framing() -> None:
    assert ACCEPT == EVENTSTREAM == "application/vnd.amazon.eventstream"


@pytest.mark.parametrize("split", [None, 1, 5, 64])
def test_converse_binary(split: int | None) -> None:
    assert read(EVENTSTREAM, "converse", converse_binary(), split) == CONVERSE


def test_content_type_parameters_and_case() -> None:
    assert read("Application/VND.amazon.eventstream; charset=x", "converse", converse_binary()) == CONVERSE


@pytest.mark.parametrize("split", [None, 1, 3, 100])
def test_invoke_binary(split: int | None) -> None:
    data = b"".join(chunk(e) for e in ANTHROPIC)
    assert read(EVENTSTREAM, "invoke", data, split) == [BedrockEvent(str(e["type"]), e) for e in ANTHROPIC]


def test_random_splits_binary() -> None:
    data = converse_binary()
    rng = random.Random(3)
    for _ in range(50):
        reader = BedrockStreamReader(EVENTSTREAM, "converse")
        events: list[BedrockEvent] = []
        position = 0
        while position < len(data):
            step = rng.randint(1, 40)
            events += reader.feed(data[position : position + step])
            position += step
        assert events + reader.finish() == CONVERSE


def test_exception_frame_mid_stream() -> None:
    data = converse_binary()[:0] + event("messageStart", b'{"role":"assistant"}')
    data += exception_frame("throttlingException", "Too many requests")
    assert read(EVENTSTREAM, "converse", data, 7) == [
        CONVERSE[0],
        exception("throttlingException", "Too many requests"),
    ]
    invoke = chunk(ANTHROPIC[0]) + exception_frame("modelStreamErrorException", "boom")
    assert read(EVENTSTREAM, "invoke", invoke)[1] == exception("modelStreamErrorException", "boom")


def test_error_message_type() -> None:
    frame = encode_message({":message-type": "error", ":error-code": "InternalFailure", ":error-message": "oops"}, b"")
    assert read(EVENTSTREAM, "converse", frame) == [exception("InternalFailure", "oops")]


def test_truncated_binary_stream_at_finish() -> None:
    data = converse_binary()
    events = read(EVENTSTREAM, "converse", data[:-3])
    assert events[:-1] == CONVERSE[:-1]
    assert events[-1].type == "exception" and events[-1].body["exceptionType"] == "truncatedStream"


def test_corrupt_binary_stream_stops_with_one_exception() -> None:
    data = bytearray(converse_binary())
    data[40] ^= 0xFF
    reader = BedrockStreamReader(EVENTSTREAM, "converse")
    events = reader.feed(bytes(data))
    assert len(events) == 1 and events[0].body["exceptionType"] == "eventStreamError"
    assert reader.feed(converse_binary()) == [] and reader.finish() == []


@pytest.mark.parametrize(
    "frame",
    [
        event("messageStart", b"not json"),
        event("messageStart", b"[1]"),
        encode_message({":message-type": "event"}, b"{}"),
    ],
)
def test_bad_converse_frames(frame: bytes) -> None:
    events = read(EVENTSTREAM, "converse", frame + converse_binary())
    assert len(events) == 1 and events[0].body["exceptionType"] == "invalidStreamData"


@pytest.mark.parametrize(
    "payload",
    [b'{"p":"x"}', b'{"bytes":"!!!"}', json.dumps({"bytes": base64.b64encode(b"[1]").decode()}).encode()],
)
def test_bad_invoke_chunks(payload: bytes) -> None:
    events = read(EVENTSTREAM, "invoke", event("chunk", payload))
    assert [e.body["exceptionType"] for e in events] == ["invalidStreamData"]
    assert read(EVENTSTREAM, "invoke", event("other", b"{}"))[0].body["exceptionType"] == "invalidStreamData"


# -- text framing

CONVERSE_TEXT = (
    b"data: {'messageStart': {'role': 'assistant'}}\n\n"
    b"data: {'contentBlockDelta': {'delta': {'text': 'Hi'}, 'contentBlockIndex': 0}}\n\n"
    b'data: {"contentBlockStop": {"contentBlockIndex": 0}}\n\n'
    b"data: {'messageStop': {'stopReason': 'end_turn'}}\n\n"
    b"data: {'metadata': {'usage': {'inputTokens': 3, 'outputTokens': 1, 'totalTokens': 4}, 'metrics': {}}}\n\n"
)


@pytest.mark.parametrize("content_type", [TEXT, None, "application/json"])
@pytest.mark.parametrize("split", [None, 1, 9])
def test_converse_text_python_literals(content_type: str | None, split: int | None) -> None:
    assert read(content_type, "converse", CONVERSE_TEXT, split) == CONVERSE


def test_python_literals_true_none() -> None:
    line = b"data: {'contentBlockStart': {'start': {'toolUse': {'toolUseId': 't', 'name': 'f'}}, "
    line += b"'x': True, 'y': None}}\n"
    assert read(TEXT, "converse", line) == [
        BedrockEvent("contentBlockStart", {"start": {"toolUse": {"toolUseId": "t", "name": "f"}}, "x": True, "y": None})
    ]


@pytest.mark.parametrize("separator", [b"\n", b"\r\n", b"\n\n", b"\r\n\r\n"])
def test_lines_separated_by_single_newlines(separator: bytes) -> None:
    data = separator.join(CONVERSE_TEXT.split(b"\n\n"))
    reader = BedrockStreamReader(TEXT, "converse")
    # events are not held back waiting for a blank line
    assert reader.feed(data.split(separator)[0] + separator) == CONVERSE[:1]
    assert read(TEXT, "converse", data, 4) == CONVERSE


def test_done_line_is_tolerated() -> None:
    assert read(TEXT, "converse", CONVERSE_TEXT + b"data: [DONE]\n\n") == CONVERSE


@pytest.mark.parametrize("split", [None, 1, 13])
def test_invoke_text(split: int | None) -> None:
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in ANTHROPIC) + b"data: [DONE]\n\n"
    assert read(TEXT, "invoke", data, split) == [BedrockEvent(str(e["type"]), e) for e in ANTHROPIC]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'data: {"message": "Too many requests"}', exception("error", "Too many requests")),
        (b'data: {"message": "bad", "__type": "ValidationException"}', exception("ValidationException", "bad")),
        (b'data: {"message": "m", "code": "429", "status": 429}', exception("429", "m")),
        (b'data: {"error": {"message": "e", "type": "rate_limit"}}', exception("rate_limit", "e")),
        (b'data: {"error": "plain"}', exception("error", "plain")),
        (b"data: {'throttlingException': {'message': 'slow down'}}", exception("throttlingException", "slow down")),
        (b'{"message": "no data prefix"}', exception("error", "no data prefix")),
    ],
)
def test_text_error_lines(line: bytes, expected: BedrockEvent) -> None:
    data = b"data: {'messageStart': {'role': 'assistant'}}\n\n" + line + b"\n\n"
    assert read(TEXT, "converse", data) == [CONVERSE[0], expected]


def test_invoke_text_error_event() -> None:
    line = b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    assert read(TEXT, "invoke", line) == [exception("overloaded_error", "Overloaded")]
    assert read(TEXT, "invoke", b'data: {"message": "nope"}\n\n') == [exception("error", "nope")]


def test_python_literals_are_normalised_to_json_types() -> None:
    line = b"data: {'contentBlockDelta': {'delta': {'text': 'a'}, 'contentBlockIndex': 0, 'x': (1, 2)}}\n"
    assert read(TEXT, "converse", line)[0].body["x"] == [1, 2]
    for bad in (b"data: {'metadata': {'x': b'raw'}}\n", b"data: {'metadata': {'x': {1, 2}}}\n"):
        assert read(TEXT, "converse", bad)[0].body["exceptionType"] == "invalidStreamData"
    # invoke's text framing is JSON only
    assert read(TEXT, "invoke", b"data: {'type': 'ping'}\n")[0].body["exceptionType"] == "invalidStreamData"


def test_comments_and_event_names_are_skipped() -> None:
    data = b": keepalive\n\nevent: chunk\n" + CONVERSE_TEXT
    assert read(TEXT, "converse", data) == CONVERSE


def test_last_line_without_newline_is_kept() -> None:
    assert read(TEXT, "converse", CONVERSE_TEXT.rstrip(b"\n")) == CONVERSE


def test_truncated_text_stream_at_finish() -> None:
    data = CONVERSE_TEXT + b"data: {'contentBlockDelta': {'delta': {'te"
    events = read(TEXT, "converse", data, 5)
    assert events[:-1] == CONVERSE
    assert events[-1].body["exceptionType"] == "truncatedStream"


@pytest.mark.parametrize("line", [b"data: not a dict", b"data: [1, 2]", b"data: {'a': 1, 'b': 2}", b"data: {'x': {}}"])
def test_garbage_text_stops_with_one_exception(line: bytes) -> None:
    events = read(TEXT, "converse", line + b"\n\n" + CONVERSE_TEXT)
    assert len(events) == 1 and events[0].body["exceptionType"] == "invalidStreamData"


def test_unknown_operation_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        BedrockStreamReader(TEXT, "chat")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=300) | st.lists(st.sampled_from(LINES), max_size=8).map(b"".join),
    st.sampled_from([EVENTSTREAM, TEXT]),
    st.sampled_from(["converse", "invoke"]),
    st.integers(1, 50),
)
def test_any_bytes_give_events_never_a_crash(data: bytes, content_type: str, operation: str, split: int) -> None:
    events = read(content_type, operation, data, split)
    assert all(isinstance(e, BedrockEvent) and isinstance(e.body, dict) for e in events)
    assert all(isinstance(e.body["exceptionType"], str) for e in events if e.type == "exception")


def test_invoke_events_keep_their_json_bytes_and_converse_events_do_not() -> None:
    event = b'{"type": "ping"}'
    (text,) = BedrockStreamReader("application/json", "invoke").feed(b"data: " + event + b"\n")
    assert text == BedrockEvent("ping", {"type": "ping"}) and text.raw == event
    kind, body = text
    assert (kind, body) == ("ping", {"type": "ping"})
    (converse,) = BedrockStreamReader("application/json", "converse").feed(b'data: {"messageStop": {}}\n')
    assert converse.type == "messageStop" and converse.raw is None


def _invoke_payloads(anthropic: dict[str, object]) -> list[bytes]:
    """One invoke chunk's payload as Bedrock and the simulator write it, and forms only JSON reads."""
    encoded = base64.b64encode(json.dumps(anthropic).encode()).decode()
    return [
        json.dumps({"bytes": encoded, "p": "abcdefgh"}, separators=(",", ":")).encode(),  # Bedrock's compact form
        json.dumps({"bytes": encoded, "p": "abcdefgh"}).encode(),  # the simulator's
        json.dumps({"bytes": encoded}).encode(),
        json.dumps({"p": "abc", "bytes": encoded}).encode(),  # other key order
        json.dumps({"bytes": encoded, "p": "a-b_c"}).encode(),  # padding with other characters
        json.dumps({"bytes": encoded.replace("/", "\\/")}).encode().replace(b"\\\\/", b"\\/"),  # JSON-escaped /
        b'{ "bytes" : "' + encoded.encode() + b'" }',
    ]


@pytest.mark.parametrize("number", range(len(ANTHROPIC)))
def test_every_written_form_of_an_invoke_chunk_reads_the_same(number: int) -> None:
    expected = [BedrockEvent(str(ANTHROPIC[number]["type"]), ANTHROPIC[number])]
    for payload in _invoke_payloads(ANTHROPIC[number]):
        assert read(EVENTSTREAM, "invoke", event("chunk", payload)) == expected, payload


@pytest.mark.parametrize("payload", [b'{"bytes":"e30"}', b'{"bytes":"!!!!"}', b'{"bytes":"e30=","p":"x"', b'{"bytes":""}'])
def test_broken_invoke_chunks_in_the_compact_form_are_invalid(payload: bytes) -> None:
    assert [e.body["exceptionType"] for e in read(EVENTSTREAM, "invoke", event("chunk", payload))] == [
        "invalidStreamData"]
