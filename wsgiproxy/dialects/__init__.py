"""Pure translation between client formats and upstream dialects: no I/O, no knowledge of SAP AI Core."""
