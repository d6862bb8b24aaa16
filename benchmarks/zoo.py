"""The model zoo: real architectures from torchvision, timm and transformers, random weights.

Every entry is a `Spec`: the library, the architectural family, a builder that makes the
model from code or a config (``weights=None`` / ``pretrained=False`` / a config object: nothing
is downloaded) and its inputs, and how it is traced. Configs are tiny (2 layers, hidden 128
for transformers; 64-80 px images; batch 2) so that the whole suite runs in minutes on a
2-core CPU. `build` makes one `ZooModel`: the eager model, its inputs, the ``torch.fx``
GraphModule and the `gx.Graph` made from it, or the error that stopped tracing.

Tracing paths
-------------
``fx``
    ``torch.fx.symbolic_trace`` with fx's default leaves (torchvision, most of timm).
``timm``
    fx with timm's own registrations (``timm.layers.get_notrace_modules`` as leaves,
    ``get_notrace_functions`` auto-wrapped), as timm's feature extraction traces: needed where
    a model computes its padding from input shapes (NASNet's ``pad_type="same"``).
``hf``
    ``transformers.utils.fx.symbolic_trace`` with the model's input names (transformers 4.x:
    5.0 removed ``transformers.utils.fx``).

Tracers leave shape reads nobody uses (``B, N, C = x.shape``, the HF tracer's shape checks):
graphexec skips them with a `DeadNodeWarning` (recorded in the results) while the fx column
runs them (a few cheap ops). fx's ``graph.eliminate_dead_code()`` is not used to drop them:
in torch 2.13 it also drops in-place method calls nobody reads, e.g. the ``masked_fill_`` that
builds CLIP's causal mask, and the text tower then computes something else.

The fx GraphModule goes to ``gx.trace``, which takes a traced GraphModule as it is, so the
fx column and every gx column run the very same graph.

``export`` is the second entry point: ``gx.trace(torch.export.export(model, inputs))``;
``example`` the one-import route, ``gx.trace(model, example_inputs=inputs)`` (fx where it
traces, else export, with the model itself as the module "as it is"); the last,
``torch.compile(model, backend="graphexec")``, needs nothing here (`benchmarks.bench_zoo`
compiles the eager model).

``import_zoo`` is the one place that deals with a broken install: see
`prepare_torchvision`.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import inspect
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

import graphexec as gx

from .suite import error_text

__all__ = ["Spec", "ZooModel", "SPECS", "import_zoo", "prepare_torchvision", "build", "trace",
           "export", "example"]  # fmt: skip

Inputs = dict[str, torch.Tensor]

BATCH = 2
SEQ = 32
#: Tiny transformer body shared by the BERT-like configs (and CLIP's two towers).
HIDDEN = dict(hidden_size=128, num_attention_heads=2, intermediate_size=256, num_hidden_layers=2)
VOCAB = 1000


def prepare_torchvision() -> None:
    """Let ``import torchvision`` succeed when its C++ extension cannot load.

    PyPI's Linux wheel of torchvision 0.28.0 (the release for torch 2.13) is a CUDA build whose
    ``_C.so`` cannot load beside the CPU wheel of torch, and its meta registrations then fail
    the import ("operator torchvision::nms does not exist"); timm and transformers' vision
    models import it. ``tools/torchvision_hook.py`` (which ``make`` links into the venv, and
    whose docstring says why in full) defines the two schemas those registrations need; this
    runs the same definition for a process started without the hook. Does nothing when the
    extension loads, when torchvision is absent or already imported, or the second time.
    """
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    from tools.torchvision_hook import define_missing_ops

    define_missing_ops(Path(spec.origin).parent)


def import_zoo() -> tuple[ModuleType, ModuleType, ModuleType]:
    """``(torchvision, timm, transformers)``, imported after `prepare_torchvision`.

    Raises
    ------
    ImportError
        When one of them is not installed, naming the extra to install.
    """
    prepare_torchvision()
    try:
        import timm
        import torchvision
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"the model zoo needs the `zoo` extra: pip install -c constraints.txt -e '.[zoo]' "
            f"({exc})"
        ) from exc
    return torchvision, timm, transformers


@dataclass(frozen=True)
class Spec:
    """One architecture: where it comes from, what it is, how to build and trace it."""

    key: str
    library: str
    family: str
    make: Callable[[], tuple[nn.Module, Inputs]]
    tracer: str = "fx"  # "fx", "timm" or "hf" (see the module docstring)
    concrete_args: dict[str, Any] | None = None


@dataclass
class ZooModel:
    """A built entry: eager model and inputs, and the traced forms (or why there are none)."""

    spec: Spec
    model: nn.Module
    names: tuple[str, ...]  # the forward arguments ``inputs`` fill, in order
    inputs: tuple[torch.Tensor, ...]
    shape: str
    params: int
    fx_module: fx.GraphModule | None = None
    graph: gx.Graph | None = None
    #: Values for placeholders the tracer specialised (``concrete_args``), passed after
    #: ``inputs`` to every gx column: ``gx.trace`` of a traced GraphModule makes every
    #: placeholder a required input, defaults or not.
    extra: tuple[Any, ...] = ()
    trace_s: float = 0.0
    trace_error: str = ""
    #: ``gx.trace(torch.export.export(model, inputs))`` (see `export`), or why there is none.
    export_graph: gx.Graph | None = None
    export_s: float = 0.0
    export_error: str = ""
    #: ``gx.trace(model, example_inputs=inputs)`` (see `example`), or why there is none.
    example_graph: gx.Graph | None = None
    example_s: float = 0.0
    example_error: str = ""

    @property
    def graph_inputs(self) -> tuple[Any, ...]:
        return (*self.inputs, *self.extra)


# -- builders ----------------------------------------------------------------------------------
def _image(size: int) -> Inputs:
    return {"x": torch.randn(BATCH, 3, size, size)}


def _tv(name: str, size: int = 64, **kw: Any) -> Callable[[], tuple[nn.Module, Inputs]]:
    def make() -> tuple[nn.Module, Inputs]:
        torchvision = import_zoo()[0]
        return torchvision.models.get_model(name, weights=None, **kw), _image(size)

    return make


def _timm(name: str, size: int = 64, **kw: Any) -> Callable[[], tuple[nn.Module, Inputs]]:
    def make() -> tuple[nn.Module, Inputs]:
        timm = import_zoo()[1]
        return timm.create_model(name, pretrained=False, **kw), _image(size)

    return make


def _tokens(n: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, n))


def _hf(model_cls: str, config_cls: str, inputs: Callable[[], Inputs], **config: Any):
    def make() -> tuple[nn.Module, Inputs]:
        transformers = import_zoo()[2]
        cfg = getattr(transformers, config_cls)(**config)
        return getattr(transformers, model_cls)(cfg), inputs()

    return make


def _text() -> Inputs:
    return {"input_ids": _tokens(), "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long)}


def _seq2seq() -> Inputs:
    return {**_text(), "decoder_input_ids": _tokens(SEQ // 2)}


def _clip_inputs() -> Inputs:  # CLIPModel.forward(input_ids, pixel_values, attention_mask, ...)
    t = _text()
    return {"input_ids": t["input_ids"], "pixel_values": torch.randn(BATCH, 3, 64, 64),
            "attention_mask": t["attention_mask"]}  # fmt: skip


_NO_CACHE = dict(use_cache=False)  # past key/value caches are not tensors: keep them out

SPECS: dict[str, Spec] = {
    s.key: s
    for s in [
        # torchvision
        Spec("googlenet", "torchvision", "inception-style",
             _tv("googlenet", aux_logits=False, init_weights=False)),
        Spec("inception_v3", "torchvision", "inception-style",  # 75 px is its smallest input
             _tv("inception_v3", 80, aux_logits=False, init_weights=False)),
        Spec("resnet18", "torchvision", "residual", _tv("resnet18")),
        Spec("mobilenet_v3_small", "torchvision", "depthwise", _tv("mobilenet_v3_small")),
        Spec("efficientnet_b0", "torchvision", "depthwise", _tv("efficientnet_b0")),
        Spec("squeezenet1_1", "torchvision", "multi-branch", _tv("squeezenet1_1")),
        # timm
        Spec("nasnet_a_tiny", "timm", "multi-branch",  # nasnetalarge's cells at 1/6 width
             _timm("nasnetalarge", stem_size=16, num_features=672), tracer="timm"),
        Spec("mixnet_s", "timm", "multi-branch", _timm("mixnet_s")),
        Spec("hrnet_w18_small", "timm", "multi-branch", _timm("hrnet_w18_small")),
        Spec("skresnet18", "timm", "multi-branch", _timm("skresnet18")),
        Spec("dla46_c", "timm", "multi-branch", _timm("dla46_c")),
        Spec("vit_tiny", "timm", "attention", _timm("vit_tiny_patch16_224", img_size=64),
             concrete_args={"attn_mask": None, "is_causal": False}),
        # fx stops at a branch on a shape in forward: imports through torch.export (issue 29)
        Spec("crossvit", "timm", "attention (two branches)",
             _timm("crossvit_tiny_240", 240, depth=((1, 1, 0),))),
        # transformers
        Spec("bert", "transformers", "attention",
             _hf("BertModel", "BertConfig", _text, vocab_size=VOCAB, **HIDDEN), tracer="hf"),
        Spec("gpt2", "transformers", "attention",
             _hf("GPT2Model", "GPT2Config", lambda: {"input_ids": _tokens()}, vocab_size=VOCAB,
                 n_embd=128, n_layer=2, n_head=2, n_inner=256, **_NO_CACHE), tracer="hf"),
        Spec("gpt_neo", "transformers", "attention",
             _hf("GPTNeoModel", "GPTNeoConfig", lambda: {"input_ids": _tokens()},
                 vocab_size=VOCAB, hidden_size=128, num_layers=2, num_heads=2,
                 intermediate_size=256, attention_types=[[["global", "local"], 1]],
                 **_NO_CACHE), tracer="hf"),
        Spec("clip", "transformers", "attention (two towers)",
             _hf("CLIPModel", "CLIPConfig", _clip_inputs, projection_dim=64,
                 text_config=dict(vocab_size=VOCAB, **HIDDEN),
                 vision_config=dict(image_size=64, patch_size=16, **HIDDEN)), tracer="hf"),
        Spec("t5", "transformers", "encoder-decoder",
             _hf("T5Model", "T5Config", _seq2seq, vocab_size=VOCAB, d_model=128, d_kv=64,
                 d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=2, **_NO_CACHE),
             tracer="hf"),
        Spec("bart", "transformers", "encoder-decoder",
             _hf("BartModel", "BartConfig", _seq2seq, vocab_size=VOCAB, d_model=128,
                 encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=256,
                 **_NO_CACHE), tracer="hf"),
        # transformers that plain fx cannot trace (issue 19): `gx.trace(model, example_inputs=)`
        Spec("distilbert", "transformers", "attention",
             _hf("DistilBertModel", "DistilBertConfig", _text, vocab_size=VOCAB, dim=128,
                 n_layers=2, n_heads=2, hidden_dim=256), tracer="hf"),
        Spec("deberta_v2", "transformers", "attention (disentangled)",
             _hf("DebertaV2Model", "DebertaV2Config", _text, vocab_size=VOCAB, **HIDDEN),
             tracer="hf"),
        Spec("qwen2", "transformers", "decoder (rotary, GQA)",
             _hf("Qwen2Model", "Qwen2Config", _text, vocab_size=VOCAB, num_key_value_heads=1,
                 **HIDDEN, **_NO_CACHE), tracer="hf"),
        Spec("llama", "transformers", "decoder (rotary, GQA)",
             _hf("LlamaModel", "LlamaConfig", _text, vocab_size=VOCAB, num_key_value_heads=1,
                 **HIDDEN, **_NO_CACHE), tracer="hf"),
        Spec("marian", "transformers", "encoder-decoder",
             _hf("MarianModel", "MarianConfig", _seq2seq, vocab_size=VOCAB, d_model=128,
                 encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=256,
                 pad_token_id=0, decoder_start_token_id=0, **_NO_CACHE), tracer="hf"),
    ]
}  # fmt: skip


# -- tracing -----------------------------------------------------------------------------------
class _TimmTracer(fx.Tracer):
    """fx with timm's registered leaf modules and auto-wrapped functions."""

    def __init__(self) -> None:
        from timm.layers import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._leaves = tuple(get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self._leaves) or super().is_leaf_module(m, qualname)


