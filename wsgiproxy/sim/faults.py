"""Injected faults: their JSON form, validation, and the queue requests draw from.

A fault is queued through ``POST /_sim/faults`` and consumed by the next matching
requests, ``times`` of them.  Each request consumes at most one fault: the first
queued one whose ``target`` and ``match`` fit.  Kinds:

``status``
    answer ``status`` (default 500) with ``body`` or the provider's error shape;
    ``retry_after`` (seconds) becomes a ``Retry-After`` header (429 defaults to 1).
    With ``after_chunks`` >= 1 on a Bedrock event-stream, sent instead as an exception
    frame after that many events (``bedrock.py``).
``delay``
    sleep ``seconds`` before answering (for upstream-timeout tests).
``reset``
    break the TCP connection: in a stream after ``after_chunks`` events, otherwise
    before any response byte.
``stall``
    in a stream, stop for ``seconds`` after ``after_chunks`` events; otherwise the
    same as ``delay``.
``expire_tokens``
    not queued: applied when posted, it expires every token issued so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

KINDS = ("status", "delay", "reset", "stall", "expire_tokens")
#: What a fault can hit: inference calls, the token endpoint, or the AI API (``/v2/lm``).
TARGETS = ("inference", "token", "lm")

_FIELDS = {
    "kind", "times", "match", "target", "status", "retry_after", "body", "headers", "seconds", "after_chunks",
}


@dataclass(frozen=True)
class Fault:
    """One validated fault; see the module docstring for the meaning of each kind."""

    kind: str
    times: int = 1
    match: str = ""
    target: str = "inference"
    status: int = 500
    retry_after: float | None = None
    body: object = None
    headers: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    after_chunks: int = 0

    @classmethod
    def parse(cls, raw: object) -> Fault:
        """Build a fault from its JSON object, naming the offending field on error."""
        if not isinstance(raw, dict):
            raise ValueError(f"a fault must be a JSON object, got {raw!r}")
        unknown = sorted(set(raw) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        kind = raw.get("kind")
        if kind not in KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(KINDS)}, got {kind!r}")
        target = raw.get("target", "inference")
        if target not in TARGETS:
            raise ValueError(f"fault target must be one of {', '.join(TARGETS)}, got {target!r}")
        match = raw.get("match", "")
        if not isinstance(match, str):
            raise ValueError("fault match must be a string")
        headers = raw.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError("fault headers must be an object of strings")
        status = _int(raw, "status", 500, low=100)
        if status > 599:
            raise ValueError(f"fault status must be 100..599, got {status}")
        retry_after = raw.get("retry_after")
        if retry_after is not None:
            retry_after = _number(raw, "retry_after", 0.0)
        return cls(
            kind=kind,
            times=_int(raw, "times", 1, low=1),
            match=match,
            target=target,
            status=status,
            retry_after=retry_after,
            body=raw.get("body"),
            headers=dict(headers),
            seconds=_number(raw, "seconds", 0.0),
            after_chunks=_int(raw, "after_chunks", 0, low=0),
        )

    def as_dict(self) -> dict[str, object]:
        """The fault as JSON-ready data (for ``GET /_sim/faults``)."""
        return {
            "kind": self.kind, "times": self.times, "match": self.match, "target": self.target,
            "status": self.status, "retry_after": self.retry_after, "body": self.body,
            "headers": dict(self.headers), "seconds": self.seconds, "after_chunks": self.after_chunks,
        }


@dataclass
class _Entry:
    fault: Fault
    remaining: int


class FaultQueue:
    """Pending faults with their remaining uses; not locked itself (SimState locks it)."""

    def __init__(self) -> None:
        self._pending: list[_Entry] = []

    def add(self, fault: Fault) -> None:
        """Queue *fault* for its ``times`` matching requests."""
        self._pending.append(_Entry(fault, fault.times))

    def take(self, target: str, path: str) -> Fault | None:
        """Consume one use of the first fault matching *target* and *path*."""
        for index, entry in enumerate(self._pending):
            if entry.fault.target == target and entry.fault.match in path:
                entry.remaining -= 1
                if entry.remaining <= 0:
                    del self._pending[index]
                return entry.fault
        return None

    def pending(self) -> list[dict[str, object]]:
        """Queued faults with their remaining uses, oldest first."""
        return [{**entry.fault.as_dict(), "remaining": entry.remaining} for entry in self._pending]

    def clear(self) -> None:
        """Drop every pending fault."""
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)


def _int(raw: Mapping[str, object], name: str, default: int, *, low: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"fault {name} must be an integer >= {low}, got {value!r}")
    return value


def _number(raw: Mapping[str, object], name: str, default: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"fault {name} must be a non-negative number, got {value!r}")
    return float(value)
