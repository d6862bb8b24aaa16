"""Run a plan where the data lives: over Dask arrays and dataframes, lazily, on the workers.

`DaskExecutor.map_blocks` and `DaskExecutor.map_partitions` are thin; this module is what they
do. The data never passes through the client: each block (a chunk of rows of a
``dask.array``, a partition of a ``dask.dataframe``) becomes one Dask task that runs the whole
plan on the worker holding that block, and the result is a Dask collection of the same blocks.

What it decides
---------------
* **Lazy, with Dask's own machinery.** The result is built with ``dask.array.blockwise`` and
  ``dask.dataframe.map_partitions`` (``meta=``): nothing runs on the cluster until the caller
  computes, persists, writes (``to_zarr`` / ``to_parquet``) or hands the result on. Dask's
  optimizer may fuse the reading of a block with its model task (it does for Zarr and
  Parquet). Task keys start with the graph's name, so the progress bar, dashboard and task
  stream show it (``two_towers``; ``two_towers-head`` for one of several array outputs).
* **Checked before anything is computed.** Chunks along a non-batch axis, arrays whose batch
  chunks differ, a missing or non-numeric column, and a row shape or dtype the graph cannot
  take raise on the client, naming the axis, column or input. Row shapes and dtypes are
  checked by running the plan once on the client over two rows of zeros shaped as the data's
  rows (`_probe`): that also gives the outputs' shapes and dtypes, the ``meta`` Dask needs,
  and refuses a graph whose outputs are not one row per input row. This is the only
  computation before ``compute``, and none of it reaches the cluster.
* **What cannot be checked beforehand** (a partition whose columns differ from the dataset's
  schema, a missing value, a block of unknown shape that turns out wrong) raises inside the
  block's task as a `NodeError` naming the block or partition and the node or input.
* **Weights once per worker.** Building the collection places the plan with the executor's
  placement (`Placer.place`, replicated: one single-replica key per node and worker, which
  Dask's memory manager cannot drop), sending only copies a worker does not hold yet. Block
  tasks do not take the weights as Dask dependencies (the scheduler would then move the weights
  to the data, or the data to the weights); each reads the copies of the worker it runs on from
  that worker's memory (`blocks.weights_here`). A worker that joined later (a nanny's
  replacement for a killed one) fetches one copy from a peer on its first block and keeps it
  for that collection: still once per worker, never from the client.
* **Threads and modes as `run` sets them.** Each block runs through `jobs.run_job`:
  torch's intra-op threads per worker task thread as the executor chooses, the caller's
  inference mode and autocast (taken when the collection is built), grad off.
* **Faults.** Dask recomputes a block lost with its worker from its inputs (the files), on a
  surviving or replacement worker; weights come as described above. A node that raises is an
  error, not a lost worker: Dask does not retry it.

The call tree::

    DaskExecutor.map_blocks(plan, *arrays)   -> map_blocks(session, plan, arrays)
      _check_arrays, _probe (client: 2 rows of zeros), _spec (Placer.place: weights)
      blockwise(run_block)                  worker (`blocks`): weights_here, jobs.run_job
      blockwise(pick) per output            one array per graph output
    DaskExecutor.map_partitions(plan, frame, columns=, names=) -> map_partitions(...)
      _input_columns, _probe, _spec, frame.map_partitions(run_partition, meta=...)

This module is the client side; what a block task runs on its worker is in `blocks`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from ...errors import NodeError
from ...graph import Ref
from ...plans import Plan
from ..base import Modes
from .blocks import Partitions, Spec, pick, run_block, run_partition
from .calls import Session, call_modes, job_envs

__all__ = ["map_blocks", "map_partitions"]

_INSTALL = "pip install 'graphexec[data]' (dask[array,dataframe], zarr, pyarrow)"


def _dask_array():
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - the data extra brings it
        raise ImportError(f"DaskExecutor.map_blocks needs dask.array: {_INSTALL}") from exc
    return da


def _dask_dataframe():
    try:
        import dask.dataframe as dd
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - the data extra brings it
        raise ImportError(f"DaskExecutor.map_partitions needs dask.dataframe: {_INSTALL}") from exc
    return dd, pd


def _spec(s: Session, plan: Plan, rows: Sequence[tuple[int, ...]], modes: Modes) -> Spec:
    """Place the whole plan on every live worker (sending missing copies) and describe it."""
    jobs, _, nodes, workers = s.placer.place(plan, whole=True)
    (job,) = jobs.values()
    keys = {w: tuple(nodes[(n, w)].key for n in job.nodes) for w in workers}
    keys = {w: k for w, k in keys.items() if all((n, w) in nodes for n in job.nodes)}
    refs = tuple(plan.graph.output_refs())
    return Spec(
        plan.graph.name,
        uuid.uuid4().hex[:12],
        job.tasks,
        plan.graph.inputs,
        job.outputs,
        refs,
        tuple(rows),
        keys,
        job_envs(s, workers, None, modes),
    )


def _name(s: str) -> str:
    """A name Dask's ``key_split`` keeps whole: dashes only between words."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in s) or "graph"


