"""The server's own floor: a WSGI app that answers what the fake upstream answers, with no proxying.

Run under the same ``gunicorn -c conf/gunicorn.conf.py`` as the proxy (one gevent worker, shipped
settings, access log on), it shows what gunicorn and gevent cost per request and per stream on
this machine, so the proxy's own share is the difference measured side by side in one run.
"""

from __future__ import annotations

import typing as t

import gevent

from . import payloads as p

_CHAT = p.CHAT_RESPONSE.encode()
_EVENTS = [event.encode() for event in p.sse_events()]


def app(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
    body = environ["wsgi.input"].read()
    if b'"stream":true' not in body and b'"stream": true' not in body:
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(_CHAT)))])
        return [_CHAT]
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    return _stream()


def _stream() -> t.Iterator[bytes]:
    for i, event in enumerate(_EVENTS):
        if 0 < i <= p.CHUNKS:
            gevent.sleep(p.CHUNK_GAP_S)
        yield event
