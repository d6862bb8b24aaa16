"""What every picture shares: lazy matplotlib, colours, writing files, labels that fit.

* **No global backend state.** Figures are made with ``matplotlib.figure.Figure`` on an Agg
  canvas, never through ``pyplot``: nothing is shown, no backend is switched under a user's
  notebook, and nothing leaks between calls. matplotlib is imported inside `load_matplotlib`, so
  ``import graphexec.viz`` costs nothing; without it a drawing function raises
  ``ImportError`` saying ``pip install graphexec[viz]``.
* **Writing a file is one explicit call**, `save`, made only when a ``path=`` was given;
  the suffix picks the format (PNG, SVG, anything matplotlib knows).
* **Labels are the names, measured.** A label is the task's one name (`Task.name`), shortened
  by `graphexec.units.fit_name` only as far as the renderer says the space requires
  (`text_fits` measures the real text extent; a character count would cut "stem.0" to
  "s…0" on a bar with room for it). Cuts keep both ends: module paths differ at their start
  (``encoder`` / ``decoder``) and at their end (``q_proj`` / ``k_proj``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..units import short_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "CRITICAL",
    "CRIT_FILL",
    "EDGE",
    "INPUT_FILL",
    "LEVEL_COLOURS",
    "TASK_FILL",
    "TASK_LINE",
    "common_prefix",
    "load_matplotlib",
    "make_parent",
    "px_width",
    "save",
    "short_label",
    "text_fits",
    "text_width",
]

#: Pastel colours (ColorBrewer Set3) for levels: black text stays readable on all of them.
#: Set3's salmon red is replaced by Pastel1's beige: red marks the critical path only.
LEVEL_COLOURS = (
    "#8dd3c7",
    "#ffffb3",
    "#bebada",
    "#e5d8bd",
    "#80b1d3",
    "#fdb462",
    "#b3de69",
    "#fccde5",
    "#d9d9d9",
    "#bc80bd",
    "#ccebc5",
    "#ffed6f",
)
CRITICAL = "#d62728"
EDGE = "#7f7f7f"
TASK_FILL = "#e8f1fa"
TASK_LINE = "#1f4e79"
CRIT_FILL = "#fde3e1"
INPUT_FILL = "#eeeeee"


def load_matplotlib() -> Any:
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


def make_parent(path: str | os.PathLike[str]) -> None:
    """Create the folder ``path`` will be written in."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)


def save(fig: Figure, path: str | os.PathLike[str] | None, dpi: float) -> None:
    if path is not None:
        make_parent(path)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")


# -- labels -----------------------------------------------------------------------------------
def text_width(fig: Figure, **font: Any) -> Callable[[str], float]:
    """The width in display pixels of a text drawn in ``font`` (``size``, ``weight``,
    ``style``) on ``fig``'s renderer: the same measure ``ax.text`` is drawn with."""
    from matplotlib.font_manager import FontProperties

    renderer = fig.canvas.get_renderer()
    prop = FontProperties(**font)

    def width(text: str) -> float:
        return float(renderer.get_text_width_height_descent(text, prop, ismath=False)[0])

    return width


def text_fits(fig: Figure, room_px: float, **font: Any) -> Callable[[str], bool]:
    """A ``fits(text)`` test for `graphexec.units.fit_name`: whether ``text`` in ``font`` is
    at most ``room_px`` display pixels wide (`text_width`)."""
    width = text_width(fig, **font)
    return lambda text: width(text) <= room_px


def px_width(ax: Axes, x0: float, x1: float) -> float:
    """Display pixels between two x positions in ``ax``'s data coordinates."""
    (a, _), (b, _) = ax.transData.transform([(x0, 0.0), (x1, 0.0)])
    return abs(b - a)


def common_prefix(names: Sequence[str]) -> str:
    """The longest common dotted prefix of ``names`` ('' when none).

    >>> common_prefix(["blocks.3.a.conv", "blocks.3.a.relu"]), common_prefix(["a.b", "a.b"])
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
