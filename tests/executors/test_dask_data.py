"""DaskExecutor.map_blocks / map_partitions over real Zarr and Parquet files on a real cluster.

One embedded cluster (2 nanny-managed worker processes) serves the module; its executor is
entered with ``with``, so a plain ``.compute()`` runs there. Files are written to ``tmp_path``
and read by the workers. Outputs are checked row by row against eager PyTorch.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec.executors.dask import DaskExecutor

pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")
pytest.importorskip("zarr")
pytest.importorskip("pyarrow")

pytestmark = [
    pytest.mark.dask,
    # dask 2026.8's read_parquet calls reset_index(inplace=True), deprecated by pandas 3.1
    pytest.mark.filterwarnings("ignore:.*inplace keyword.*:DeprecationWarning"),
]

D = 8
CALLS = {"n": 0}  # per process: blocks the 'count' node ran over


def count(t: torch.Tensor) -> torch.Tensor:
    CALLS["n"] += 1
    return t


def calls() -> int:
    return CALLS["n"]


def towers() -> gx.Graph:
    """
          x
          |
        count
        /   \\
       a     b
        \\   /
         add -> head        outputs (head, a)
    """
    g = gx.Graph("towers")
    x = g.node("count", count, g.input("x"))
    a, b = g.node("a", nn.Linear(D, 16), x), g.node("b", nn.Linear(D, 16), x)
    head = g.node("head", nn.Linear(16, 3), g.node("add", gx.add(), a, b))
    g.output(head, a)
    return g


def two_inputs() -> gx.Graph:
    """(x, w) -> a(x) * w[:, None] -> score (one value per row)"""
    g = gx.Graph("scored")
    a = g.node("a", nn.Linear(D, 4), g.input("x"))
    scaled = g.node("scale", lambda t, w: t * w[:, None].to(t.dtype), a, g.input("w"))
    g.output(g.node("score", lambda t: t.sum(dim=1), scaled))
    return g


def eager(g: gx.Graph, *xs: np.ndarray):
    with torch.no_grad():
        return gx.SequentialExecutor().run(gx.plan(g), *(torch.from_numpy(np.array(x)) for x in xs))


def close(got: np.ndarray, want: torch.Tensor) -> None:
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def ex():
    with DaskExecutor(n_workers=2, dashboard_address=None, timeout="30s") as ex:
        yield ex


def worker_calls(ex: DaskExecutor) -> int:
    return sum(ex.client.run(calls).values())


@pytest.fixture
def zarr_x(tmp_path) -> tuple[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((4000, D)).astype("float32")
    path = str(tmp_path / "x.zarr")
    da.from_array(x, chunks=(500, D)).to_zarr(path)
    return path, x


@pytest.fixture
def parquet_frame(tmp_path) -> tuple[str, pd.DataFrame]:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.standard_normal((3000, D)).astype("float32"),
                      columns=[f"f{i}" for i in range(D)])  # fmt: skip
    df["w"] = rng.random(3000)
    df["label"] = "cat"
    path = str(tmp_path / "frame.parquet")
    dd.from_pandas(df, npartitions=5).to_parquet(path)
    return path, df


def test_map_blocks_over_zarr_is_lazy_and_equals_eager(ex, zarr_x, tmp_path):
    path, x = zarr_x
    g = towers()
    before = worker_calls(ex)
    head, a = ex.map_blocks(g, da.from_zarr(path))
    assert worker_calls(ex) == before  # built: nothing ran on the cluster
    assert isinstance(head, da.Array) and head.shape == (4000, 3) and a.shape == (4000, 16)
    assert head.chunks[0] == (500,) * 8 and head.dtype == np.float32
    assert head.name.startswith("towers-head-") and a.name.startswith("towers-a-")
    head.to_zarr(str(tmp_path / "head.zarr"))  # a plain Dask call: runs on ex's cluster
    assert worker_calls(ex) == before + 8  # one task per block, the plan run once in each
    want_head, want_a = eager(g, x)
    close(da.from_zarr(str(tmp_path / "head.zarr")).compute(), want_head)
    close(a.compute(), want_a)


def test_weights_go_once_per_worker_and_data_never_through_the_client(ex, tmp_path):
    x = np.random.default_rng(2).standard_normal((40000, D)).astype("float32")
    path = str(tmp_path / "big.zarr")
    da.from_array(x, chunks=(5000, D)).to_zarr(path)
    g = towers()
    plan = gx.plan(g)
    first = ex.scatters
    head, _ = ex.map_blocks(plan, da.from_zarr(path))
    scatters = ex.scatters
    assert scatters - first == 2 * (len(g.nodes) - 1)  # each node once on each of 2 workers
    sent = ex.sent_bytes
    got = head.compute()
    assert ex.sent_bytes - sent <= 0.01 * x.nbytes  # the task graph, never the rows
    head2, _ = ex.map_blocks(plan, da.from_zarr(path))
    close(head2.compute(), eager(g, x)[0])
    assert ex.scatters == scatters  # already on the workers: not sent again
    close(got, eager(g, x)[0])


def test_map_partitions_over_parquet_equals_eager(ex, parquet_frame, tmp_path):
    path, df = parquet_frame
    g = towers()
    feats = [f"f{i}" for i in range(D)]
    frame = dd.read_parquet(path)
    out = ex.map_partitions(g, frame, columns={"x": feats}, names={"a": [f"a{i}" for i in
                                                                         range(16)]})  # fmt: skip
    assert list(out.columns) == ["head_0", "head_1", "head_2"] + [f"a{i}" for i in range(16)]
    assert out.npartitions == frame.npartitions
    out.to_parquet(str(tmp_path / "out.parquet"))
    got = dd.read_parquet(str(tmp_path / "out.parquet")).compute().sort_index()
    want_head, want_a = eager(g, df[feats].to_numpy())
    close(got[["head_0", "head_1", "head_2"]].to_numpy(), want_head)
    close(got[[f"a{i}" for i in range(16)]].to_numpy(), want_a)


def test_several_inputs_one_column_each_and_one_value_per_row(ex, parquet_frame):
    path, df = parquet_frame
    g = two_inputs()
    feats = [f"f{i}" for i in range(D)]
    out = ex.map_partitions(g, dd.read_parquet(path), columns={"x": feats, "w": "w"})
    assert list(out.columns) == ["score"]
    want = eager(g, df[feats].to_numpy(), df["w"].to_numpy())
    close(out.compute().sort_index()["score"].to_numpy(), want)
    x = da.from_array(df[feats].to_numpy(), chunks=(1000, D))
    w = da.from_array(df["w"].to_numpy(), chunks=1000)
    close(ex.map_blocks(g, x, w).compute(), want)


def test_bad_input_is_named_before_anything_runs(ex, parquet_frame):
    path, _ = parquet_frame
    g = towers()
    before = worker_calls(ex)
    x = da.ones((100, D), chunks=(50, 4), dtype="float32")
    with pytest.raises(ValueError, match=r"input 'x' is chunked along axis 1 .*rechunk"):
        ex.map_blocks(g, x)
    with pytest.raises(ValueError, match=r"cannot take .*'x' rows of shape \(5,\).*node 'a'"):
        ex.map_blocks(g, da.ones((100, 5), chunks=(50, 5), dtype="float32"))
    with pytest.raises(ValueError, match=r"cannot take .*float64.*node 'a'"):
        ex.map_blocks(g, da.ones((100, D), chunks=(50, D), dtype="float64"))
    with pytest.raises(TypeError, match=r"input 'x' .*dtype object"):
        ex.map_blocks(g, da.from_array(np.full((10, D), None, dtype=object), chunks=(5, D)))
    with pytest.raises(ValueError, match=r"inputs 'x' and 'w' are chunked differently"):
        ex.map_blocks(two_inputs(), da.ones((100, D), chunks=(50, D)), da.ones(100, chunks=25))
    frame = dd.read_parquet(path)
    with pytest.raises(ValueError, match=r"column 'nope' \(for input 'x'\) is not in"):
        ex.map_partitions(g, frame, columns={"x": ["f0", "nope"]})
    with pytest.raises(TypeError, match=r"column 'label' \(for input 'x'\) has dtype"):
        ex.map_partitions(g, frame)  # every column, the text one included
    with pytest.raises(ValueError, match=r"names= has \['nope'\]"):
        ex.map_partitions(g, frame[[f"f{i}" for i in range(D)]], names={"nope": "y"})
    assert worker_calls(ex) == before  # none of it reached the cluster


def poison(t: torch.Tensor) -> torch.Tensor:
    if bool((t > 1e6).any()):
        raise ValueError("a poisoned row")
    return t


def test_a_node_raising_in_a_block_names_the_block_and_the_node(ex):
    g = gx.Graph("poisoned")
    g.output(g.node("head", nn.Linear(D, 2), g.node("check", poison, g.input("x"))))
    x = np.zeros((40, D), dtype="float32")
    x[25, 3] = 1e7  # in block 2 of 10-row blocks
    y = ex.map_blocks(g, da.from_array(x, chunks=(10, D)))
    with pytest.raises(gx.NodeError, match=r"block 2 of graph 'poisoned'.*node 'check'.*poisoned"):
        y.compute()
    frame = dd.from_pandas(pd.DataFrame(x, columns=[f"f{i}" for i in range(D)]), npartitions=4)
    with pytest.raises(gx.NodeError, match=r"partition 2 of graph 'poisoned'.*node 'check'"):
        ex.map_partitions(g, frame).compute()


def slow_count(t: torch.Tensor) -> torch.Tensor:
    time.sleep(0.2)  # long enough blocks that a kill lands mid-computation
    return count(t)


@pytest.mark.slow
def test_a_worker_killed_mid_computation_gives_the_right_result(ex, zarr_x):
    path, x = zarr_x
    g = gx.Graph("killed")
    h = g.node("slow", slow_count, g.input("x"))
    g.output(g.node("head", nn.Linear(D, 3), g.node("relu", torch.relu, g.node("a", nn.Linear(
        D, D), h))))  # fmt: skip
    y = ex.map_blocks(g, da.from_zarr(path).rechunk((100, D)))  # 40 blocks
    before = worker_calls(ex)
    future = ex.client.compute(y)
    deadline = time.monotonic() + 60
    while worker_calls(ex) == before:  # a block has run: the computation is under way
        assert time.monotonic() < deadline, "no block ever ran"
        time.sleep(0.05)
    address, pid = sorted(ex.client.run(os.getpid).items())[0]
    os.kill(pid, signal.SIGKILL)
    got = future.result(timeout=120)
    close(got, eager(g, x))
    ex.client.wait_for_workers(2, timeout=60)  # the nanny brings a worker back
