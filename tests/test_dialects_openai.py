"""The OpenAI chat passthrough: request fixes and stream filtering over recorded streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgiproxy.dialects.openai import ChatStream, chat_upstream_body, error_event, passes_through

FIXTURES = Path(__file__).parent / "fixtures" / "sse"


def run(name: str, client_wants_usage: bool, split: int | None = None) -> tuple[list[bytes], ChatStream]:
    data = (FIXTURES / name).read_bytes()
    stream = ChatStream(client_wants_usage)
    pieces = [data] if split is None else [data[i : i + split] for i in range(0, len(data), split)]
    out: list[bytes] = []
    for piece in pieces:
        out += stream.feed(piece)
    out += stream.finish()
    return out, stream


def payloads(events: list[bytes]) -> list[object]:
    result: list[object] = []
    for element in events:  # an element is one event, or several passed on as they came
        assert element.startswith(b"data: ") and element.endswith(b"\n\n"), element
        for event in element[:-2].split(b"\n\n"):
            data = event[6:]
            result.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return result


@pytest.mark.parametrize("name", ["azure_chat_usage.sse", "azure_chat_usage_crlf.sse"])
@pytest.mark.parametrize("split", [None, 1, 7, 100])
def test_usage_chunk_only_when_asked(name: str, split: int | None) -> None:
    without, stream = run(name, client_wants_usage=False, split=split)
    items = payloads(without)
    assert items[-1] == "[DONE]" and items.count("[DONE]") == 1
    assert all(isinstance(i, str) or i["choices"] for i in items), "no empty-choices chunk reaches the client"
    assert [i["choices"][0]["delta"].get("content") for i in items[:-1]] == ["", "Hello", " world", "!", None]
    assert stream.usage == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}

    with_usage, stream = run(name, client_wants_usage=True, split=split)
    items = payloads(with_usage)
    assert items[-2]["choices"] == [] and items[-2]["usage"]["total_tokens"] == 12
    assert items.count("[DONE]") == 1 and len(items) == len(without) + 1


def test_each_event_is_its_own_chunk() -> None:
    out, _ = run("azure_chat_usage.sse", client_wants_usage=True)
    assert all(chunk.count(b"data: ") == 1 for chunk in out)


def test_second_done_is_dropped() -> None:
    out, _ = run("double_done.sse", client_wants_usage=False)
    assert payloads(out).count("[DONE]") == 1


def test_keepalive_comments_are_dropped() -> None:
    out, _ = run("comments_and_keepalives.sse", client_wants_usage=False)
    assert payloads(out)[-1] == "[DONE]" and len(out) == 4


def test_truncated_stream_ends_with_an_error_event() -> None:
    out, stream = run("truncated.sse", client_wants_usage=False)
    items = payloads(out)
    assert "[DONE]" not in items
    assert items[-1]["error"]["code"] == "upstream_error"
    assert not stream.done


def test_stream_without_done_but_finished_gets_one() -> None:
    stream = ChatStream(False)
    body = b'data: {"choices":[{"delta":{},"finish_reason":"stop","index":0}]}\n\n'
    assert stream.feed(body) == [body]
    assert stream.finish() == [b"data: [DONE]\n\n"]


def test_request_body_untouched_when_not_streaming() -> None:
    raw = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
    assert chat_upstream_body(json.loads(raw), raw) == (raw, False)


def test_streaming_request_asks_for_usage() -> None:
    raw = b'{"model":"gpt-4o","messages":[],"stream":true,"stream_options":{"foo":1}}'
    body, wants = chat_upstream_body(json.loads(raw), raw)
    assert wants is False
    assert json.loads(body)["stream_options"] == {"foo": 1, "include_usage": True}


@pytest.mark.parametrize("raw", [
    b'{"model":"gpt-4o","messages":[],"stream":true}',
    b'  \n{ "stream" : true, "model": "gpt-4o", "messages": [{"content": "{ not a brace"}] }  ',
])
def test_streaming_request_gains_the_usage_option_without_being_re_encoded(raw: bytes) -> None:
    body, wants = chat_upstream_body(json.loads(raw), raw)
    assert wants is False
    assert json.loads(body) == {**json.loads(raw), "stream_options": {"include_usage": True}}
    assert raw.strip().rstrip(b"}") in body.replace(b'"stream_options":{"include_usage":true},', b"")


@given(st.dictionaries(st.text(max_size=5).filter(lambda k: k != "stream_options"), st.text(max_size=5), max_size=4),
       st.booleans())
def test_the_usage_option_keeps_any_body_valid(extra: dict, pretty: bool) -> None:
    body = {**extra, "stream": True}
    raw = json.dumps(body, indent=1 if pretty else None, ensure_ascii=False).encode()
    sent, _ = chat_upstream_body(body, raw)
    assert json.loads(sent) == {**body, "stream_options": {"include_usage": True}}


def test_streaming_request_that_asked_for_usage_is_untouched() -> None:
    raw = b'{"model":"gpt-4o","messages":[],"stream":true,"stream_options":{"include_usage":true}}'
    assert chat_upstream_body(json.loads(raw), raw) == (raw, True)


def test_error_event_is_what_the_openai_sdk_raises_on() -> None:
    event = error_event("boom")
    assert json.loads(event[6:-2]) == {"error": {"message": "boom", "type": "api_error", "param": None,
                                                 "code": "upstream_error"}}


def test_plain_reads_pass_through_as_the_decoder_would_give_them() -> None:
    events = [b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null,"index":0}]}\n\n',
              b'data: {"choices":[{"delta":{},"finish_reason":"stop","index":0}]}\n\n']
    stream = ChatStream(False)
    assert stream.feed(events[0]) == [events[0]] and not stream.finished
    assert stream.feed(b"".join(events)) == [b"".join(events)] and stream.finished  # one element, as it came
    assert stream.feed(b"data: [DONE]\n\n") == [b"data: [DONE]\n\n"]
    assert stream.feed(events[0]) == [], "nothing after [DONE]"


def test_passes_through_only_whole_content_events() -> None:
    content = b'data: {"choices":[{"delta":{"content":"a"},"index":0}]}\n\n'
    assert passes_through(content) and passes_through(content * 3)
    for chunk in (
        b'data: {"choices":[],"usage":{"total_tokens":2}}\n\n',  # usage-only
        b'data: {"choices": [],"prompt_filter_results":[]}\n\n',  # Azure's filter chunk, spaced
        content + b"data: [DONE]\n\n",
        content + b'data: {"choices":[]}\n\n',
        content[:-1], content[:-2], content + content[:20],  # an event cut short
        content.replace(b"\n\n", b"\r\n\r\n"),
        b"event: x\n" + content, b": ping\n\n" + content, content + b": ping\n\n",
        b'data: {"a":1}\ndata: {"choices":[{"b":2}]}\n\n',  # two data lines: one event joined by LF
        content + b"\n" + content,  # an extra blank line
        b'data: {"choices": [{"delta":{}}]}\n\n',  # spaced: decoded the slow way (same output)
        b"",
    ):
        assert not passes_through(chunk), chunk


_EVENTS = st.sampled_from([
    b'data: {"choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null,"index":0}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"hi \\"finish_reason\\":\\"x\\" [DONE]"},"index":0}]}\n\n',
    b'data: {"choices": [{"delta":{"content":"spaced"},"finish_reason": null}]}\n\n',
    b'data: {"choices":[{"delta":{},"finish_reason":"stop","index":0}]}\n\n',
    b'data: {"choices":[{"delta":{},"finish_reason": "length","index":0}]}\r\n\r\n',
    b'data: {"choices":[],"prompt_filter_results":[{"prompt_index":0}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n',
    b": keep-alive\n\n",
    b"data: [DONE]\n\n",
])


@given(st.lists(_EVENTS, max_size=12), st.lists(st.integers(1, 400), max_size=8), st.booleans())
def test_passing_reads_through_gives_what_decoding_every_event_gives(events: list[bytes], cuts: list[int],
                                                                     wants_usage: bool) -> None:
    data = b"".join(events)
    pieces, at = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(data[at:cut])
        at = cut
    pieces.append(data[at:])
    fast, slow = ChatStream(wants_usage), ChatStream(wants_usage)
    fast_out = b"".join(b"".join(fast.feed(piece)) for piece in pieces if piece) + b"".join(fast.finish())
    slow_out = b"".join(b"".join(slow.feed(data[i:i + 1])) for i in range(len(data))) + b"".join(slow.finish())
    assert fast_out == slow_out  # one byte per read never passes through whole
    assert (fast.finished, fast.done, fast.usage) == (slow.finished, slow.done, slow.usage)
