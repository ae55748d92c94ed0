"""The code is ruff clean."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "lm", "configs", "tests", "setup.py"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