def _fx_module(spec: Spec, model: nn.Module, names: list[str]) -> fx.GraphModule:
    if spec.tracer == "hf":
        from transformers.utils.fx import symbolic_trace

        with _torch_restored():
            gm = symbolic_trace(model, input_names=names)
    elif spec.tracer == "timm":
        gm = fx.GraphModule(model, _TimmTracer().trace(model, spec.concrete_args))
    else:
        gm = fx.symbolic_trace(model, concrete_args=spec.concrete_args)
    return gm  # no eliminate_dead_code(): see the module docstring


@contextlib.contextmanager
def _torch_restored() -> Iterator[None]:
    """Put back the ``torch`` functions transformers' fx tracer wraps (``torch.tensor``,
    ``torch.arange``, ...): when its trace raises (GPT-2 in transformers 4.57) it leaves them
    wrapped, and a model imported later that ``torch.jit.script``s a function calling them
    (DeBERTa-v2) then fails to import."""
    saved = dict(vars(torch))
    try:
        yield
    finally:
        for name, value in saved.items():
            if vars(torch).get(name) is not value:
                setattr(torch, name, value)


def trace(zm: ZooModel) -> ZooModel:
    """Fill in ``fx_module``, ``graph`` and ``extra`` (or ``trace_error``); returns ``zm``."""
    t0 = time.perf_counter()
    try:
        gm = _fx_module(zm.spec, zm.model, list(zm.names))
    except Exception as exc:
        zm.trace_error = f"{zm.spec.tracer} tracer: {error_text(exc)}"
        zm.trace_s = time.perf_counter() - t0
        return zm
    zm.fx_module = gm
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    zm.extra = tuple(n.args[0] if n.args else None for n in placeholders[len(zm.inputs) :])
    try:
        zm.graph = gx.trace(gm, name=zm.spec.key)
    except Exception as exc:
        zm.trace_error = f"gx.trace: {error_text(exc)}"
    zm.trace_s = time.perf_counter() - t0
    return zm