# -- checks and the probe (client side) ----------------------------------------------------------
def _probe(plan: Plan, rows: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype], what: str):
    """Run the plan on two rows of zeros per input on the client; return its output leaves.

    Raises
    ------
    TypeError
        If an input's dtype has no torch equivalent.
    ValueError
        If the graph cannot take the rows (naming the input and the node that refused them), or
        an output is not one row per input row.
    """
    from ..sequential import SequentialExecutor

    graph = plan.graph
    tensors = []
    for name, shape, dtype in zip(graph.inputs, rows, dtypes, strict=True):
        try:
            tensors.append(torch.from_numpy(np.zeros((2, *shape), dtype=dtype)))
        except TypeError as exc:
            raise TypeError(
                f"graph '{graph.name}': input '{name}' would come from {what(name)} of dtype "
                f"{dtype}, which torch cannot take ({exc}); convert it first (astype)"
            ) from None
    try:
        with torch.no_grad():
            out = SequentialExecutor().run(plan, *tensors)
    except NodeError as exc:
        given = ", ".join(
            f"'{n}' rows of shape {tuple(r)} {d}"
            for n, r, d in zip(graph.inputs, rows, dtypes, strict=True)
        )
        raise ValueError(
            f"graph '{graph.name}' cannot take its inputs as the data gives them ({given}; "
            f"{'; '.join(what(n) for n in graph.inputs)}): {exc}"
        ) from exc
    leaves = pytree.tree_leaves(out)
    for ref, leaf in zip(graph.output_refs(), leaves, strict=False):
        if not isinstance(leaf, torch.Tensor) or leaf.ndim == 0 or leaf.shape[0] != 2:
            shape = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            raise ValueError(
                f"graph '{graph.name}': output '{ref}' is not one row per input row (2 rows in "
                f"gave {shape}); blocks need outputs whose first axis is the batch"
            )
        if leaf.dtype == torch.bfloat16:
            raise TypeError(
                f"graph '{graph.name}': output '{ref}' is bfloat16, which numpy cannot hold; "
                "cast it in the graph"
            )
    if len(leaves) != len(graph.output_refs()):
        raise ValueError(f"graph '{graph.name}': outputs must all be nodes or inputs (tensors)")
    return leaves


def _check_arrays(plan: Plan, arrays: Sequence[Any]) -> None:
    """Raise ValueError for arrays that do not fit the graph's inputs block by block."""
    graph = plan.graph
    if len(arrays) != len(graph.inputs):
        raise ValueError(
            f"map_blocks: graph '{graph.name}' has {len(graph.inputs)} input(s) "
            f"{list(graph.inputs)}, got {len(arrays)} array(s) (one per input, in order)"
        )
    da = _dask_array()
    first = None
    for name, a in zip(graph.inputs, arrays, strict=True):
        if not isinstance(a, da.Array):
            raise TypeError(
                f"map_blocks: input '{name}' is a {type(a).__name__}, not a dask.array.Array "
                "(da.from_zarr, da.from_array, ...)"
            )
        if a.ndim == 0:
            raise ValueError(f"map_blocks: input '{name}' is 0-d; its first axis is the batch")
        for axis in range(1, a.ndim):
            if len(a.chunks[axis]) > 1:
                raise ValueError(
                    f"map_blocks: input '{name}' is chunked along axis {axis} "
                    f"({len(a.chunks[axis])} chunks); a block must hold whole rows, chunk along "
                    f"axis 0 only: array.rechunk({{{axis}: -1}})"
                )
            if np.isnan(a.shape[axis]):
                raise ValueError(
                    f"map_blocks: input '{name}' has an unknown size along axis {axis}; "
                    "array.compute_chunk_sizes() first"
                )
        if first is None:
            first = (name, a.chunks[0])
        elif a.chunks[0] != first[1]:
            raise ValueError(
                f"map_blocks: inputs '{first[0]}' and '{name}' are chunked differently along "
                f"axis 0 ({_short(first[1])} vs {_short(a.chunks[0])}); rechunk one like the "
                f"other: b.rechunk({{0: a.chunks[0]}})"
            )


