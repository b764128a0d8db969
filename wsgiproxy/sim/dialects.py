"""The one place dialects are registered: executable id → the wire format it speaks.

Adding a provider is one new module exposing a :class:`~.call.Dialect` plus one line here.
"""

from __future__ import annotations

from . import azure_openai, bedrock
from .call import Dialect

DIALECTS: tuple[Dialect, ...] = (azure_openai.DIALECT, bedrock.DIALECT)


def dialect_for(executable_id: str) -> Dialect | None:
    """The dialect serving deployments of *executable_id*, if the simulator has one."""
    return next((d for d in DIALECTS if d.serves(executable_id)), None)
