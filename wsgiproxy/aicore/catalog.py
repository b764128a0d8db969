"""Which deployments serve a model, and which one a request goes to.

Client-visible model names are the keys of ``deployment_models``/``deployment_ids`` across all
subaccounts. Selection is round-robin over the subaccounts that serve the model, then over that
subaccount's deployment URLs, as the original proxy did (failover comes later).
"""

from __future__ import annotations

import itertools
import typing as t
from dataclasses import dataclass

from ..errors import WsgiproxyError

if t.TYPE_CHECKING:
    from ..config import Settings, SubAccount

OPENAI = "openai"
BEDROCK = "bedrock"
VERTEX = "vertex"


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

    @property
    def family(self) -> str:
        return model_family(self.model)

    @property
    def id(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def model_family(model: str) -> str:
    """The upstream dialect a SAP model name speaks (Azure OpenAI unless it is Claude/Gemini/Amazon)."""
    name = model.lower()
    if name.startswith(("anthropic--", "amazon--")) or "claude" in name:
        return BEDROCK
    if name.startswith("gemini"):
        return VERTEX
    return OPENAI


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
        return model in self._groups

    def pick(self, model: str) -> Deployment:
        """The next deployment for ``model``, round-robin across subaccounts, then URLs."""
        groups = self._groups.get(model)
        if groups is None:
            raise UnknownModel(model, self.models())
        index = next(self._model_turns[model]) % len(groups)
        group = groups[index]
        return group[next(self._url_turns[(model, index)]) % len(group)]
