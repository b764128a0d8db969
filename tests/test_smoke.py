"""Run tests/smoke.py (the real stack end to end) as part of `make test`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parent / "smoke.py"


@pytest.mark.integration
def test_smoke_script_passes() -> None:
    result = subprocess.run([sys.executable, str(SMOKE)], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"smoke.py failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    assert "smoke: all checks passed" in result.stdout
