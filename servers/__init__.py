"""Thin adapters that run ``wsgiproxy:app`` under a WSGI server.

- :mod:`servers.gunicorn_hooks`: the hooks ``conf/gunicorn.conf.py`` installs (Linux, production);
- :mod:`servers.waitress_runner`: ``wsgiproxy-waitress``, Waitress with streaming-safe settings
  (Windows and anywhere gunicorn is not available);
- :mod:`servers.devstack`: ``make run``, the simulator plus gunicorn for local development.

Nothing here imports gunicorn or gevent at module level, so the package imports on Windows.
"""