def export(zm: ZooModel) -> ZooModel:
    """Fill in ``export_graph`` from ``torch.export.export(model, inputs)`` (default,
    non-strict) through `gx.trace`, or ``export_error``; returns ``zm``.

    The second entry point for models no fx tracer takes (GPT-2): export records aten ops
    while it runs the model's Python, so library code fx cannot trace (a ``vmap`` over
    proxies) runs as it is.
    """
    t0 = time.perf_counter()
    try:
        program = torch.export.export(zm.model, zm.inputs)
    except Exception as exc:
        zm.export_error = f"torch.export: {error_text(exc)}"
    else:
        try:
            zm.export_graph = gx.trace(program, name=f"{zm.spec.key}_export")
        except Exception as exc:
            zm.export_error = f"gx.trace: {error_text(exc)}"
    zm.export_s = time.perf_counter() - t0
    return zm


def example(zm: ZooModel) -> ZooModel:
    """Fill in ``example_graph`` from ``gx.trace(model, example_inputs=inputs)`` (fx where it
    traces, else ``torch.export``; the model itself stays "the module as it is"), or
    ``example_error``; returns ``zm``."""
    t0 = time.perf_counter()
    try:
        zm.example_graph = gx.trace(zm.model, example_inputs=zm.inputs,
                                    name=f"{zm.spec.key}_example")  # fmt: skip
    except Exception as exc:
        zm.example_error = f"gx.trace: {error_text(exc)}"
    zm.example_s = time.perf_counter() - t0
    return zm


def build(key: str, seed: int = 0, traced: bool = True) -> ZooModel:
    """Build one entry in eval mode with a fixed seed, traced unless ``traced=False``.

    Raises
    ------
    ImportError
        When the zoo extra is not installed (see `import_zoo`).
    ValueError
        When the builder's inputs are not the leading arguments of the model's ``forward``
        in order (every column calls it positionally).
    """
    spec = SPECS[key]
    torch.manual_seed(seed)
    model, named = spec.make()
    model.eval()
    params = list(inspect.signature(model.forward).parameters)
    if params[: len(named)] != list(named):
        raise ValueError(f"{key}: inputs {list(named)} are not the first arguments {params}")
    shape = ", ".join(f"{n} [{','.join(map(str, t.shape))}]" for n, t in named.items())
    zm = ZooModel(spec, model, tuple(named), tuple(named.values()), shape,
                  sum(p.numel() for p in model.parameters()))  # fmt: skip
    return trace(zm) if traced else zm
