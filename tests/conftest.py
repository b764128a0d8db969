"""Shared fixtures. Process helpers live in tests/_stack.py (importable as ``_stack``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import _stack`, whatever the import mode

from _stack import DEFAULT_KEY, Server, Sim, Stack  # noqa: E402


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Start sims and servers with ``stack.sim()``, ``stack.gunicorn(...)``, ``stack.waitress(...)``;
    all are stopped at teardown."""
    started = Stack(tmp_path)
    try:
        yield started
    finally:
        started.close()


# One simulator and one single-worker gunicorn per test module that asks for them; tests that
# need a pristine process start their own through ``stack``.


@pytest.fixture(scope="module")
def stack_m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = Stack(tmp_path_factory.mktemp("stack"))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def sim(stack_m: Stack) -> Sim:
    return stack_m.sim(proxy_keys=[DEFAULT_KEY])


@pytest.fixture(scope="module")
def proxy(stack_m: Stack, sim: Sim) -> Server:
    return stack_m.gunicorn(sim.config_path, workers=1)
