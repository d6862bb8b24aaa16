"""What ships with graphexec: the license its metadata names, in the repository and the wheel."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: md5 of https://www.apache.org/licenses/LICENSE-2.0.txt, the official text (11358 bytes)
APACHE_2 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_the_license_is_the_full_apache_2_text_and_pyproject_ships_it():
    tomllib = pytest.importorskip("tomllib")
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.md5(text, usedforsecurity=False).hexdigest() == APACHE_2, "not the official text"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools")
def test_the_wheel_ships_the_license(tmp_path):
    """Built from a copy of what packaging reads, without build isolation (no download)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "graphexec", src / "graphexec",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "wheel")],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    [wheel] = (tmp_path / "wheel").glob("graphexec-*.whl")
    with zipfile.ZipFile(wheel) as z:
        [shipped] = [n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert z.read(shipped) == (ROOT / "LICENSE").read_bytes()
        [metadata] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        assert "License-File: LICENSE" in z.read(metadata).decode()
