"""The package's public surface: ``app`` and ``create_app``, nothing else, and no trap between them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


# A child interpreter: import the proxy, answer requests through plain WSGI calls (a fake upstream,
# settings built in code), and print which werkzeug modules are loaded after each step.
_WERKZEUG_CHILD = """
import io, json, sys
PATCH
import wsgiproxy.proxy
from tests.fakes import FakeTransport
from wsgiproxy.config import Credentials, Settings, SubAccount

def loaded():
    return sorted(m for m in sys.modules if m == 'werkzeug' or m.startswith('werkzeug.'))

def call(method, path, body=b'', key=True):
    environ = {'REQUEST_METHOD': method, 'PATH_INFO': path, 'QUERY_STRING': '', 'SERVER_NAME': 'localhost',
               'SERVER_PORT': '80', 'SERVER_PROTOCOL': 'HTTP/1.1', 'wsgi.url_scheme': 'http',
               'wsgi.input': io.BytesIO(body), 'CONTENT_LENGTH': str(len(body)), 'CONTENT_TYPE': 'application/json'}
    if key:
        environ['HTTP_AUTHORIZATION'] = 'Bearer sk-test-key-123456'
    started = []
    answer = app(environ, lambda status, headers, exc_info=None: started.append(status))
    b''.join(answer)
    getattr(answer, 'close', lambda: None)()
    return {'request': method + ' ' + path, 'status': int(started[0][:3]), 'werkzeug': loaded()}

steps = [{'request': 'import', 'status': None, 'werkzeug': loaded()}]
api = 'https://api.example'
sub = SubAccount('a', Credentials('client', 'secret', 'https://auth.example/oauth/token', api), 'rg-a',
                 {'gpt-4o': (api + '/v2/inference/deployments/d1',)})
app = wsgiproxy.proxy.create_app(Settings(subaccounts=(sub,), api_keys=('sk-test-key-123456',)),
                                 transport=FakeTransport())
steps.append(call('POST', '/v1/chat/completions', b'{not json'))
steps.append(call('GET', '/health'))
steps.append(call('HEAD', '/health'))
steps.append(call('GET', '/v1/models', key=False))
steps.append(call('GET', '/v1/models'))
steps.append(call('HEAD', '/'))
steps.append(call('GET', '/nope'))
steps.append(call('GET', '/v1/models/gpt-4o'))
app.flush_logs()  # under gevent, usage lines wait for the loop to turn
print(json.dumps(steps))
"""


@pytest.mark.parametrize("gevent", [True, False], ids=["gevent", "threads"])
def test_the_proxy_imports_werkzeug_only_for_a_route_outside_the_exact_table(gevent: bool) -> None:
    # werkzeug (its package __init__ alone costs a worker megabytes) routes only what the exact-route
    # table does not answer: importing the proxy and the exact routes never load it.
    code = _WERKZEUG_CHILD.replace("PATCH", "from gevent import monkey; monkey.patch_all()" if gevent else "")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(step["request"], step["status"]) for step in steps] == [
        ("import", None), ("POST /v1/chat/completions", 400), ("GET /health", 200), ("HEAD /health", 200),
        ("GET /v1/models", 401), ("GET /v1/models", 200), ("HEAD /", 200), ("GET /nope", 404),
        ("GET /v1/models/gpt-4o", 200)]
    exact, fallback = steps[:-2], steps[-2:]
    assert all(step["werkzeug"] == [] for step in exact), exact
    assert all("werkzeug.routing" in step["werkzeug"] for step in fallback), fallback
