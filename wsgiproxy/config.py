"""Every setting in one place, validated once at start.

Two sources feed one immutable :class:`Settings`:

- the original proxy's ``config.json`` (``subAccounts``, ``secret_authentication_tokens``,
  ``host``, ``port``, ``model_filters`` and the legacy flat form), read unchanged so its users
  can point wsgiproxy at the same file;
- the tunables declared in :data:`TUNABLES`, each with one JSON key, one ``WSGIPROXY_*``
  environment variable (which wins), a coercer, a default and a line of documentation.

A single subaccount may instead come from ``AICORE_SERVICE_KEY`` or the separate
``AICORE_CLIENT_ID``/``AICORE_CLIENT_SECRET``/``AICORE_AUTH_URL``/``AICORE_BASE_URL``/
``AICORE_RESOURCE_GROUP`` variables, as the SAP SDKs read them.

Anything wrong raises :class:`~wsgiproxy.errors.ConfigError` whose message is one line naming
the source, the key and what was expected.
"""

from __future__ import annotations

import json
import os
import re
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

DEFAULT_CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Credentials:
    """What it takes to get an OAuth token and reach the AI API of one subaccount."""

    client_id: str
    client_secret: str = field(repr=False)
    auth_url: str  # the token endpoint, ending in /oauth/token
    api_url: str  # AI_API_URL, without /v2


@dataclass(frozen=True)
class SubAccount:
    """One SAP AI Core tenant: its credentials, resource group and deployments by model name."""

    name: str
    credentials: Credentials
    resource_group: str = "default"
    deployments: t.Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelFilters:
    include: tuple[re.Pattern[str], ...] = ()
    exclude: tuple[re.Pattern[str], ...] = ()

    def allows(self, model: str) -> bool:
        if self.include and not any(p.search(model) for p in self.include):
            return False
        return not any(p.search(model) for p in self.exclude)


# --------------------------------------------------------------------------------------------
# Tunables: declared once; README's table and errors are generated from this.


def _positive_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("a positive number")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError("a positive number") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError("a positive number")
    return number


def _positive_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("a positive integer")
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise ValueError("a positive integer") from None
    if number <= 0:
        raise ValueError("a positive integer")
    return number


