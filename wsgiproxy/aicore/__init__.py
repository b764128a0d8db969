"""Talking to SAP AI Core: credentials, tokens, the deployment catalog, the transport.

Nothing here knows a client's API format: requests go out as bytes and come back as
urllib3 responses.
"""
