"""`make lint` sees every source folder: ruff's excludes are anchored to the repository root, so
a folder that only shares a name with one (``src/lowbit/data`` and the root's ``data/``) is
linted."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def ruff_command() -> list[str]:
    beside_python = Path(sys.executable).with_name("ruff")
    if beside_python.exists():
        return [str(beside_python)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip("ruff is not installed (make install installs it)")


def test_ruff_lints_every_python_file_under_src():
    listed = subprocess.run(
        [*ruff_command(), "check", "--show-files", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    linted = {Path(line.strip()).resolve() for line in listed.splitlines() if line.strip()}
    sources = set((ROOT / "src").rglob("*.py"))
    missing = sorted(str(path.relative_to(ROOT)) for path in sources - linted)
    assert not missing, f"ruff does not lint: {missing}"
    assert (ROOT / "src/lowbit/data/digits.py") in linted