def _nonempty_str(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value.strip()


def _optional_file(value: object) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or not Path(value).expanduser().is_file():
        raise ValueError("the path of an existing file")
    return str(Path(value).expanduser())


def _log_level(value: object) -> str:
    level = _nonempty_str(value).upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("one of debug, info, warning, error, critical")
    return level


def _usage_log(value: object) -> str:
    destination = _nonempty_str(value)
    if destination in ("-", "off"):
        return destination
    if not Path(destination).expanduser().parent.is_dir():
        raise ValueError("'-' (stdout), 'off', or a file path in an existing directory")
    return str(Path(destination).expanduser())


@dataclass(frozen=True)
class Tunable:
    name: str
    coerce: t.Callable[[object], object]
    default: object
    doc: str

    @property
    def env(self) -> str:
        return "WSGIPROXY_" + self.name.upper()


TUNABLES: tuple[Tunable, ...] = (
    Tunable("api_version", _nonempty_str, "2025-03-01-preview",
            "`api-version` sent to Azure OpenAI deployments (chat, embeddings)."),
    Tunable("connect_timeout", _positive_float, 10.0,
            "Seconds to open a TCP/TLS connection to SAP AI Core."),
    Tunable("read_timeout", _positive_float, 600.0,
            "Seconds to wait for each upstream read, the first token included (reasoning models are slow)."),
    Tunable("token_timeout", _positive_float, 15.0,
            "Seconds for one OAuth token request (connect and read)."),
    Tunable("token_refresh_margin", _positive_float, 300.0,
            "Refresh a cached token this many seconds before it expires."),
    Tunable("max_body_bytes", _positive_int, 32 * 1024 * 1024,
            "Largest client request body accepted; larger bodies get 413."),
    Tunable("pool_maxsize", _positive_int, 1000,
            "Upstream connections kept per host and worker; size it like gunicorn's worker_connections."),
    Tunable("pool_timeout", _positive_float, 30.0,
            "Seconds a request waits for a free upstream connection when the pool is exhausted."),
    Tunable("ca_bundle", _optional_file, None,
            "PEM file of CAs to trust for SAP AI Core instead of the system store (corporate TLS proxies)."),
    Tunable("log_level", _log_level, "INFO", "Level of the `wsgiproxy` logger."),
    Tunable("usage_log", _usage_log, "-",
            "Where the JSON usage line of each request goes: `-` (stdout), `off`, or a file path."),
)

_TUNABLE_NAMES = {tunable.name for tunable in TUNABLES}
_FILE_KEYS = {
    "subAccounts", "secret_authentication_tokens", "host", "port", "model_filters", "model_aliases",
    # legacy flat form: one subaccount named "default"
    "service_key_json", "deployment_models", "deployment_ids", "resource_group",
} | _TUNABLE_NAMES
_SUBACCOUNT_KEYS = {"resource_group", "service_key_json", "deployment_models", "deployment_ids"}


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration of one proxy process."""

    subaccounts: tuple[SubAccount, ...]
    api_keys: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 3001
    model_filters: ModelFilters = field(default_factory=ModelFilters)
    model_aliases: t.Mapping[str, str] = field(default_factory=dict)
    source: str = "(defaults)"
    api_version: str = "2025-03-01-preview"
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    token_timeout: float = 15.0
    token_refresh_margin: float = 300.0
    max_body_bytes: int = 32 * 1024 * 1024
    pool_maxsize: int = 1000
    pool_timeout: float = 30.0
    ca_bundle: str | None = None
    log_level: str = "INFO"
    usage_log: str = "-"

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys)


# --------------------------------------------------------------------------------------------
# Loading


def load_settings(environ: t.Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment and the config file it points at.

    The file is ``$WSGIPROXY_CONFIG`` or ``./config.json``. Without a file, the ``AICORE_*``
    variables must describe one subaccount.
    """
    env = os.environ if environ is None else environ
    path_value = env.get("WSGIPROXY_CONFIG", "").strip()
    path = Path(path_value) if path_value else Path(DEFAULT_CONFIG_FILE)
    raw: dict[str, object] = {}
    source = str(path)
    if path.is_file():
        raw = _read_json_object(path, source)
    elif path_value:
        raise ConfigError(f"{source}: file not found (set by WSGIPROXY_CONFIG); expected a readable config.json")
    else:
        source = "environment"

    unknown = sorted(set(raw) - _FILE_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(_FILE_KEYS))}")

    base_dir = path.resolve().parent if source != "environment" else Path.cwd()
    subaccounts = _subaccounts_from_file(raw, source, base_dir)
    env_subaccount = _subaccount_from_env(env)
    if env_subaccount is not None:
        if any(s.name == env_subaccount.name for s in subaccounts):
            raise ConfigError(f"{source}: subAccounts already has {env_subaccount.name!r}, "
                              "which the AICORE_* variables also define")
        subaccounts = subaccounts + (env_subaccount,)
    if not subaccounts:
        raise ConfigError(
            f"{source}: no SAP AI Core subaccount configured; expected 'subAccounts' in "
            f"{path_value or DEFAULT_CONFIG_FILE} (or set WSGIPROXY_CONFIG), or AICORE_SERVICE_KEY, "
            "or AICORE_CLIENT_ID/AICORE_CLIENT_SECRET/AICORE_AUTH_URL/AICORE_BASE_URL"
        )

    tunables: dict[str, object] = {}
    for tunable in TUNABLES:
        where, value = (tunable.env, env[tunable.env]) if env.get(tunable.env, "").strip() else (
            f"{source}: {tunable.name!r}", raw.get(tunable.name, tunable.default))
        try:
            tunables[tunable.name] = tunable.coerce(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: got {value!r}; expected {exc}") from None

    return Settings(
        subaccounts=subaccounts,
        api_keys=_api_keys(raw, env, source),
        host=_host(raw, source),
        port=_port(raw, source),
        model_filters=_model_filters(raw, source),
        model_aliases=_model_aliases(raw, env, source),
        source=source,
        **tunables,  # type: ignore[arg-type]
    )


def _read_json_object(path: Path, source: str) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc.strerror}); expected a readable JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level is {type(data).__name__}; expected a JSON object")
    return data


