"""Talking to SAP AI Core: credentials, tokens, the deployment catalog, the transport.

Nothing here knows a client's API format: requests go out as bytes and come back as
responses of the minimal HTTP/1.1 client in :mod:`.http11`.
"""
