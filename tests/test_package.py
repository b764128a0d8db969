"""The package's public surface: ``app`` and ``create_app``, nothing else, and no trap between them."""

from __future__ import annotations

import subprocess
import sys

import pytest

import wsgiproxy


def test_all() -> None:
    assert wsgiproxy.__all__ == ["app", "create_app"]


def test_app_stays_the_wsgi_callable_whatever_was_imported_first() -> None:
    # Importing a submodule sets it as an attribute of the package: none may be called `app`.
    code = ("import os, json, tempfile, importlib, pkgutil, wsgiproxy;"
            "from wsgiproxy import create_app;"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(wsgiproxy.__path__, 'wsgiproxy.')"
            " if not m.name.endswith('__main__')];"
            "d = tempfile.mkdtemp(); k = os.path.join(d, 'key.json');"
            "json.dump({'clientid': 'c', 'clientsecret': 's', 'url': 'https://a.example',"
            " 'serviceurls': {'AI_API_URL': 'https://b.example'}}, open(k, 'w'));"
            "json.dump({'subAccounts': {'a': {'service_key_json': k, 'deployment_ids': {'m': ['d1']}}}},"
            " open(os.path.join(d, 'config.json'), 'w'));"
            "os.environ['WSGIPROXY_CONFIG'] = os.path.join(d, 'config.json');"
            "from wsgiproxy import app; assert callable(app) and type(app).__name__ == 'WsgiProxy', app")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_bad_configuration_is_one_line_on_access() -> None:
    code = "import os; os.environ['WSGIPROXY_CONFIG'] = '/nonexistent/config.json'; from wsgiproxy import app"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("wsgiproxy: configuration error: /nonexistent/config.json")
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("gevent", [True, False], ids=["gevent", "threads"])
def test_the_proxy_imports_no_urllib3(gevent: bool) -> None:
    # urllib3 is for the tests and the simulator's clients; the proxy talks HTTP with aicore.http11.
    code = ("import os, sys; os.environ['WSGIPROXY_CONFIG'] = '/nonexistent/config.json';"
            + ("from gevent import monkey; monkey.patch_all();" if gevent else "")
            + "import wsgiproxy.proxy;"
            "print(sorted(m for m in sys.modules if m == 'urllib3' or m.startswith('urllib3.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
