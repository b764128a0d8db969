"""Everything the simulator remembers between requests, behind one lock.

Settings, the fault queue, issued tokens and the counters of ``GET /_sim/stats`` live
here so that the WSGI app holds no state of its own.  Every method takes the lock
briefly and never sleeps while holding it, so it is safe under threads and under
gevent alike.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .catalog import DEFAULT_DEPLOYMENTS, Deployment
from .faults import Fault, FaultQueue
from .settings import Settings

DEFAULT_CLIENT_ID = "sim-client"
DEFAULT_CLIENT_SECRET = "sim-secret"

#: Stream outcomes counted by :meth:`SimState.stream_closed`.
STREAM_OUTCOMES = ("completed", "aborted", "reset")

_MAX_TOKENS = 10_000  # beyond this, tokens expired for a while are forgotten


@dataclass(frozen=True)
class IssuedToken:
    """A token handed out by the token endpoint."""

    value: str
    jti: str
    expires_in: int


class SimState:
    """The simulator's mutable state, shared by every request of one app.

    :param client_id: the client id the token endpoint accepts.
    :param client_secret: the client secret the token endpoint accepts.
    :param deployments: the catalog; defaults to :data:`~.catalog.DEFAULT_DEPLOYMENTS`.
    :param settings: the startup settings, restored by :meth:`reset`.
    :param clock: monotonic seconds, for token expiry; tests may pass a fake.
    """

    def __init__(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        deployments: Iterable[Deployment] = DEFAULT_DEPLOYMENTS,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.deployments: tuple[Deployment, ...] = tuple(deployments)
        self._by_id = {d.id: d for d in self.deployments}
        self._initial = settings or Settings()
        self._settings = self._initial
        self._clock = clock
        self._lock = threading.Lock()
        self._faults = FaultQueue()
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._counters: Counter[str] = Counter()
        self._by_route: Counter[str] = Counter()
        self._streams_open = 0
        self._last_inference: dict[str, object] | None = None

    # -- settings -------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The current settings (an immutable snapshot)."""
        return self._settings

    def update_settings(self, changes: Mapping[str, object]) -> Settings:
        """Apply *changes* (validated) and return the new settings."""
        with self._lock:
            self._settings = self._settings.updated(changes)
            return self._settings

    # -- catalog --------------------------------------------------------------------
    def deployment(self, deployment_id: str) -> Deployment | None:
        """The deployment with this id, if any."""
        return self._by_id.get(deployment_id)

    # -- faults ---------------------------------------------------------------------
    def add_faults(self, faults: Iterable[Fault]) -> None:
        """Queue faults; ``expire_tokens`` takes effect at once instead."""
        with self._lock:
            for fault in faults:
                if fault.kind == "expire_tokens":
                    self._expire_all_locked()
                else:
                    self._faults.add(fault)

    def take_fault(self, target: str, path: str) -> Fault | None:
        """Consume the first pending fault for *target* whose ``match`` is in *path*."""
        with self._lock:
            return self._faults.take(target, path)

    def pending_faults(self) -> list[dict[str, object]]:
        """Queued faults, oldest first."""
        with self._lock:
            return self._faults.pending()

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    # -- tokens ---------------------------------------------------------------------
    def issue_token(self, ttl: int | None = None) -> IssuedToken:
        """Mint a random opaque token valid for *ttl* seconds (default: the setting)."""
        ttl = self._settings.token_ttl if ttl is None else ttl
        value = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            if len(self._tokens) >= _MAX_TOKENS:
                self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now - 3600}
            self._tokens[value] = now + ttl
        return IssuedToken(value=value, jti=uuid.uuid4().hex, expires_in=ttl)

    def check_token(self, value: str) -> str:
        """``"valid"``, ``"expired"`` (expired or revoked) or ``"unknown"``."""
        with self._lock:
            expiry = self._tokens.get(value)
            if expiry is None:
                return "unknown"
            return "valid" if self._clock() < expiry else "expired"

    def expire_tokens(self) -> None:
        """Expire every token issued so far; their next use gets ``401 Jwt is expired``."""
        with self._lock:
            self._expire_all_locked()

    def _expire_all_locked(self) -> None:
        now = self._clock()
        for token in self._tokens:
            self._tokens[token] = min(self._tokens[token], now)

    # -- counters -------------------------------------------------------------------
    def count(self, route: str, *, inference: bool = False, token: bool = False) -> None:
        """Count one request to *route*."""
        with self._lock:
            self._by_route[route] += 1
            if inference:
                self._counters["inference_requests"] += 1
            if token:
                self._counters["token_requests"] += 1

    def record_inference(self, snapshot: dict[str, object]) -> None:
        """Remember the last inference request (already redacted)."""
        with self._lock:
            self._last_inference = snapshot

    def stream_opened(self) -> None:
        """A stream body was created."""
        with self._lock:
            self._streams_open += 1

    def stream_closed(self, outcome: str) -> None:
        """A stream body was closed; *outcome* is one of :data:`STREAM_OUTCOMES`."""
        with self._lock:
            self._streams_open -= 1
            self._counters[f"streams_{outcome}"] += 1

    def stats(self) -> dict[str, object]:
        """The counters as JSON-ready data."""
        with self._lock:
            return {
                "token_requests": self._counters["token_requests"],
                "inference_requests": self._counters["inference_requests"],
                "requests_by_path": dict(self._by_route),
                "streams_open": self._streams_open,
                "streams_completed": self._counters["streams_completed"],
                "streams_aborted": self._counters["streams_aborted"],
                "streams_reset": self._counters["streams_reset"],
                "faults_pending": len(self._faults),
                "last_inference": self._last_inference,
            }

    def reset(self) -> None:
        """Clear faults and counters and restore the startup settings; tokens stay valid.

        ``streams_open`` is not zeroed: streams still running will close and decrement it.
        """
        with self._lock:
            self._faults.clear()
            self._counters.clear()
            self._by_route.clear()
            self._last_inference = None
            self._settings = self._initial
