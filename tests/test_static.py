"""The static checks CI runs with the tests: mypy and ruff, default settings."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_mypy_finds_nothing() -> None:
    r = _run("mypy", "mogstored")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_finds_nothing() -> None:
    r = _run("ruff", "check", "mogstored")
    assert r.returncode == 0, r.stdout + r.stderr
