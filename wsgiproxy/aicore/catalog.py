"""Which deployments serve a model, and which one a request goes to.

Client-visible model names are the keys of ``deployment_models``/``deployment_ids`` across all
subaccounts, plus the aliases of :mod:`.naming` and ``model_aliases`` that point at one.
Selection is round-robin over the subaccounts that serve the model, then over that subaccount's
deployment URLs, as the original proxy did (failover comes later).
"""

from __future__ import annotations

import functools
import itertools
import typing as t
from dataclasses import dataclass

from ..errors import WsgiproxyError
from . import naming
from .naming import BEDROCK, OPENAI, VERTEX

if t.TYPE_CHECKING:
    from ..config import Settings, SubAccount

__all__ = ["BEDROCK", "OPENAI", "VERTEX", "Catalog", "Deployment", "UnknownModel"]


class UnknownModel(WsgiproxyError):
    """No deployment serves the model; ``available`` lists the models that exist."""

    def __init__(self, model: str, available: t.Sequence[str]) -> None:
        super().__init__(model)
        self.model = model
        self.available = tuple(available)


@dataclass(frozen=True)
class Deployment:
    """One deployment URL of one subaccount, under the model name clients use."""

    model: str
    url: str
    subaccount: SubAccount

    # Read on every request (routing, metrics, the usage line): worked out once per deployment.
    @functools.cached_property
    def family(self) -> str:
        return naming.family(self.model)

    @functools.cached_property
    def is_claude(self) -> bool:
        return naming.is_claude(self.model)

    @functools.cached_property
    def id(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


class Catalog:
    """Model name → deployments, built once from settings; picks one per request."""

    def __init__(self, settings: Settings) -> None:
        by_model: dict[str, dict[str, list[Deployment]]] = {}
        for sub in settings.subaccounts:
            for model, urls in sub.deployments.items():
                if not settings.model_filters.allows(model):
                    continue
                by_model.setdefault(model, {}).setdefault(sub.name, []).extend(
                    Deployment(model=model, url=url, subaccount=sub) for url in urls
                )
        self._aliases = {**naming.CLAUDE_ALIASES, **settings.model_aliases}
        self._groups: dict[str, tuple[tuple[Deployment, ...], ...]] = {
            model: tuple(tuple(deps) for deps in subs.values()) for model, subs in by_model.items()
        }
        # itertools.count's next() is atomic under the GIL: safe for threads and greenlets alike.
        self._model_turns = {model: itertools.count() for model in self._groups}
        self._url_turns = {
            (model, i): itertools.count() for model, groups in self._groups.items() for i in range(len(groups))
        }

    def models(self) -> list[str]:
        return sorted(self._groups)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.resolve(model) is not None

    def resolve(self, model: str) -> str | None:
        """The configured SAP model name a client's model name means, if any."""
        return next((name for name in naming.candidates(model, self._aliases) if name in self._groups), None)

    def pick(self, model: str) -> Deployment:
        """The next deployment for ``model`` (a SAP name or an alias), round-robin across subaccounts, then URLs."""
        groups = self._groups.get(model)
        if groups is None:
            resolved = self.resolve(model)
            if resolved is None:
                raise UnknownModel(model, self.models())
            model, groups = resolved, self._groups[resolved]
        index = next(self._model_turns[model]) % len(groups)
        group = groups[index]
        return group[next(self._url_turns[(model, index)]) % len(group)]
