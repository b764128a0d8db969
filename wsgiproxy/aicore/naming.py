"""What a SAP AI Core model name says: the wire dialect it speaks, and the client names it answers to.

SAP names models ``vendor--model`` (``anthropic--claude-4.5-sonnet``, ``mistralai--mistral-small-instruct``)
except OpenAI's and Google's (``gpt-4o``, ``gemini-2.5-flash``). The vendor decides the executable
AI Core runs it under, and so the dialect: Anthropic and Amazon models are ``aws-bedrock``, Gemini is
``gcp-vertexai``, everything else speaks the OpenAI chat-completions format (``azure-openai`` and the
SAP-hosted ``aicore-*`` executables). The dialect is read from the SAP name a client name resolves
to, never guessed from the client's name, so an alias such as ``my-claude → gpt-4o`` stays OpenAI.

Clients such as Claude Code send Anthropic's own ids (``claude-sonnet-4-5-20250929``); the alias
table maps them to SAP names. A trailing date (``-20250929``) or ``-latest`` is ignored when the
full id is not itself configured or aliased.
"""

from __future__ import annotations

import re
import typing as t

OPENAI = "openai"
BEDROCK = "bedrock"
VERTEX = "vertex"

_BEDROCK_VENDORS = frozenset({"anthropic", "amazon"})
_VERSION_SUFFIX = re.compile(r"-(?:\d{8}|latest)$")

# Anthropic model ids → SAP AI Core model names; extend or override with `model_aliases` in config.json.
CLAUDE_ALIASES: t.Mapping[str, str] = {
    "claude-opus-4-7": "anthropic--claude-4.7-opus",
    "claude-opus-4-6": "anthropic--claude-4.6-opus",
    "claude-sonnet-4-6": "anthropic--claude-4.6-sonnet",
    "claude-opus-4-5": "anthropic--claude-4.5-opus",
    "claude-sonnet-4-5": "anthropic--claude-4.5-sonnet",
    "claude-haiku-4-5": "anthropic--claude-4.5-haiku",
    "claude-opus-4-1": "anthropic--claude-4.1-opus",
    "claude-opus-4-0": "anthropic--claude-4-opus",
    "claude-opus-4": "anthropic--claude-4-opus",
    "claude-sonnet-4-0": "anthropic--claude-4-sonnet",
    "claude-sonnet-4": "anthropic--claude-4-sonnet",
    "claude-3-7-sonnet": "anthropic--claude-3.7-sonnet",
    "claude-3-5-sonnet": "anthropic--claude-3.5-sonnet",
    "claude-3-5-haiku": "anthropic--claude-3.5-haiku",
    "claude-3-haiku": "anthropic--claude-3-haiku",
    "claude-3-opus": "anthropic--claude-3-opus",
}


def vendor(sap_model: str) -> str:
    """The vendor part of a SAP model name: ``anthropic`` for ``anthropic--claude-4.5-sonnet``."""
    head, sep, _ = sap_model.partition("--")
    if sep:
        return head.lower()
    if sap_model.lower().startswith("gemini"):
        return "google"
    return "openai"


def family(sap_model: str) -> str:
    """The upstream dialect family of a SAP model name."""
    owner = vendor(sap_model)
    if owner in _BEDROCK_VENDORS:
        return BEDROCK
    if owner == "google":
        return VERTEX
    return OPENAI


def is_claude(sap_model: str) -> bool:
    """Whether the model speaks Anthropic's Messages format on Bedrock ``invoke``."""
    return vendor(sap_model) == "anthropic"


def candidates(name: str, aliases: t.Mapping[str, str]) -> t.Iterator[str]:
    """SAP names a client's model name may mean, most specific first."""
    yield name
    if name in aliases:
        yield aliases[name]
    base = _VERSION_SUFFIX.sub("", name)
    if base != name:
        yield base
        if base in aliases:
            yield aliases[base]
