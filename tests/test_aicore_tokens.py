"""Token caching: reuse, early refresh, single flight, invalidation, and the XSUAA exchange."""

from __future__ import annotations

import threading
import time
from urllib.parse import parse_qs

import pytest

from tests.fakes import FakeTransport, response
from wsgiproxy.aicore.tokens import TokenCache, fetch_token
from wsgiproxy.config import Credentials
from wsgiproxy.errors import TokenError, UpstreamUnreachable

CREDS = Credentials("client", "secret", "https://auth.example/oauth/token", "https://api.example")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reused_until_the_margin_then_refreshed() -> None:
    clock = Clock()
    issued = iter(["a", "b", "c"])
    cache = TokenCache(lambda: (next(issued), 3600.0), margin=300, clock=clock)
    assert cache.get() == "a"
    clock.now += 3299
    assert cache.get() == "a"
    clock.now += 2
    assert cache.get() == "b"
    assert cache.fetches == 2


def test_short_lived_tokens_live_half_their_life() -> None:
    clock = Clock()
    issued = iter(["a", "b"])
    cache = TokenCache(lambda: (next(issued), 100.0), margin=300, clock=clock)
    assert cache.get() == "a"
    clock.now += 49
    assert cache.get() == "a"
    clock.now += 2
    assert cache.get() == "b"


def test_single_flight_under_50_concurrent_callers() -> None:
    calls = []

    def slow_fetch() -> tuple[str, float]:
        calls.append(1)
        time.sleep(0.2)
        return "only", 3600.0

    cache = TokenCache(slow_fetch, margin=300)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get())) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == ["only"] * 50
    assert len(calls) == 1


def test_invalidate_only_the_token_that_failed() -> None:
    issued = iter(["a", "b", "c"])
    cache = TokenCache(lambda: (next(issued), 3600.0), margin=300)
    assert cache.get() == "a"
    cache.invalidate("a")
    assert cache.get() == "b"
    cache.invalidate("a")  # a late 401 for the old token must not throw away the new one
    assert cache.get() == "b"


def test_a_failed_fetch_is_not_cached() -> None:
    answers = iter([TokenError("down"), ("ok", 3600.0)])

    def fetch() -> tuple[str, float]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cache = TokenCache(fetch, margin=300)
    with pytest.raises(TokenError):
        cache.get()
    assert cache.get() == "ok"


def test_fetch_token_sends_client_credentials() -> None:
    transport = FakeTransport(token_answer=response(200, {"access_token": "T", "expires_in": "43199"}))
    assert fetch_token(transport, CREDS, 5) == ("T", 43199.0)  # type: ignore[arg-type]
    (sent,) = transport.sent
    assert sent.method == "POST" and sent.url == CREDS.auth_url
    assert parse_qs(sent.body.decode()) == {"grant_type": ["client_credentials"], "client_id": ["client"],
                                            "client_secret": ["secret"]}
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (response(401, {"error": "unauthorized", "error_description": "Bad credentials"}), "401: Bad credentials"),
        (response(200, b"not json"), "has no access_token"),
        (response(200, {"access_token": ""}), "empty access_token"),
        (UpstreamUnreachable("cannot connect to auth.example"), "cannot connect"),
    ],
)
def test_fetch_token_failures(answer: object, expected: str) -> None:
    transport = FakeTransport(token_answer=lambda: answer)
    with pytest.raises(TokenError, match=expected) as info:
        fetch_token(transport, CREDS, 5)  # type: ignore[arg-type]
    assert "secret" not in str(info.value)
