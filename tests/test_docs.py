"""Every ``python`` code block of README.md and docs/ runs as written.

The blocks of one page run in order in one namespace (a page builds on its earlier blocks),
as a script would (``__name__ == "__main__"``), in a scratch folder for the files they write.
A block may be skipped only with a marker comment on the line before it, which says why::

    <!-- docs-test: skip (needs a GPU) -->
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SKIP = r"<!-- docs-test: skip \((?P<why>[^)]*)\) -->\s*\n"
BLOCK = re.compile(rf"(?:{SKIP})?```python\n(?P<code>.*?)```", re.S)


def blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason)`` of each python block of ``page``."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start("code")) + 1, m["code"], m["why"])
            for m in BLOCK.finditer(text)]  # fmt: skip


def _pages_with_code() -> list[Path]:
    return [p for p in PAGES if blocks(p)]


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "__main__"}
    skipped = []
    before = torch.get_num_threads()
    with warnings.catch_warnings():
        # as in a user's script: torch's own deprecation notices (torch.compile's, say) are
        # not errors there; every other warning still fails the page
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            for line, code, why in blocks(page):
                if why is not None:
                    skipped.append(f"line {line}: {why}")
                    continue
                exec(compile(code, f"{page.name}:{line}", "exec"), scope)  # noqa: S102
        finally:
            torch.set_num_threads(before)
    if skipped and len(skipped) == len(blocks(page)):
        pytest.skip("; ".join(skipped))


def test_every_skip_says_why():
    for page in PAGES:
        for line, _, why in blocks(page):
            assert why is None or why.strip(), f"{page.name}:{line}: a skip without a reason"


def test_every_picture_exists_and_every_caption_is_written_by_make_pictures():
    """A picture in README or docs is a file, and the measured words beside it sit in a
    ``<!-- pictures:KEY -->`` block that docs/make_pictures.py writes (not a placeholder)."""
    source = (ROOT / "docs" / "make_pictures.py").read_text()
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            assert (page.parent / target).is_file(), f"{page.name}: no picture {target}"
        for key, body in re.findall(r"<!-- pictures:(\w+) -->\n(.*?)\n<!-- /pictures:", text,
                                    re.S):  # fmt: skip
            assert f'"{key}"' in source, f"{page.name}: make_pictures writes no {key!r}"
            assert "written by `make pictures`" not in body, f"{page.name}: {key} is empty"
