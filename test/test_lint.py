"""Lint as part of the suite: ruff with the project's settings (ruff.toml: pyflakes, pycodestyle's
errors and warnings, 120 columns) over every Python file in the repository that git does not ignore."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    try:
        from ruff import find_ruff_bin
    except ImportError:
        raise AssertionError("ruff is not installed: pip install -r requirements.txt (make setup does)") from None
    result = subprocess.run([find_ruff_bin(), "check", "--no-cache", "--output-format", "concise", str(REPO_ROOT)],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
