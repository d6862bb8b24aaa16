"""How graphexec writes numbers and names for people, the same in plan text, summaries and
pictures.

* **A task has one name**: `Task.name` as the planner makes it (``stem``, ``a+b`` for two
  nodes, ``first..last`` for a longer chain), in ``print(plan)``, summaries, Chrome traces, DOT
  and pictures alike. Pictures shorten it only when it does not fit, and only through
  `name_forms`: first the shared module path of a range written once (``layer2.conv1..bn2``,
  which still names exactly that task), then cuts in the middle marked with ``…`` (the start
  says where in the model, the end which piece). A task is never labelled by a pattern such
  as ``layer2.*``, which would also match other tasks (``layer2.down``).
* **What fits is measured by the caller**: `fit_name` takes a ``fits(text) -> bool`` test, so
  pictures ask their renderer for the text's real extent instead of guessing from a
  character count, and text output (which has room) never calls it.
* **Ratios in words**: ``0.66x of`` leaves the reader to work out which way is better;
  `speed_words` says ``1.52x faster`` or ``1.51x slower``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = [
    "compact_name",
    "fit_name",
    "format_seconds",
    "input_name",
    "lane_label",
    "name_forms",
    "short_label",
    "speed_words",
]


def format_seconds(seconds: float) -> str:
    """Seconds as a short human string: ``2.00 s``, ``1.50 ms``, ``12.0 µs``.

    >>> format_seconds(0.0015), format_seconds(12e-6), format_seconds(2)
    ('1.50 ms', '12.0 µs', '2.00 s')
    """
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def lane_label(lane: str) -> str:
    """A lane's name for people.

    >>> lane_label("MainThread"), lane_label("graphexec_1"), lane_label("tcp://10.0.0.2:4001")
    ('caller thread', 'pool thread 1', '10.0.0.2:4001')
    >>> lane_label("graphexec-budget1_0")  # a plan's thread budget (`graphexec.budget`)
    'budget thread 0 (1 intra-op thread)'
    """
    if lane == "MainThread":
        return "caller thread"
    if lane.startswith("graphexec-budget"):
        threads, _, i = lane.removeprefix("graphexec-budget").partition("_")
        return f"budget thread {i} ({threads} intra-op thread{'s' * (threads != '1')})"
    if lane.startswith("graphexec_"):
        return "pool thread " + lane.removeprefix("graphexec_")
    return lane.removeprefix("tcp://")


def speed_words(seconds: float, reference: float, than: str = "") -> str:
    """How ``seconds`` compares with ``reference``, in words that say which way is better.

    Parameters
    ----------
    seconds, reference : float
        Two times of the same work.
    than : str, optional
        What ``reference`` is, to end the phrase with (``"than eager PyTorch"``).

    Returns
    -------
    str
        ``"<r>x faster"`` or ``"<r>x slower"`` with r >= 1, or ``"as fast, within 1%"``;
        with ``than``, a whole phrase.

    Examples
    --------
    >>> speed_words(0.5, 1.0), speed_words(1.51, 1.0), speed_words(1.004, 1.0)
    ('2.00x faster', '1.51x slower', 'as fast, within 1%')
    >>> speed_words(1.2, 1.0, "eager"), speed_words(1.0, 1.0, "eager")
    ('1.20x slower than eager', 'as fast as eager, within 1%')
    """
    if seconds <= 0 or reference <= 0:
        return "not comparable (no time measured)"
    ratio = reference / seconds
    if abs(ratio - 1) < 0.01:
        return f"as fast as {than}, within 1%" if than else "as fast, within 1%"
    words = f"{ratio:.2f}x faster" if ratio > 1 else f"{1 / ratio:.2f}x slower"
    return f"{words} than {than}" if than else words


def short_label(text: str, width: int = 22) -> str:
    """Shorten ``text`` to at most ``width`` characters, keeping its start and end.

    Examples
    --------
    >>> short_label("blocks.11.b5.1.1", 22)
    'blocks.11.b5.1.1'
    >>> short_label("encoder.layers.11.self_attention.out_proj", 20)
    'encoder.la…out_proj'
    """
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    head, rest = text[: width - 1 - tail], text[len(text) - tail :]
    return head.rstrip(".") + "…" + rest.lstrip(".")  # "a…b", not "a.….b"


def name_forms(name: str, min_chars: int = 5) -> Iterator[str]:
    """A task or node name, then ever shorter forms of it, longest first.

    First the name itself; for a range or pair of nodes sharing a module path
    (``layer2.conv1..layer2.bn2``, ``stem.0+stem.1``) the path written once
    (``layer2.conv1..bn2``, ``stem.0+1``); then that cut in the middle, one character at a
    time, keeping at least ``min_chars`` characters and half of it around the ``…`` (dots
    next to the cut are dropped). Short names have no shorter form: a label such as ``s…0``
    or ``blo…1`` says less than no label.

    Examples
    --------
    >>> list(name_forms("tower_a.0..tower_a.6"))[:3]
    ['tower_a.0..tower_a.6', 'tower_a.0..6', 'tower…0..6']
    >>> list(name_forms("stem.0+stem.1"))[:2]
    ['stem.0+stem.1', 'stem.0+1']
    >>> list(name_forms("head"))
    ['head']
    """
    yield name
    compact = compact_name(name)
    if compact != name:
        yield compact
    keep = max(min_chars, len(compact) // 2)
    cuts = (short_label(compact, width) for width in range(len(compact) - 1, keep, -1))
    yield from dict.fromkeys(c for c in cuts if len(c) - 1 >= keep)  # dots dropped at a cut


def input_name(name: str) -> str:
    """A graph input's name as its module path, where Dynamo lifted a parameter or buffer into
    an input (``L_self_modules_a_modules_0_parameters_weight_`` is ``a.0.weight``); any other
    name as it is, less Dynamo's ``L_``/``_`` wrapping (``L_x_`` is ``x``).

    >>> input_name("L_self_modules_a_modules_0_parameters_weight_"), input_name("L_x_")
    ('a.0.weight', 'x')
    >>> input_name("L_self_buffers_running_mean_"), input_name("tokens")
    ('running_mean', 'tokens')
    """
    if not (name.startswith("L_") and name.endswith("_")):
        return name
    inner = name[2:-1]
    if inner.startswith("self_"):
        inner = inner.removeprefix("self_")
        for kind in ("modules", "parameters", "buffers"):
            inner = inner.replace(f"_{kind}_", ".")
            inner = inner.removeprefix(f"{kind}_")
    return inner or name


def compact_name(name: str) -> str:
    """A range or pair of nodes with the module path both ends share written once; any other
    name as it is.

    >>> compact_name("layer2.conv1..layer2.bn2"), compact_name("img_stem..img_pool")
    ('layer2.conv1..bn2', 'img_stem..img_pool')
    """
    for sep in ("..", "+"):
        first, found, last = name.partition(sep)
        if not found or not first or not last:
            continue
        head, tail = first.split("."), last.split(".")
        shared = 0
        while shared < min(len(head), len(tail)) - 1 and head[shared] == tail[shared]:
            shared += 1
        if shared:
            return first + sep + ".".join(tail[shared:])
    return name


def fit_name(name: str, fits: Callable[[str], bool], min_chars: int = 5) -> str | None:
    """The longest of `name_forms` that ``fits``, or None if not even the shortest does.

    Parameters
    ----------
    name : str
    fits : callable str -> bool
        Whether a text fits the space it is meant for (pictures measure its rendered extent).
    min_chars : int
        A cut form keeps at least this many characters of the name; under that, no label.

    Examples
    --------
    >>> fit_name("layer2.conv1..layer2.bn2", lambda s: len(s) <= 20)
    'layer2.conv1..bn2'
    >>> fit_name("encoder.layers.11.mlp", lambda s: len(s) <= 12)
    'encode…1.mlp'
    >>> fit_name("stem.0", lambda s: len(s) <= 3) is None
    True
    """
    return next((form for form in name_forms(name, min_chars) if fits(form)), None)
