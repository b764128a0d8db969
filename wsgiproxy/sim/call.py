"""The contract between the inference gate and a provider dialect.

The gate (``inference.py``) authenticates, finds the deployment and its dialect, draws
a fault and sleeps the configured latency; a dialect only turns a :class:`Call` into a
response in its provider's wire format.  A new dialect is one module exposing a
:class:`Dialect`, registered in ``dialects.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from werkzeug.wrappers import Request, Response

from .catalog import Deployment
from .faults import Fault
from .settings import Settings
from .state import SimState


@dataclass(frozen=True)
class Call:
    """One inference request as a dialect sees it.

    :param body: the parsed JSON body, or ``None`` if it was missing or not JSON
        (then *body_error* says why).
    :param fault: the fault this request consumed, if any; streams apply its
        ``reset``/``stall`` (see ``streaming.py``), the gate applies the rest.
    """

    request: Request
    deployment: Deployment
    state: SimState
    settings: Settings
    route: Route
    request_id: str
    body: object
    body_error: str | None
    fault: Fault | None


Handler = Callable[[Call], Response]


@dataclass(frozen=True)
class Route:
    """One operation of a dialect, at a fixed path suffix below the deployment URL.

    :param name: the name counted in ``requests_by_path``.
    :param operation: the provider's operation name, used in default error messages.
    """

    name: str
    handler: Handler
    operation: str = ""


@dataclass(frozen=True)
class Dialect:
    """A provider's wire format, served for deployments of its executables.

    :param executables: executable ids served; an entry ending in ``*`` is a prefix.
    :param routes: path suffix (after ``{deploymentUrl}/``) → route.
    :param fault_error: builds a ``status`` fault's default body in the provider's shape.
    :param not_found: the provider's answer for a path suffix it does not know.
    :param defers_fault: whether the dialect applies a fault itself, mid-answer (Bedrock's
        event-stream exception frames); the gate then leaves that fault alone.
    """

    name: str
    executables: tuple[str, ...]
    routes: Mapping[str, Route]
    fault_error: Callable[[Fault, Call], Response]
    not_found: Callable[[Request, str], Response]
    defers_fault: Callable[[Fault, Call], bool] = lambda fault, call: False

    def serves(self, executable_id: str) -> bool:
        """Whether deployments of *executable_id* speak this dialect."""
        return any(
            executable_id.startswith(e[:-1]) if e.endswith("*") else executable_id == e for e in self.executables
        )

    def route(self, suffix: str) -> Route | None:
        """The route at *suffix*, if the dialect has one."""
        return self.routes.get(suffix)
