"""What every picture shares: lazy matplotlib, colours, writing files, short labels.

* **No global backend state.** Figures are made with ``matplotlib.figure.Figure`` on an Agg
  canvas, never through ``pyplot``: nothing is shown, no backend is switched under a user's
  notebook, and nothing leaks between calls. matplotlib is imported inside `_matplotlib`, so
  ``import graphexec.viz`` costs nothing; without it a drawing function raises
  ``ImportError`` saying ``pip install graphexec[viz]``.
* **Writing a file is one explicit call**, `_save`, made only when a ``path=`` was given;
  the suffix picks the format (PNG, SVG, anything matplotlib knows).
* **Labels keep both ends.** Module paths differ at their start (``encoder`` / ``decoder``)
  and at their end (``q_proj`` / ``k_proj``), so `short_label` cuts the middle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["short_label"]

#: Pastel colours (ColorBrewer Set3) for levels: black text stays readable on all of them.
_LEVEL_COLOURS = (
    "#8dd3c7",
    "#ffffb3",
    "#bebada",
    "#fb8072",
    "#80b1d3",
    "#fdb462",
    "#b3de69",
    "#fccde5",
    "#d9d9d9",
    "#bc80bd",
    "#ccebc5",
    "#ffed6f",
)
_CRITICAL = "#d62728"
_EDGE = "#7f7f7f"
_TASK_FILL = "#e8f1fa"
_TASK_LINE = "#1f4e79"
_CRIT_FILL = "#fde3e1"
_INPUT_FILL = "#eeeeee"


def _matplotlib() -> Any:
    """Import matplotlib (Agg, no pyplot) or say what to install."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - exercised with matplotlib hidden
        raise ImportError("graphexec pictures need matplotlib: pip install graphexec[viz]") from exc

    def new_figure(width: float, height: float, **kw: Any) -> Figure:
        fig = Figure(figsize=(width, height), **kw)
        FigureCanvasAgg(fig)
        return fig

    return matplotlib, new_figure


def _make_parent(path: str | os.PathLike[str]) -> None:
    """Create the folder ``path`` will be written in."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)


def _save(fig: Figure, path: str | os.PathLike[str] | None, dpi: float) -> None:
    if path is not None:
        _make_parent(path)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")


# -- labels -----------------------------------------------------------------------------------
def short_label(text: str, width: int = 22) -> str:
    """Shorten ``text`` to at most ``width`` characters, keeping its start and end.

    Examples
    --------
    >>> short_label("blocks.11.b5.1.1", 22)
    'blocks.11.b5.1.1'
    >>> short_label("encoder.layers.11.self_attention.out_proj", 20)
    'encoder.la….out_proj'
    """
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]


def _common_prefix(names: Sequence[str]) -> str:
    """The longest common dotted prefix of ``names`` ('' when none).

    >>> _common_prefix(["blocks.3.a.conv", "blocks.3.a.relu"]), _common_prefix(["a.b", "a.b"])
    ('blocks.3.a', 'a')
    """
    parts = [n.split(".") for n in names]
    prefix: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    if prefix and all(len(p) == len(prefix) for p in parts):
        prefix.pop()  # never swallow a whole name
    return ".".join(prefix)


def _task_title(nodes: Sequence[str], width: int) -> str:
    """A task's name for people: its node, its nodes' common prefix, or first..last."""
    if len(nodes) == 1:
        return short_label(nodes[0], width)
    prefix = _common_prefix(nodes)
    if prefix:
        return short_label(prefix + ".*", width)
    return short_label(f"{nodes[0]}..{nodes[-1]}", width)


def _compact(title: str, width: int) -> str:
    """Fit a dotted name in ``width`` characters, dropping leading components first.

    >>> _compact("encoder.layers.11.mlp", 12)
    '11.mlp'
    """
    parts = title.split(".")
    while len(".".join(parts)) > width and len(parts) > 2:
        parts.pop(0)
    return short_label(".".join(parts), width)
