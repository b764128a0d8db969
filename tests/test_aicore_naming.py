"""Model names: the family comes from the SAP name an alias resolves to, never from the alias."""

from __future__ import annotations

import pytest

from wsgiproxy.aicore import naming
from wsgiproxy.aicore.catalog import Catalog, UnknownModel
from wsgiproxy.config import Credentials, Settings, SubAccount

CREDS = Credentials("id", "secret", "https://auth.example/oauth/token", "https://api.example")


def catalog(models: list[str], aliases: dict[str, str] | None = None) -> Catalog:
    deployments = {m: (f"https://api.example/v2/inference/deployments/{i:016x}",) for i, m in enumerate(models)}
    sub = SubAccount("a", CREDS, "default", deployments)
    return Catalog(Settings(subaccounts=(sub,), model_aliases=aliases or {}))


@pytest.mark.parametrize(("sap_model", "family", "claude"), [
    ("anthropic--claude-4.5-sonnet", naming.BEDROCK, True),
    ("amazon--nova-pro", naming.BEDROCK, False),
    ("gemini-2.5-flash", naming.VERTEX, False),
    ("gpt-4o", naming.OPENAI, False),
    ("mistralai--mistral-small-instruct", naming.OPENAI, False),
    ("meta--llama3.1-70b-instruct", naming.OPENAI, False),
    ("claude-lookalike", naming.OPENAI, False),  # no vendor prefix: not guessed from the substring
])
def test_family_from_the_sap_name(sap_model: str, family: str, claude: bool) -> None:
    assert naming.family(sap_model) == family
    assert naming.is_claude(sap_model) is claude


@pytest.mark.parametrize(("client_name", "sap_model"), [
    ("anthropic--claude-4.5-sonnet", "anthropic--claude-4.5-sonnet"),
    ("claude-sonnet-4-5", "anthropic--claude-4.5-sonnet"),
    ("claude-sonnet-4-5-20250929", "anthropic--claude-4.5-sonnet"),
    ("claude-opus-4-6", "anthropic--claude-4.6-opus"),
    ("claude-3-7-sonnet-20250219", "anthropic--claude-3.7-sonnet"),
    ("claude-3-7-sonnet-latest", "anthropic--claude-3.7-sonnet"),
    ("claude-haiku-4-5", "anthropic--claude-4.5-haiku"),
])
def test_anthropic_ids_reach_the_sap_model(client_name: str, sap_model: str) -> None:
    cat = catalog(["anthropic--claude-4.5-sonnet", "anthropic--claude-4.6-opus", "anthropic--claude-3.7-sonnet",
                   "anthropic--claude-4.5-haiku", "gpt-4o"])
    deployment = cat.pick(client_name)
    assert deployment.model == sap_model
    assert deployment.family == naming.BEDROCK
    assert client_name in cat


def test_aliases_from_config_extend_and_override() -> None:
    cat = catalog(["gpt-4o", "anthropic--claude-4.5-sonnet"],
                  {"my-claude": "gpt-4o", "claude-sonnet-4-5": "gpt-4o"})
    assert cat.pick("my-claude").family == naming.OPENAI  # the family of the target, not of the alias
    assert cat.pick("claude-sonnet-4-5").model == "gpt-4o"
    assert cat.models() == ["anthropic--claude-4.5-sonnet", "gpt-4o"]  # aliases are not listed


def test_an_alias_to_an_unconfigured_model_is_unknown() -> None:
    cat = catalog(["gpt-4o"])
    with pytest.raises(UnknownModel) as info:
        cat.pick("claude-sonnet-4-5")
    assert info.value.available == ("gpt-4o",)
    assert "claude-sonnet-4-5" not in cat