def _short(chunks: tuple) -> str:
    return str(chunks) if len(chunks) <= 4 else f"({chunks[0]}, {chunks[1]}, ... {len(chunks)})"


# -- map_blocks ----------------------------------------------------------------------------------
def map_blocks(s: Session, plan: Plan, arrays: Sequence[Any], name: str | None = None) -> Any:
    """See `DaskExecutor.map_blocks`."""
    da = _dask_array()
    from dask.layers import ArrayBlockIdDep

    _check_arrays(plan, arrays)
    graph = plan.graph
    rows = [tuple(int(d) for d in a.shape[1:]) for a in arrays]
    leaves = _probe(plan, rows, [a.dtype for a in arrays], lambda n: f"array input '{n}'")
    spec = _spec(s, plan, rows, call_modes())
    base = _name(name or graph.name)
    token = f"{base}-{spec.token}"
    row_chunks = arrays[0].chunks[0]
    letters = iter(_LETTERS)  # a blockwise index per non-batch axis, none shared
    pairs: list[Any] = [ArrayBlockIdDep((row_chunks,)), "i"]
    for a in arrays:
        pairs += [a, "i" + "".join(next(letters) for _ in range(1, a.ndim))]
    results = da.blockwise(
        run_block, "i", *pairs, spec=spec, dtype=object, meta=np.empty((0,), dtype=object),
        concatenate=True, align_arrays=False, name=token,
    )  # fmt: skip
    outs = []
    for j, (ref, leaf) in enumerate(zip(spec.leaves, leaves, strict=True)):
        feat = "".join(next(letters) for _ in range(1, leaf.ndim))
        dtype = leaf.numpy().dtype
        label = "out" if len(leaves) == 1 else _name(str(ref))
        outs.append(
            da.blockwise(
                pick, "i" + feat, results, "i", j, None,
                new_axes={c: n for c, n in zip(feat, leaf.shape[1:], strict=True)},
                dtype=dtype, meta=np.empty((0,) * leaf.ndim, dtype=dtype),
                name=f"{base}-{label}-{spec.token}",
            )
        )  # fmt: skip
    return _restructure(graph.outputs, outs)


_LETTERS = "abcdefghjklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # "i" is the batch axis


def _restructure(outputs: Any, arrays: list[Any]) -> Any:
    """The graph's output structure with each output ref replaced by its collection."""
    it = iter(arrays)
    return pytree.tree_map(lambda r: next(it) if isinstance(r, Ref) else r, outputs)


# -- map_partitions ------------------------------------------------------------------------------
def _input_columns(
    graph_name: str, inputs: tuple[str, ...], meta: Any, columns: Mapping[str, Any] | None
) -> dict[str, str | list[str]]:
    """Graph input -> the column (one value per row) or columns (a row of values) feeding it."""
    if columns is None:
        if len(inputs) != 1:
            raise ValueError(
                f"map_partitions: graph '{graph_name}' has inputs {list(inputs)}: say which "
                "columns feed each, columns={input: [column, ...] or column}"
            )
        columns = {inputs[0]: list(meta.columns)}
    unknown = sorted(set(columns) - set(inputs))
    missing = [n for n in inputs if n not in columns]
    if unknown or missing:
        raise ValueError(
            f"map_partitions: columns= must name each input of graph '{graph_name}' "
            f"{list(inputs)} once (unknown: {unknown}, missing: {missing})"
        )
    for name, cols in columns.items():
        for c in [cols] if isinstance(cols, str) else cols:
            if c not in meta.columns:
                raise ValueError(
                    f"map_partitions: column '{c}' (for input '{name}') is not in the "
                    f"dataframe; it has {list(meta.columns)}"
                )
            if not (_numeric(meta[c].dtype)):
                raise TypeError(
                    f"map_partitions: column '{c}' (for input '{name}') has dtype "
                    f"{meta[c].dtype}; graph inputs take numbers or booleans (astype first)"
                )
    return {n: (columns[n] if isinstance(columns[n], str) else list(columns[n])) for n in inputs}


