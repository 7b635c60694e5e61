"""The habits that catch silent errors: ruff and mypy over the package, its examples and its
benchmarks (a recipe that only runs for a release rots unseen otherwise), as CI runs them (both
come with the ``test`` extra; configured in pyproject.toml)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tool", [["ruff", "check", "avemo_cli", "benchmarks", "examples",
                                   "tests"],
                                  ["mypy", "avemo_cli", "examples", "benchmarks"]])
def test_clean(tool):
    if shutil.which(tool[0]) is None and not (Path(sys.executable).parent / tool[0]).exists():
        pytest.skip(f"{tool[0]} is not installed (pip install -e '.[test]')")
    exe = shutil.which(tool[0]) or str(Path(sys.executable).parent / tool[0])
    proc = subprocess.run([exe, *tool[1:]], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
