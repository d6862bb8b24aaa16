"""For every test and doctest: measured plans are cached in a directory of the test's own."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Never the user's cache (``~/.cache/graphexec``), and no test reuses another's measured
    decisions; subprocesses inherit the setting."""
    monkeypatch.setenv("GRAPHEXEC_CACHE_DIR", str(tmp_path_factory.mktemp("graphexec-cache")))
