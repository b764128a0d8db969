"""What one request did, filled in as it travels and reported once when its response closes.

Endpoints set the model and deployment; translators report token counts; the app wrapper sets the
status, the time to first byte and the end. The usage log and the metrics read this record only,
so no endpoint knows how either is written.
"""

from __future__ import annotations

import time
import typing as t
from dataclasses import dataclass, field

if t.TYPE_CHECKING:
    from .aicore.catalog import Deployment


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    endpoint: str = "-"
    key_id: str = "-"
    model: str | None = None
    deployment: Deployment | None = None
    streamed: bool = False
    status: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    ended: float | None = None
    disconnected: bool = False  # the client went away before the stream ended

    def use(self, deployment: Deployment, *, streamed: bool = False) -> None:
        """The request goes to ``deployment``: the model is the deployment's SAP model name."""
        self.deployment = deployment
        self.model = deployment.model
        self.streamed = streamed

    def tokens(self, prompt: int | None, completion: int | None) -> None:
        if prompt is not None:
            self.prompt_tokens = prompt
        if completion is not None:
            self.completion_tokens = completion
