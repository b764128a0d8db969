"""Shared fixtures. Process helpers live in tests/_stack.py (importable as ``_stack``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import _stack`, whatever the import mode

from _stack import Stack  # noqa: E402


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Start sims and servers with ``stack.sim()``, ``stack.gunicorn(...)``, ``stack.waitress(...)``;
    all are stopped at teardown."""
    started = Stack(tmp_path)
    try:
        yield started
    finally:
        started.close()
