"""Smoke tests: every example runs as a script, prints its plan and saves its pictures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = [
    ("two_towers.py", ["two_towers_plan.png", "two_towers_gantt.png", "two_towers_compare.png",
                       "two_towers_trace.json"]),
    ("inception_cnn.py", ["inception_plan.png", "inception_gantt.png"]),
    ("image_text.py", ["image_text_plan.png", "image_text_plan.svg", "image_text_gantt.png"]),
    pytest.param("dask_dataset.py", ["dask_plan.png", "dask_gantt.png", "dask_trace.json"],
                 marks=[pytest.mark.dask, pytest.mark.slow]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "files"),
    EXAMPLES,
    ids=lambda p: p.removesuffix(".py") if isinstance(p, str) else "files",
)
def test_example_runs(script, files, tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Plan '" in r.stdout and "critical path" in r.stdout
    for name in files:
        path = tmp_path / name
        assert path.stat().st_size > 500, name
        if name.endswith(".png"):
            Image.open(path).verify()


def test_examples_readme_lists_every_script():
    readme = (ROOT / "examples" / "README.md").read_text()
    for script in sorted((ROOT / "examples").glob("*.py")):
        assert script.name in readme, script.name
