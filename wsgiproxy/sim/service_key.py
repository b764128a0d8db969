"""The files that point a client at a running simulator: a service key and a proxy config.

``sim-service-key.json`` is a complete §1.1 service key whose ``url`` and
``serviceurls.AI_API_URL`` are the simulator's base URL; ``config.json`` is in the
original proxy's format, listing every deployment the simulator can answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .catalog import Deployment
from .dialects import dialect_for

SERVICE_KEY_FILE = "sim-service-key.json"
CONFIG_FILE = "config.json"
SUBACCOUNT = "sim"
IDENTITY_ZONE = "sim"
IDENTITY_ZONE_ID = "5ae1c0de-0000-4000-8000-000000000001"


def service_key(base_url: str, client_id: str, client_secret: str) -> dict[str, object]:
    """A secret-based AI Core service key for the simulator at *base_url*."""
    return {
        "clientid": client_id,
        "clientsecret": client_secret,
        "url": base_url,
        "identityzone": IDENTITY_ZONE,
        "identityzoneid": IDENTITY_ZONE_ID,
        "appname": client_id,
        "credential-type": "binding-secret",
        "serviceurls": {"AI_API_URL": base_url},
    }


def proxy_config(base_url: str, deployments: Iterable[Deployment], proxy_keys: Iterable[str] = ()) -> dict[str, object]:
    """The original proxy's ``config.json`` for one subaccount backed by the simulator."""
    models: dict[str, list[str]] = {}
    for deployment in deployments:
        if deployment.resource_group == "default" and dialect_for(deployment.executable_id) is not None:
            models.setdefault(deployment.model, []).append(base_url + deployment.path)
    return {
        "subAccounts": {
            SUBACCOUNT: {
                "resource_group": "default",
                "service_key_json": SERVICE_KEY_FILE,
                "deployment_models": models,
            }
        },
        "secret_authentication_tokens": list(proxy_keys),
        "host": "127.0.0.1",
        "port": 3001,
    }


def write_config(
    directory: str | os.PathLike[str],
    base_url: str,
    client_id: str,
    client_secret: str,
    deployments: Iterable[Deployment],
    proxy_keys: Iterable[str] = (),
) -> Path:
    """Write both files into *directory* (created if needed); returns the config path."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / SERVICE_KEY_FILE, json.dumps(service_key(base_url, client_id, client_secret), indent=2))
    config = folder / CONFIG_FILE
    write_atomically(config, json.dumps(proxy_config(base_url, deployments, proxy_keys), indent=2))
    return config


def write_atomically(path: Path, text: str) -> None:
    """Write *text* so that a reader polling *path* never sees half of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text + "\n", encoding="utf-8")
    os.replace(temporary, path)