def _numeric(dtype: Any) -> bool:
    _, pd = _dask_dataframe()
    return pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)


def _column_dtype(meta: Any, cols: str | list[str]) -> np.dtype:
    """The numpy dtype of the rows a partition's columns become (`_frame_tensor`)."""
    part = meta[cols]
    dtypes = [part.dtype] if isinstance(cols, str) else list(part.dtypes)
    return np.result_type(*[np.zeros(0, dtype=_numpy_dtype(d)).dtype for d in dtypes])


def _numpy_dtype(dtype: Any) -> np.dtype:
    """numpy's dtype for a pandas one (``Float64`` / ``double[pyarrow]``: the numpy float)."""
    numpy_dtype = getattr(dtype, "numpy_dtype", None)
    return np.dtype(numpy_dtype if numpy_dtype is not None else dtype)


def _out_columns(spec_leaves, leaves, names: Mapping[str, Any] | None, graph_name: str):
    """Per output: its column names (one per feature); the whole list, checked unique."""
    names = dict(names or {})
    unknown = sorted(set(names) - {str(r) for r in spec_leaves})
    if unknown:
        raise ValueError(
            f"map_partitions: names= has {unknown}, which are not outputs of graph "
            f"'{graph_name}' ({[str(r) for r in spec_leaves]})"
        )
    per_leaf = []
    for ref, leaf in zip(spec_leaves, leaves, strict=True):
        if leaf.ndim > 2:
            raise ValueError(
                f"map_partitions: output '{ref}' has rows of shape {tuple(leaf.shape[1:])}; a "
                "column holds one number per row (flatten it in the graph, or use map_blocks)"
            )
        width = 1 if leaf.ndim == 1 else leaf.shape[1]
        given = names.get(str(ref))
        if given is None:
            cols = [str(ref)] if leaf.ndim == 1 else [f"{ref}_{i}" for i in range(width)]
        else:
            cols = [given] if isinstance(given, str) else list(given)
            if len(cols) != width:
                raise ValueError(
                    f"map_partitions: names['{ref}'] gives {len(cols)} column(s); the output "
                    f"has {width} per row"
                )
        per_leaf.append(cols)
    flat = [c for cols in per_leaf for c in cols]
    if len(set(flat)) != len(flat):
        raise ValueError(f"map_partitions: output column names repeat: {flat} (use names=)")
    return per_leaf


def map_partitions(
    s: Session,
    plan: Plan,
    frame: Any,
    columns: Mapping[str, Any] | None = None,
    names: Mapping[str, Any] | None = None,
) -> Any:
    """See `DaskExecutor.map_partitions`."""
    dd, pd = _dask_dataframe()
    if not isinstance(frame, dd.DataFrame):
        raise TypeError(
            f"map_partitions: expected a dask.dataframe.DataFrame, got {type(frame).__name__} "
            "(dd.read_parquet, dd.from_pandas, ...)"
        )
    graph = plan.graph
    meta = frame._meta
    cols = _input_columns(graph.name, graph.inputs, meta, columns)
    dtypes = [_column_dtype(meta, cols[n]) for n in graph.inputs]
    rows = [() if isinstance(cols[n], str) else (len(cols[n]),) for n in graph.inputs]

    def what(n: str) -> str:
        return f"column '{cols[n]}'" if isinstance(cols[n], str) else f"columns {cols[n]}"

    leaves = _probe(plan, rows, dtypes, what)
    spec = _spec(s, plan, rows, call_modes())
    out_cols = _out_columns(spec.leaves, leaves, names, graph.name)
    empty = {}
    for cs, leaf in zip(out_cols, leaves, strict=True):
        dtype = leaf.numpy().dtype
        empty.update({c: pd.Series([], dtype=dtype) for c in cs})
    out_meta = pd.DataFrame(empty, index=meta.index[:0])
    out_dtypes = tuple(leaf.numpy().dtype for leaf in leaves)
    inputs = tuple(cols[n] for n in graph.inputs)
    part = Partitions(spec, inputs, tuple(dtypes), out_cols, out_dtypes)
    return frame.map_partitions(
        run_partition, part, meta=out_meta, token=_name(graph.name), enforce_metadata=False
    )
