"""The fake upstream's Claude stream (tests/bench/payloads.py, targets.py): valid Bedrock invoke messages that
the proxy's reader turns into the Anthropic events they carry."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench import payloads as p
from tests.bench.targets import upstream_conf, write_proxy_config
from wsgiproxy.dialects.anthropic import MessagesStream
from wsgiproxy.dialects.bedrock import EVENTSTREAM, BedrockStreamReader


def test_invoke_frames_carry_the_anthropic_events() -> None:
    events = p.anthropic_events()
    assert len(events) == p.CHUNKS
    reader = BedrockStreamReader(EVENTSTREAM, "invoke")
    read = reader.feed(b"".join(p.invoke_frame(event) for event in events)) + reader.finish()
    assert [event.body for event in read] == [json.loads(event) for event in events]


def test_the_stream_relayed_as_anthropic_sse_is_complete() -> None:
    stream = MessagesStream(p.CLAUDE_MODEL, EVENTSTREAM)
    out = b"".join(b"".join(stream.feed(p.invoke_frame(event))) for event in p.anthropic_events())
    out += b"".join(stream.finish())
    assert out.count(b"data: ") == p.CHUNKS and out.endswith(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
    assert stream.token_counts() == (41, p.CHUNKS - 5)


def test_the_upstream_conf_serves_each_message_from_a_file(tmp_path: Path) -> None:
    conf = upstream_conf(tmp_path, 12345)
    frames = sorted((tmp_path / "claude-frames").iterdir(), key=lambda path: int(path.stem))
    assert b"".join(path.read_bytes() for path in frames) == b"".join(
        p.invoke_frame(event) for event in p.anthropic_events())
    assert f"/v2/inference/deployments/{p.CLAUDE_DEPLOYMENT}/invoke-with-response-stream" in conf
    assert conf.count("echo_location /claude-frames/") == p.CHUNKS



def test_the_proxy_config_routes_the_claude_model_to_that_stream(tmp_path: Path) -> None:
    config = json.loads(write_proxy_config(tmp_path, "http://127.0.0.1:12345").read_text())
    models = config["subAccounts"]["bench"]["deployment_models"]
    assert models[p.CLAUDE_MODEL] == [f"http://127.0.0.1:12345/v2/inference/deployments/{p.CLAUDE_DEPLOYMENT}"]
    assert json.loads(p.messages_request())["model"] == p.CLAUDE_MODEL
