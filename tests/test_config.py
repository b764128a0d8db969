"""Loading the original config.json, the AICORE_* environment and the tunables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsgiproxy.config import TUNABLES, Settings, load_settings, tunables_markdown
from wsgiproxy.errors import ConfigError

API = "https://api.ai.prod.eu-central-1.aws.ml.hana.ondemand.com"
KEY = {
    "clientid": "sb-abc!b1|aicore!b540",
    "clientsecret": "s3cret-value",
    "url": "https://tenant.authentication.eu10.hana.ondemand.com",
    "identityzone": "tenant",
    "serviceurls": {"AI_API_URL": API},
}


def write(tmp_path: Path, config: dict, key: dict | None = None, key_name: str = "keys/a.json") -> Path:
    key_path = tmp_path / key_name
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_text(json.dumps(KEY if key is None else key))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def load(path: Path, **env: str) -> Settings:
    return load_settings({"WSGIPROXY_CONFIG": str(path), **env})


def error(path: Path | None, **env: str) -> str:
    environ = dict(env)
    if path is not None:
        environ["WSGIPROXY_CONFIG"] = str(path)
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_original_format(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "subAccounts": {
            "tenant-a": {"resource_group": "team-x", "service_key_json": "keys/a.json",
                         "deployment_models": {"gpt-4o": [f"{API}/v2/inference/deployments/d111/"]},
                         "deployment_ids": {"gpt-4o": ["d112"], "gpt-5": ["d113"]}},
        },
        "secret_authentication_tokens": ["key-number-one", "key-number-two"],
        "host": "0.0.0.0", "port": 3005,
    })
    settings = load(path)
    (sub,) = settings.subaccounts
    assert sub.name == "tenant-a" and sub.resource_group == "team-x"
    assert sub.credentials.auth_url == "https://tenant.authentication.eu10.hana.ondemand.com/oauth/token"
    assert sub.credentials.api_url == API
    assert sub.deployments == {
        "gpt-4o": (f"{API}/v2/inference/deployments/d111", f"{API}/v2/inference/deployments/d112"),
        "gpt-5": (f"{API}/v2/inference/deployments/d113",),
    }
    assert settings.api_keys == ("key-number-one", "key-number-two")
    assert (settings.host, settings.port) == ("0.0.0.0", 3005)
    assert settings.source == str(path)


def test_relative_key_path_resolves_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json",
                                                   "deployment_ids": {"gpt-4o": ["d1"]}}}})
    monkeypatch.chdir("/")
    assert load(path).subaccounts[0].credentials.client_id == KEY["clientid"]


def test_legacy_flat_form(tmp_path: Path) -> None:
    path = write(tmp_path, {"service_key_json": "keys/a.json", "resource_group": "rg1",
                            "deployment_models": {"gpt-4o": f"{API}/v2/inference/deployments/d1"}})
    (sub,) = load(path).subaccounts
    assert (sub.name, sub.resource_group) == ("default", "rg1")


def test_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json",
                                                   "deployment_ids": {"gpt-4o": ["d1"]}}}})
    settings = load(path)
    assert settings.api_keys == () and not settings.auth_required
    assert (settings.host, settings.port) == ("127.0.0.1", 3001)
    assert settings.subaccounts[0].resource_group == "default"
    for tunable in TUNABLES:
        assert getattr(settings, tunable.name) == tunable.default


def test_key_from_a_whole_binding_and_v2_suffix(tmp_path: Path) -> None:
    key = {"credentials": {**KEY, "serviceurls": {"AI_API_URL": API + "/v2"}, "url": KEY["url"] + "/oauth/token"}}
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json",
                                                   "deployment_ids": {"m": ["d1"]}}}}, key=key)
    creds = load(path).subaccounts[0].credentials
    assert creds.api_url == API and creds.auth_url.endswith(".com/oauth/token")
    assert load(path).subaccounts[0].deployments["m"] == (f"{API}/v2/inference/deployments/d1",)


def test_tunables_from_file_and_env(tmp_path: Path) -> None:
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}},
                            "read_timeout": 30, "api_version": "2024-10-21"})
    settings = load(path, WSGIPROXY_READ_TIMEOUT="12.5", WSGIPROXY_MAX_BODY_BYTES="1000")
    assert settings.read_timeout == 12.5 and settings.api_version == "2024-10-21" and settings.max_body_bytes == 1000


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        ({"subAccounts": {}, "colour": "red"}, {}, "unknown key 'colour'"),
        ({"subAccounts": []}, {}, "'subAccounts' is list"),
        ({"subAccounts": {"a": {"deployment_ids": {"m": ["d1"]}}}}, {}, "subAccounts.a.service_key_json'"),
        ({"subAccounts": {"a": {"service_key_json": "nope.json", "deployment_ids": {"m": ["d1"]}}}}, {}, "file not found"),
        ({"subAccounts": {"a": {"service_key_json": "keys/a.json"}}}, {}, "no deployments"),
        ({"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_models": {"m": ["ftp://x"]}}}}, {},
         "expected an http(s) deployment URL"),
        ({"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d 1"]}}}}, {},
         "expected a deployment id"),
        ({"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}, "x": 1}}}, {},
         "subAccounts.a.x'"),
        ({"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}}, "port": 70000}, {},
         "'port'"),
        ({"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}},
          "secret_authentication_tokens": ["short"]}, {}, "shorter than 8"),
        ({"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}}},
         {"WSGIPROXY_API_KEYS": "long-enough-key,short"}, "WSGIPROXY_API_KEYS: a key is shorter than 8"),
        ({"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}}},
         {"WSGIPROXY_READ_TIMEOUT": "soon"}, "WSGIPROXY_READ_TIMEOUT: got 'soon'; expected a positive number"),
        ({"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}},
          "pool_maxsize": 0}, {}, "'pool_maxsize': got 0; expected a positive integer"),
        ({"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}},
          "model_filters": {"include_filters": ["("]}}, {}, "invalid regular expression"),
    ],
)
def test_errors_name_the_source_and_key(tmp_path: Path, config: dict, env: dict, expected: str) -> None:
    path = write(tmp_path, config)
    message = error(path, **env)
    assert expected in message
    assert str(path) in message or message.startswith("WSGIPROXY_")


def test_bad_service_key(tmp_path: Path) -> None:
    key = {k: v for k, v in KEY.items() if k != "clientsecret"}
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}}},
                 key=key)
    assert "'clientsecret' missing" in error(path)


def test_x509_service_key_is_refused_clearly(tmp_path: Path) -> None:
    key = {**KEY, "certificate": "-----BEGIN", "key": "-----BEGIN", "certurl": "https://cert"}
    del key["clientsecret"]
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}}},
                 key=key)
    assert "x509" in error(path)


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"subAccounts": {,}')
    assert "invalid JSON at line 1 column 18" in error(path)


def test_missing_file_named_by_env(tmp_path: Path) -> None:
    assert "file not found (set by WSGIPROXY_CONFIG)" in error(tmp_path / "absent.json")


def test_nothing_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "no SAP AI Core subaccount configured" in error(None)


def test_service_key_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"AICORE_SERVICE_KEY": json.dumps(KEY), "AICORE_RESOURCE_GROUP": "rg",
                              "AICORE_DEPLOYMENTS": "gpt-4o=d1, gpt-4o=d2,gpt-5=https://x.example/v2/inference/deployments/d3"})
    (sub,) = settings.subaccounts
    assert (sub.name, sub.resource_group) == ("env", "rg")
    assert sub.deployments["gpt-4o"] == (f"{API}/v2/inference/deployments/d1", f"{API}/v2/inference/deployments/d2")
    assert sub.deployments["gpt-5"] == ("https://x.example/v2/inference/deployments/d3",)


def test_separate_aicore_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"AICORE_CLIENT_ID": "id", "AICORE_CLIENT_SECRET": "secret", "AICORE_AUTH_URL": KEY["url"],
           "AICORE_BASE_URL": API + "/v2", "AICORE_DEPLOYMENTS": "gpt-4o=d1"}
    creds = load_settings(env).subaccounts[0].credentials
    assert creds.auth_url.endswith("/oauth/token") and creds.api_url == API
    del env["AICORE_CLIENT_SECRET"]
    assert "AICORE_CLIENT_SECRET: not set" in error(None, **env)
    env["AICORE_CLIENT_SECRET"] = "secret"
    del env["AICORE_DEPLOYMENTS"]
    assert "AICORE_DEPLOYMENTS: not set" in error(None, **env)


def test_env_subaccount_adds_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}}})
    settings = load(path, AICORE_SERVICE_KEY=json.dumps(KEY), AICORE_DEPLOYMENTS="m=d9")
    assert [s.name for s in settings.subaccounts] == ["a", "env"]


def test_model_filters(tmp_path: Path) -> None:
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}},
                            "model_filters": {"include_filters": ["^gpt"], "exclude_filters": ["-test$"]}})
    filters = load(path).model_filters
    assert filters.allows("gpt-4o") and not filters.allows("gpt-4o-test") and not filters.allows("claude")


def test_settings_are_immutable(tmp_path: Path) -> None:
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}}})
    settings = load(path)
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_secrets_stay_out_of_reprs(tmp_path: Path) -> None:
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}}})
    assert KEY["clientsecret"] not in repr(load(path))


def test_tunables_table_lists_every_tunable() -> None:
    table = tunables_markdown()
    for tunable in TUNABLES:
        assert f"`{tunable.env}`" in table


def test_client_keys_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}},
                            "secret_authentication_tokens": ["from-the-file-1"]})
    settings = load(path, WSGIPROXY_API_KEYS=" from-the-env-1 ,from-the-env-2,,from-the-file-1")
    assert settings.api_keys == ("from-the-file-1", "from-the-env-1", "from-the-env-2")


def test_model_aliases_from_file_and_env(tmp_path: Path) -> None:
    path = write(tmp_path, {"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}},
                            "model_aliases": {"fast": "m", "claude-sonnet-4-5": "m"}})
    settings = load(path, WSGIPROXY_MODEL_ALIASES="smart = m, fast=other")
    assert settings.model_aliases == {"fast": "other", "claude-sonnet-4-5": "m", "smart": "m"}


@pytest.mark.parametrize(("config", "env", "expected"), [
    ({"model_aliases": ["a"]}, {}, "'model_aliases' expected an object mapping client model names"),
    ({"model_aliases": {"a": 1}}, {}, "'model_aliases' expected an object"),
    ({}, {"WSGIPROXY_MODEL_ALIASES": "justaname"}, "WSGIPROXY_MODEL_ALIASES: got 'justaname'; expected alias="),
])
def test_bad_model_aliases(tmp_path: Path, config: dict, env: dict, expected: str) -> None:
    base = {"subAccounts": {"a": {"service_key_json": "keys/a.json", "deployment_ids": {"m": ["d1"]}}}}
    assert expected in error(write(tmp_path, {**base, **config}), **env)
