"""The models people run, on Dask: transformers and vision models that import through
``torch.export`` (and transformers' own fx tracer) run on real workers and equal eager.

Each model is built from the zoo (`benchmarks.zoo`: random weights, tiny configs) and
imported as a user does, ``gx.trace(model, example_inputs=...)``; fx cannot trace any of
them, so every one goes through ``torch.export`` (aten ops, export's input guards, lifted
buffers, autocast and vmap regions, a dynamic batch size). Each runs with ``run``, with
``map`` over other batch sizes, in ``gx.GraphModule`` and sharded on the session's
LocalCluster, and some on ``dask scheduler`` / ``dask worker`` processes; batch inference
reads token ids from Zarr and Parquet files on the workers. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree

import graphexec as gx
from graphexec.executors.dask import DaskExecutor, UnsendableNodeError

pytest.importorskip("distributed")
zoo = pytest.importorskip("benchmarks.zoo")
zoo.prepare_torchvision()  # before any of the three is imported: see its docstring
for _name in ("torchvision", "timm", "transformers"):
    pytest.importorskip(
        _name, reason=f"{_name} missing: pip install -c constraints.txt -e '.[zoo]'"
    )
from _dask_cluster import process_cluster  # noqa: E402

pytestmark = [
    pytest.mark.dask,
    pytest.mark.zoo,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::graphexec.DeadNodeWarning"),
    # DeBERTa-v2's module scripts a helper when it is built (transformers 4.57)
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    # dask 2026.8's read_parquet calls reset_index(inplace=True), deprecated by pandas 3.1
    pytest.mark.filterwarnings("ignore:.*inplace keyword.*:DeprecationWarning"),
]

#: Every transformers model of the zoo that fx cannot trace as it is, and a timm one.
MODELS = ["bert", "distilbert", "deberta_v2", "t5", "bart", "marian", "clip", "gpt2", "qwen2",
          "llama", "crossvit"]  # fmt: skip


def leaves(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def assert_same(got, ref) -> None:
    a, b = leaves(got), leaves(ref)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def rows(inputs: tuple[torch.Tensor, ...], n: int) -> tuple[torch.Tensor, ...]:
    """``n`` rows of each input (the example's rows, repeated)."""
    return tuple(torch.cat([t] * (n // t.shape[0] + 1))[:n] for t in inputs)


@pytest.fixture(scope="module", params=MODELS)
def imported(request):
    """A zoo model, imported with its example inputs as a user does."""
    zm = zoo.build(request.param, traced=False)
    graph = gx.trace(zm.model, example_inputs=zm.inputs, name=request.param)
    return zm.model, zm.inputs, graph


def test_export_imports_run_on_workers_and_equal_eager(imported, dask_client):
    model, inputs, graph = imported
    assert graph.imported_by.startswith("torch.export (batch size dynamic)"), graph.imported_by
    ex = DaskExecutor(client=dask_client)
    plan = gx.plan(graph)
    with torch.no_grad():
        assert_same(ex.run(plan, *inputs), model(*inputs))
        batches = [rows(inputs, 1), rows(inputs, 3)]  # not the example's batch size
        for got, batch in zip(ex.map(plan, batches, progress=False), batches, strict=True):
            assert_same(got, model(*batch))
        module = gx.GraphModule(graph, executor=ex, measure=False)
        assert_same(module(*inputs), model(*inputs))
        sharded = DaskExecutor(client=dask_client, placement="shard")  # each node on one worker
        assert_same(sharded.run(plan, *inputs), model(*inputs))
    assert ex.scatters > 0  # the nodes went to the workers (copies, each once per worker)
    sent = ex.scatters
    with torch.no_grad():
        ex.run(plan, *inputs)
    assert ex.scatters == sent


class InPlace(nn.Module):
    """docs/entry_points.md's exported program: an in-place masked_fill_ between modules."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x, mask):
        y = self.a(x) + self.b(x)
        y.masked_fill_(mask, 0.0)
        return self.head(y)


def test_an_exported_program_runs_on_workers(dask_client):
    """``gx.trace(torch.export.export(...))``: export's guard module, in-place ops, fixed sizes."""
    model, x = InPlace().eval(), torch.randn(4, 8)
    graph = gx.trace(torch.export.export(model, (x, x > 0)))
    with torch.no_grad():
        got = DaskExecutor(client=dask_client).run(graph, x, x > 0)
        torch.testing.assert_close(got, model(x, x > 0))


@pytest.mark.parametrize("key", ["bert", "t5"])
def test_transformers_own_fx_graphs_run_on_workers(key, dask_client):
    """Graphs of ``transformers.utils.fx.symbolic_trace``, whose code plain fx cannot
    re-trace (what an fx module does when it is unpickled)."""
    zm = zoo.build(key)
    assert zm.graph is not None, zm.trace_error
    with torch.no_grad():
        got = DaskExecutor(client=dask_client).run(gx.plan(zm.graph), *zm.graph_inputs)
        assert_same(got, zm.model(*zm.inputs))


# Dynamo's own vmap tracing instantiates an autograd Function (torch 2.13 deprecates that).
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.parametrize("key", ["gpt2", "qwen2"])
def test_dynamo_graphs_run_on_workers(key, dask_client):
    """The graphs Dynamo hands the ``torch.compile`` backend (GPT-2's vmap mask, Qwen2's
    autocast region, parameters as inputs, symbolic sizes where Dynamo made them), imported
    as the backend imports them, on the workers."""
    zm = zoo.build(key, traced=False)
    graphs = []

    def keep(gm, example_inputs):
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            torch.compile(zm.model, backend=keep)(*zm.inputs)
            assert graphs
            ex = DaskExecutor(client=dask_client)
            for gm, example in graphs:
                assert_same(ex.run(gx.trace(gm), *example), gm(*example))
    finally:
        torch._dynamo.reset()


def test_graph_module_on_its_own_cluster_and_on_scheduler_and_worker_processes():
    """``GraphModule(executor="dask")`` (an embedded cluster of its own) and a cluster of
    ``dask scheduler`` / ``dask worker`` processes."""
    zm = zoo.build("t5", traced=False)
    graph = gx.trace(zm.model, example_inputs=zm.inputs)
    module = gx.GraphModule(graph, executor="dask")
    try:
        with torch.no_grad():
            ref = zm.model(*zm.inputs)
            assert_same(module(*zm.inputs), ref)
            assert_same(module(*zm.inputs), ref)
        # planned from estimates: what a measured plan tries here (the thread budget, the
        # module as it is) does not run on the workers, so it would print what did not happen
        assert not module.plan.measured and module.plan.as_is is None
    finally:
        module.close()
    batches = [rows(zm.inputs, 2), rows(zm.inputs, 5)]
    with process_cluster(n_workers=2) as cluster, DaskExecutor(cluster.address) as ex, \
            torch.no_grad():  # fmt: skip
        assert_same(ex.run(graph, *zm.inputs), ref)
        for got, batch in zip(ex.map(graph, batches, progress=False), batches, strict=True):
            assert_same(got, zm.model(*batch))


def test_a_failed_check_is_one_error_and_dask_logs_none(dask_client, caplog):
    """Rows of another sequence length fail export's input check on the worker: one
    NodeError each call, the call's jobs released (Dask's scheduler logged an assertion's
    traceback when they were cancelled: every job waits on check_inputs, a diamond)."""
    zm = zoo.build("t5", traced=False)
    graph = gx.trace(zm.model, example_inputs=zm.inputs)
    ex = DaskExecutor(client=dask_client)
    longer = (*(torch.cat([t, t], dim=1) for t in zm.inputs[:2]), zm.inputs[2])
    with caplog.at_level(logging.ERROR, logger="distributed"), torch.no_grad():
        for _ in range(2):
            with pytest.raises(gx.NodeError, match=r"check_inputs.*Guard failed.*dynamic_shapes"):
                ex.run(graph, *longer)
        assert_same(ex.run(graph, *zm.inputs), zm.model(*zm.inputs))  # the next call works
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("distributed")]


class Locked(nn.Linear):
    def __init__(self):
        super().__init__(4, 4)
        self.guard = threading.Lock()


def test_a_node_that_cannot_be_sent_is_named_before_anything_is_sent(dask_client, capfd):
    g = gx.Graph("locked")
    x = g.input("x")
    g.output(g.node("b", nn.Linear(4, 4), g.node("a", Locked(), x)))
    ex = DaskExecutor(client=dask_client)
    capfd.readouterr()
    with pytest.raises(UnsendableNodeError, match=r"node 'a' cannot be sent .* its guard \(lock\)"):
        ex.run(g, torch.randn(2, 4))
    assert ex.scatters == 0  # not even node 'b' went out
    assert "Traceback" not in capfd.readouterr().err  # one error, no logged tracebacks
    g.nodes["a"].fn.guard = None  # made picklable: the same executor runs it
    x = torch.randn(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(ex.run(g, x), g.nodes["b"].fn(g.nodes["a"].fn(x)))


# -- batch inference over a dataset on disk ---------------------------------------------------
class Pooled(nn.Module):
    """What a user keeps of BERT per row (its pooled output): one vector a row, for columns."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids, attention_mask).pooler_output


@pytest.fixture(scope="module")
def tokens():
    """200 rows of token ids and their attention masks (padding at the end of each row)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, zoo.VOCAB, (200, zoo.SEQ), generator=g)
    length = torch.randint(4, zoo.SEQ + 1, (200, 1), generator=g)
    mask = (torch.arange(zoo.SEQ) < length).long()
    return ids * mask, mask


@pytest.fixture(scope="module")
def bert():
    zm = zoo.build("bert", traced=False)
    return zm, gx.trace(zm.model, example_inputs=zm.inputs)


def test_bert_over_token_ids_in_zarr_with_map_blocks(bert, tokens, tmp_path, dask_client):
    da = pytest.importorskip("dask.array")
    pytest.importorskip("zarr")
    (zm, graph), (ids, mask) = bert, tokens
    for name, t in (("ids", ids), ("mask", mask)):
        da.from_array(t.numpy(), chunks=(64, zoo.SEQ)).to_zarr(str(tmp_path / f"{name}.zarr"))
    ex = DaskExecutor(client=dask_client)

    def embed():
        out = ex.map_blocks(graph, da.from_zarr(str(tmp_path / "ids.zarr")),
                            da.from_zarr(str(tmp_path / "mask.zarr")))  # fmt: skip
        assert type(out).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"
        return dask_client.compute([out.last_hidden_state, out.pooler_output], sync=True)

    embed()  # places the weights
    before = ex.sent_bytes  # the shared client's counter: what this pass adds
    hidden, pooled = embed()
    assert ex.sent_bytes - before < ids.nbytes + mask.nbytes  # task specs (~6 kB a block)
    with torch.no_grad():
        ref = zm.model(ids, mask)  # blocks of 64, 64, 64 and 8 rows: every row checked
    torch.testing.assert_close(torch.tensor(hidden), ref.last_hidden_state, **TOL)
    torch.testing.assert_close(torch.tensor(pooled), ref.pooler_output, **TOL)


TOL = {"rtol": 1e-4, "atol": 1e-5}


def test_bert_over_token_id_columns_in_parquet_with_map_partitions(bert, tokens, tmp_path,
                                                                    dask_client):  # fmt: skip
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    (zm, _), (ids, mask) = bert, tokens
    model = Pooled(zm.model).eval()
    graph = gx.trace(model, example_inputs=zm.inputs)
    id_cols = [f"t{i}" for i in range(zoo.SEQ)]
    mask_cols = [f"m{i}" for i in range(zoo.SEQ)]
    frame = pd.DataFrame(np.concatenate([ids.numpy(), mask.numpy()], axis=1),
                         columns=id_cols + mask_cols)  # fmt: skip
    dd.from_pandas(frame, npartitions=3).to_parquet(str(tmp_path / "tokens.parquet"))
    out = DaskExecutor(client=dask_client).map_partitions(
        graph, dd.read_parquet(str(tmp_path / "tokens.parquet")),
        columns={"input_ids": id_cols, "attention_mask": mask_cols},
    )  # fmt: skip
    out = dask_client.compute(out, sync=True)
    with torch.no_grad():
        ref = model(ids, mask)
    assert out.shape == (200, ref.shape[1])
    torch.testing.assert_close(torch.tensor(out.sort_index().to_numpy()), ref, **TOL)