def _subaccounts_from_file(raw: t.Mapping[str, object], source: str, base_dir: Path) -> tuple[SubAccount, ...]:
    entries: dict[str, t.Mapping[str, object]] = {}
    if "subAccounts" in raw:
        block = raw["subAccounts"]
        if not isinstance(block, dict):
            raise ConfigError(f"{source}: 'subAccounts' is {type(block).__name__}; "
                              "expected an object of name -> subaccount")
        for name, entry in block.items():
            if not isinstance(entry, dict):
                raise ConfigError(f"{source}: 'subAccounts.{name}' is {type(entry).__name__}; expected an object")
            entries[name] = entry
    flat = {key: raw[key] for key in _SUBACCOUNT_KEYS if key in raw}
    if flat:
        if "default" in entries:
            raise ConfigError(f"{source}: legacy top-level {sorted(flat)[0]!r} conflicts with 'subAccounts.default'")
        entries["default"] = flat
    return tuple(
        _subaccount(name, entry, f"{source}: 'subAccounts.{name}", base_dir) for name, entry in entries.items()
    )


def _subaccount(name: str, entry: t.Mapping[str, object], where: str, base_dir: Path) -> SubAccount:
    unknown = sorted(set(entry) - _SUBACCOUNT_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}': unknown key; expected one of {', '.join(sorted(_SUBACCOUNT_KEYS))}")
    resource_group = entry.get("resource_group", "default")
    if not isinstance(resource_group, str) or not resource_group.strip():
        raise ConfigError(f"{where}.resource_group': got {resource_group!r}; expected a non-empty string")
    key_path = entry.get("service_key_json")
    if not isinstance(key_path, str) or not key_path.strip():
        raise ConfigError(f"{where}.service_key_json': got {key_path!r}; expected the path of a service key JSON file")
    resolved = Path(key_path).expanduser()
    if not resolved.is_absolute():
        resolved = base_dir / resolved
    key_source = f"{where}.service_key_json' ({resolved})"
    if not resolved.is_file():
        raise ConfigError(f"{key_source}: file not found; expected a SAP AI Core service key JSON file")
    credentials = credentials_from_service_key(_read_json_object(resolved, key_source), key_source, resolved.parent)

    deployments: dict[str, list[str]] = {}
    models = entry.get("deployment_models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{where}.deployment_models': expected an object of model -> [deployment URLs]")
    for model, urls in models.items():
        deployments.setdefault(model, []).extend(_url_list(urls, f"{where}.deployment_models.{model}'"))
    ids = entry.get("deployment_ids", {})
    if not isinstance(ids, dict):
        raise ConfigError(f"{where}.deployment_ids': expected an object of model -> [deployment ids]")
    for model, id_list in ids.items():
        for deployment_id in _id_list(id_list, f"{where}.deployment_ids.{model}'"):
            deployments.setdefault(model, []).append(f"{credentials.api_url}/v2/inference/deployments/{deployment_id}")
    if not deployments:
        raise ConfigError(f"{where}': no deployments; "
                          "expected 'deployment_models' or 'deployment_ids' with at least one model")
    return SubAccount(
        name=name,
        credentials=credentials,
        resource_group=resource_group.strip(),
        deployments={model: tuple(dict.fromkeys(urls)) for model, urls in deployments.items()},
    )


