"""The simulator's runtime knobs, declared once with their defaults and units.

Settings are a frozen value: a change through ``POST /_sim/settings`` builds a new
one with :meth:`Settings.updated`, so a request that already read the settings keeps
a consistent view while another thread changes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

#: The token lifetime real XSUAA hands out for AI Core service keys, in seconds.
DEFAULT_TOKEN_TTL = 43199


@dataclass(frozen=True)
class Settings:
    """Latency and shape knobs of the simulator.

    :param latency_ms: milliseconds slept before answering each inference call.
    :param chunk_delay_ms: milliseconds slept between two events of a stream.
    :param token_ttl: seconds a new token lives; sent as ``expires_in``.
    :param token_latency_ms: milliseconds slept before answering a token request
        (lets a test hold many callers inside one token fetch).
    :param chunks: force this many content chunks per streamed answer;
        ``None`` streams one chunk per word.
    """

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    token_ttl: int = DEFAULT_TOKEN_TTL
    token_latency_ms: float = 0.0
    chunks: int | None = None

    def __post_init__(self) -> None:
        for name in ("latency_ms", "chunk_delay_ms", "token_latency_ms"):
            _check_number(name, getattr(self, name))
        if isinstance(self.token_ttl, bool) or not isinstance(self.token_ttl, int) or self.token_ttl < 0:
            raise ValueError(f"token_ttl must be a non-negative integer, got {self.token_ttl!r}")
        if self.chunks is not None and (
            isinstance(self.chunks, bool) or not isinstance(self.chunks, int) or self.chunks < 1
        ):
            raise ValueError(f"chunks must be a positive integer or null, got {self.chunks!r}")

    def updated(self, changes: Mapping[str, object]) -> Settings:
        """Return a copy with *changes* applied; unknown names raise :class:`ValueError`."""
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        """The settings as JSON-ready data."""
        return dataclasses.asdict(self)


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