def _url_list(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: got {value!r}; expected a non-empty list of deployment URLs")
    urls = []
    for url in value:
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+/\S*$", url.strip()):
            raise ConfigError(f"{where}: got {url!r}; expected an http(s) deployment URL such as "
                              "https://api.ai.<region>.ml.hana.ondemand.com/v2/inference/deployments/<id>")
        urls.append(url.strip().rstrip("/"))
    return urls


def _id_list(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: got {value!r}; expected a non-empty list of deployment ids")
    ids = []
    for deployment_id in value:
        if not isinstance(deployment_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", deployment_id.strip()):
            raise ConfigError(f"{where}: got {deployment_id!r}; expected a deployment id such as d19b998f347341aa")
        ids.append(deployment_id.strip())
    return ids


def credentials_from_service_key(key: t.Mapping[str, object], where: str, base_dir: Path | None = None) -> Credentials:
    """Read a BTP service key (the ``credentials`` object of an ``aicore`` binding)."""
    if "credentials" in key and isinstance(key["credentials"], dict) and "clientid" not in key:
        key = key["credentials"]  # a whole binding was pasted
    client_id = key.get("clientid")
    if not isinstance(client_id, str) or not client_id:
        raise ConfigError(f"{where}: 'clientid' missing; expected a SAP AI Core service key")
    service_urls = key.get("serviceurls")
    api_url = service_urls.get("AI_API_URL") if isinstance(service_urls, dict) else None
    if not isinstance(api_url, str) or not api_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: 'serviceurls.AI_API_URL' missing; expected the AI API URL, e.g. https://api.ai.prod.eu-central-1.aws.ml.hana.ondemand.com")
    cert_url = key.get("certurl")
    certificate, private_key = key.get("certificate"), key.get("key")
    if isinstance(certificate, str) and isinstance(private_key, str) and isinstance(cert_url, str):
        raise ConfigError(f"{where}: x509 service keys (certificate-based) are not supported yet; "
                          "expected a key with 'clientsecret' (credential-type binding-secret)")
    secret = key.get("clientsecret")
    url = key.get("url")
    if not isinstance(secret, str) or not secret:
        raise ConfigError(f"{where}: 'clientsecret' missing; expected a SAP AI Core service key with a client secret")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: 'url' missing; expected the XSUAA URL, e.g. https://<subdomain>.authentication.<region>.hana.ondemand.com")
    return Credentials(client_id=client_id, client_secret=secret, auth_url=_token_url(url), api_url=_api_url(api_url))


def _token_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if url.endswith("/oauth/token") else url + "/oauth/token"


def _api_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url[: -len("/v2")] if url.endswith("/v2") else url


_AICORE_VARIABLES = ("AICORE_CLIENT_ID", "AICORE_CLIENT_SECRET", "AICORE_AUTH_URL", "AICORE_BASE_URL")


def _subaccount_from_env(env: t.Mapping[str, str]) -> SubAccount | None:
    """One subaccount from AICORE_SERVICE_KEY or the separate AICORE_* variables, if set."""
    resource_group = env.get("AICORE_RESOURCE_GROUP", "").strip() or "default"
    if env.get("AICORE_SERVICE_KEY", "").strip():
        try:
            key = json.loads(env["AICORE_SERVICE_KEY"])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"AICORE_SERVICE_KEY: invalid JSON ({exc.msg}); "
                              "expected the service key JSON as a string") from None
        if not isinstance(key, dict):
            raise ConfigError("AICORE_SERVICE_KEY: expected the service key JSON object")
        credentials = credentials_from_service_key(key, "AICORE_SERVICE_KEY")
    elif any(env.get(name, "").strip() for name in _AICORE_VARIABLES):
        values = {}
        for name in _AICORE_VARIABLES:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name}: not set; expected it together with the other AICORE_* variables")
            values[name] = value
        for name in ("AICORE_AUTH_URL", "AICORE_BASE_URL"):
            if not values[name].startswith(("http://", "https://")):
                raise ConfigError(f"{name}: got {values[name]!r}; expected an http(s) URL")
        credentials = Credentials(
            client_id=values["AICORE_CLIENT_ID"], client_secret=values["AICORE_CLIENT_SECRET"],
            auth_url=_token_url(values["AICORE_AUTH_URL"]), api_url=_api_url(values["AICORE_BASE_URL"]),
        )
    else:
        return None
    deployments = _env_deployments(env, credentials)
    return SubAccount(name="env", credentials=credentials, resource_group=resource_group, deployments=deployments)


def _env_deployments(env: t.Mapping[str, str], credentials: Credentials) -> dict[str, tuple[str, ...]]:
    """``AICORE_DEPLOYMENTS`` maps models to deployment ids or URLs: ``gpt-4o=d123,gpt-5=d456``."""
    spec = env.get("AICORE_DEPLOYMENTS", "").strip()
    if not spec:
        raise ConfigError("AICORE_DEPLOYMENTS: not set; expected model=deployment-id pairs, "
                          "e.g. gpt-4o=d19b998f347341aa,gpt-5=d2a1...")
    deployments: dict[str, list[str]] = {}
    for item in spec.split(","):
        model, sep, target = item.partition("=")
        model, target = model.strip(), target.strip()
        if not sep or not model or not target:
            raise ConfigError(f"AICORE_DEPLOYMENTS: got {item.strip()!r}; expected model=deployment-id")
        if target.startswith(("http://", "https://")):
            url = _url_list([target], "AICORE_DEPLOYMENTS")[0]
        else:
            url = f"{credentials.api_url}/v2/inference/deployments/{_id_list([target], 'AICORE_DEPLOYMENTS')[0]}"
        deployments.setdefault(model, []).append(url)
    return {model: tuple(urls) for model, urls in deployments.items()}


def _api_keys(raw: t.Mapping[str, object], env: t.Mapping[str, str], source: str) -> tuple[str, ...]:
    """Client keys from the file's ``secret_authentication_tokens`` plus ``WSGIPROXY_API_KEYS`` (comma-separated)."""
    keys = raw.get("secret_authentication_tokens", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"{source}: 'secret_authentication_tokens' must be a list of strings (client API keys)")
    sources = [(f"{source}: 'secret_authentication_tokens'", key) for key in keys]
    sources += [("WSGIPROXY_API_KEYS", key) for key in env.get("WSGIPROXY_API_KEYS", "").split(",") if key.strip()]
    for where, key in sources:
        if len(key.strip()) < 8:
            raise ConfigError(f"{where}: a key is shorter than 8 characters; expected long random secrets")
    return tuple(dict.fromkeys(key.strip() for _, key in sources))


def _host(raw: t.Mapping[str, object], source: str) -> str:
    host = raw.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(f"{source}: 'host' got {host!r}; expected an address such as 127.0.0.1 or 0.0.0.0")
    return host.strip()


def _port(raw: t.Mapping[str, object], source: str) -> int:
    port = raw.get("port", 3001)
    number = int(port) if isinstance(port, (int, str)) and not isinstance(port, bool) and str(port).isdigit() else 0
    if not 0 < number < 65536:
        raise ConfigError(f"{source}: 'port' got {port!r}; expected an integer from 1 to 65535")
    return number


def _model_filters(raw: t.Mapping[str, object], source: str) -> ModelFilters:
    block = raw.get("model_filters", {})
    if not isinstance(block, dict) or set(block) - {"include_filters", "exclude_filters"}:
        raise ConfigError(f"{source}: 'model_filters' expected an object with "
                          "'include_filters' and/or 'exclude_filters'")
    compiled: dict[str, tuple[re.Pattern[str], ...]] = {}
    for key in ("include_filters", "exclude_filters"):
        patterns = block.get(key, [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"{source}: 'model_filters.{key}' expected a list of regular expressions")
        try:
            compiled[key] = tuple(re.compile(p) for p in patterns)
        except re.error as exc:
            raise ConfigError(f"{source}: 'model_filters.{key}' has an invalid regular expression ({exc})") from None
    return ModelFilters(include=compiled["include_filters"], exclude=compiled["exclude_filters"])


def _model_aliases(raw: t.Mapping[str, object], env: t.Mapping[str, str], source: str) -> dict[str, str]:
    """Client model names → SAP model names: ``model_aliases`` in the file, then ``WSGIPROXY_MODEL_ALIASES``."""
    block = raw.get("model_aliases", {})
    if not isinstance(block, dict) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                               for k, v in block.items()):
        raise ConfigError(f"{source}: 'model_aliases' expected an object mapping client model names to "
                          "SAP model names, e.g. {\"claude-sonnet-4-5\": \"anthropic--claude-4.5-sonnet\"}")
    aliases = dict(block)
    for item in env.get("WSGIPROXY_MODEL_ALIASES", "").split(","):
        if not item.strip():
            continue
        alias, sep, target = (part.strip() for part in item.partition("="))
        if not (sep and alias and target):
            raise ConfigError(f"WSGIPROXY_MODEL_ALIASES: got {item.strip()!r}; expected alias=sap-model-name, "
                              "comma-separated")
        aliases[alias] = target
    return aliases


def tunables_markdown() -> str:
    """The README's settings table, generated from :data:`TUNABLES`."""
    rows = ["| JSON key | environment | default | meaning |", "|---|---|---|---|"]
    for tunable in TUNABLES:
        rows.append(f"| `{tunable.name}` | `{tunable.env}` | `{tunable.default}` | {tunable.doc} |")
    return "\n".join(rows)
