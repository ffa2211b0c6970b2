"""Check an exported model against PyTorch eager, quantizer by quantizer.

The quantization levels k = round(y / s), s = λ/L, at every PQA / QCFS output are compared between
PyTorch eager (forward hooks on the quantizer modules) and onnxruntime (every ``pmsm::PQA`` /
``pmsm::QCFS`` node's output exposed as an extra graph output). Levels are integers, so the
comparison is exact; the two engines still differ on rare inputs that lie within a float rounding
of a level boundary (different convolution summation order, BatchNorm folded into the conv
weights by the exporter, NCHWc rewrites at ``ORT_ENABLE_ALL``), and such a flip propagates to the
layers after it, and on random weights the cascade grows with depth. Two figures therefore:

* the plain disagreement rate (each engine runs the whole network on its own), and
* the *isolated* rate (``pqa_outputs_onnx(..., fed=torch_outputs)``): every quantizer's consumers
  in onnxruntime are fed PyTorch's quantizer outputs, so each layer is computed from the same
  inputs in both engines and only the flips that layer causes itself are counted.

ONNX nodes are mapped to modules through the module path that the dynamo exporter records in
each node's ``metadata_props`` (``pkg.torch.onnx.name_scopes``: ``['', 'layers', 'layers.0',
'layers.0.act1', '_symbolic_1']``, the module path is the last-but-one entry); when that is
missing (another exporter) they are matched by order (graph order = forward execution order).

Used by ``tests/test_export.py`` and ``bench/export_agreement.py``.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

QUANT_OPS = ("PQA", "QCFS")
QUANT_DOMAIN = "pmsm"
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


# ------------------------------------------------------------------------------------------------
# ONNX side
# ------------------------------------------------------------------------------------------------

@dataclass
class QuantNode:
    """One ``pmsm::PQA`` / ``pmsm::QCFS`` node of a graph."""

    index: int              # position among the quantizer nodes (graph order)
    op: str                 # "PQA" or "QCFS"
    output: str             # name of the node's output value
    lam_input: str          # name of the λ input
    levels: int             # attribute L
    module: str | None      # module path from the exporter's metadata, if recorded


def _module_path(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            # [..., module path, op name]; the top-level module is ''.
            if isinstance(scopes, list) and len(scopes) >= 2 and scopes[-2]:
                return str(scopes[-2])
    return None


def quantizer_nodes(model: onnx.ModelProto) -> list[QuantNode]:
    """The quantizer nodes of the main graph, in graph order."""
    nodes = []
    for node in model.graph.node:
        if node.domain == QUANT_DOMAIN and node.op_type in QUANT_OPS:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            nodes.append(QuantNode(len(nodes), node.op_type, node.output[0], node.input[1],
                                   int(attrs["L"]), _module_path(node)))
    return nodes


def _value_info(model: onnx.ModelProto, name: str, new_name: str | None = None) -> onnx.ValueInfoProto:
    """The (shape-inferred) type of value ``name``, or float32 of unknown rank, as ``new_name``."""
    for vi in model.graph.value_info:
        if vi.name == name:
            out = onnx.ValueInfoProto()
            out.CopyFrom(vi)
            out.name = new_name or name
            return out
    return onnx.helper.make_tensor_value_info(new_name or name, onnx.TensorProto.FLOAT, None)


def with_quantizer_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs every quantizer node's output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    for q in quantizer_nodes(out):
        if q.output not in existing:
            out.graph.output.append(_value_info(out, q.output))
            existing.add(q.output)
    return out


FED_SUFFIX = "__fed"


def with_fed_quantizer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which every quantizer output is *fed* to its consumers from a new graph input
    ``<output>__fed`` (and still computed and exposed as a graph output).

    Feeding PyTorch's quantizer outputs there makes every quantizer in onnxruntime compute from
    exactly PyTorch's inputs to its layer, so a level difference at one quantizer no longer
    propagates to the next ones: the comparison then counts only the flips each layer causes.
    """
    out = with_quantizer_outputs(onnx.shape_inference.infer_shapes(model))
    names = [q.output for q in quantizer_nodes(out)]
    fed = set(names)
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            if name in fed:
                node.input[i] = name + FED_SUFFIX
    for name in names:
        out.graph.input.append(_value_info(out, name, name + FED_SUFFIX))
    return out


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:  # a Constant node
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise KeyError(f"λ input {name!r} is neither an initializer nor a Constant")


def make_session(model: onnx.ModelProto, level=None, threads: int = 1):
    """``sessions.make_session`` on the CPU with one thread by default, at the given level (a name
    of ``sessions.OPT_LEVELS`` or an ``onnxruntime.GraphOptimizationLevel``; default all)."""
    from pmsm_compiler.sessions import make_session as session_factory

    return session_factory(model, "all" if level is None else level, threads=threads)


@dataclass
class QuantOutputs:
    """Quantizer outputs of one forward pass, keyed by module path (or ONNX value name)."""

    outputs: dict = field(default_factory=dict)   # name -> float32 array (y)
    steps: dict = field(default_factory=dict)     # name -> float32 step s = λ/L
    ops: dict = field(default_factory=dict)       # name -> "PQA" / "QCFS"
    logits: np.ndarray | None = None
    by_metadata: bool = True                      # names are module paths from the metadata

    @property
    def names(self) -> list[str]:
        return list(self.outputs)

    def levels(self, name: str) -> np.ndarray:
        return np.rint(self.outputs[name] / self.steps[name])


def pqa_outputs_onnx(model_proto: onnx.ModelProto, feeds, level=None, threads: int = 1,
                     session=None, fed: QuantOutputs | None = None) -> QuantOutputs:
    """Run ``model_proto`` in onnxruntime and return every PQA / QCFS output and the logits.

    ``feeds``: a dict {input name: array} or one array for the single input. ``level``: an
    ``onnxruntime.GraphOptimizationLevel`` (default ORT_ENABLE_ALL). Pass ``session`` (made by
    :func:`make_session` on ``with_quantizer_outputs(model_proto)``, or on
    ``with_fed_quantizer_inputs(model_proto)`` with ``fed``) to reuse one across batches.

    ``fed``: reference quantizer outputs (e.g. :func:`pqa_outputs_torch` on the same input) to feed
    to every quantizer's consumers instead of onnxruntime's own (see
    :func:`with_fed_quantizer_inputs`): each returned output is then onnxruntime's computation of
    that layer from the reference's inputs, and a comparison with the reference counts only the
    level flips each layer causes itself, not the ones propagated from earlier layers.
    """
    nodes = quantizer_nodes(model_proto)
    paths = [q.module for q in nodes]
    by_metadata = all(paths) and len(set(paths)) == len(paths)
    if session is None:
        exposed = with_fed_quantizer_inputs(model_proto) if fed is not None else with_quantizer_outputs(model_proto)
        session = make_session(exposed, level, threads)
    if not isinstance(feeds, dict):
        feeds = {model_proto.graph.input[0].name: np.asarray(feeds, dtype=np.float32)}
    else:
        feeds = dict(feeds)
    if fed is not None:
        if by_metadata and fed.by_metadata:
            sources = [fed.outputs[q.module] for q in nodes]
        else:
            if len(fed.names) != len(nodes):
                raise ValueError(f"{len(fed.names)} reference outputs for {len(nodes)} quantizer nodes")
            sources = [fed.outputs[n] for n in fed.names]
        for q, value in zip(nodes, sources):
            feeds[q.output + FED_SUFFIX] = np.ascontiguousarray(value, dtype=np.float32)
    first_output = model_proto.graph.output[0].name
    wanted = [first_output] + [q.output for q in nodes]
    values = dict(zip(wanted, session.run(wanted, feeds)))
    result = QuantOutputs(logits=values[first_output], by_metadata=by_metadata)
    for q in nodes:
        name = q.module if by_metadata else q.output
        lam = np.float32(_initializer(model_proto, q.lam_input).reshape(()))
        result.outputs[name] = values[q.output]
        result.steps[name] = np.float32(lam / np.float32(q.levels))
        result.ops[name] = q.op
    return result


# ------------------------------------------------------------------------------------------------
# PyTorch side
# ------------------------------------------------------------------------------------------------

def pqa_outputs_torch(model, x) -> QuantOutputs:
    """Run ``model`` (eval mode, no grad) on ``x`` and capture every PQA / QCFS output with hooks.

    Names are module paths in execution order. A quantizer module that runs twice in one forward
    pass gets ``name#1``, ``name#2``, ... for its later calls.
    """
    import torch

    from pmsm_compiler.training.activations import quantized_activations

    result = QuantOutputs()
    handles = []

    def hook(name, module):
        def capture(_mod, _inputs, output):
            key = name
            i = 1
            while key in result.outputs:
                key = f"{name}#{i}"
                i += 1
            result.outputs[key] = output.detach().cpu().numpy()
            result.steps[key] = (module.lam.detach().float() / module.levels).cpu().numpy().astype(np.float32)
            result.ops[key] = module.onnx_op
        return capture

    for name, module in quantized_activations(model):
        handles.append(module.register_forward_hook(hook(name, module)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            xt = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x
            result.logits = model(xt).detach().cpu().numpy()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return result


# ------------------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------------------

@dataclass
class LevelStats:
    """Level agreement at one quantizer output (counts add up over batches)."""

    name: str
    op: str
    n: int = 0                 # number of elements compared
    diff: int = 0              # elements whose level differs
    max_dk: int = 0            # largest |Δk|
    off_grid: float = 0.0      # largest |y/s − round(y/s)| seen on either side (should be ~0)
    nonzero: int = 0           # elements with k != 0 (reference side), to show the check is not vacuous
    clipped: int = 0           # elements at k_max, or at k_min when k_min < 0 (reference side)

    @property
    def rate(self) -> float:
        return self.diff / self.n if self.n else 0.0

    def add(self, other: "LevelStats") -> "LevelStats":
        self.n += other.n
        self.diff += other.diff
        self.max_dk = max(self.max_dk, other.max_dk)
        self.off_grid = max(self.off_grid, other.off_grid)
        self.nonzero += other.nonzero
        self.clipped += other.clipped
        return self


def compare_levels(reference: QuantOutputs, other: QuantOutputs, k_ranges: dict | None = None) -> list[LevelStats]:
    """Compare levels quantizer by quantizer; returns one LevelStats per quantizer, reference order.

    Quantizers are matched by name when ``other`` carries module paths, otherwise by order.
    ``k_ranges`` (name -> (k_min, k_max)) enables the ``clipped`` count.
    """
    ref_names = reference.names
    if other.by_metadata and reference.by_metadata:
        missing = [n for n in ref_names if n not in other.outputs]
        extra = [n for n in other.names if n not in reference.outputs]
        if missing or extra:
            raise ValueError(f"quantizers do not match: missing {missing}, extra {extra}")
        pairs = [(n, n) for n in ref_names]
    else:
        if len(ref_names) != len(other.names):
            raise ValueError(f"{len(ref_names)} quantizer outputs vs {len(other.names)}")
        pairs = list(zip(ref_names, other.names))
    stats = []
    for rn, on in pairs:
        a, b = reference.outputs[rn], other.outputs[on]
        if a.shape != b.shape:
            raise ValueError(f"{rn}: shape {a.shape} vs {b.shape}")
        ua, ub = a / reference.steps[rn], b / other.steps[on]
        ka, kb = np.rint(ua), np.rint(ub)
        dk = np.abs(ka - kb)
        st = LevelStats(rn, reference.ops[rn], n=int(a.size), diff=int(np.count_nonzero(dk)),
                        max_dk=int(dk.max()) if dk.size else 0,
                        off_grid=float(max(np.abs(ua - ka).max(initial=0.0), np.abs(ub - kb).max(initial=0.0))),
                        nonzero=int(np.count_nonzero(ka)))
        if k_ranges and rn in k_ranges:
            lo, hi = k_ranges[rn]
            at_end = ka == hi
            if lo != 0:  # for QCFS (k_min = 0) the bottom level is the ReLU zero, not a clip
                at_end |= ka == lo
            st.clipped = int(np.count_nonzero(at_end))
        stats.append(st)
    return stats


def accumulate(total: list[LevelStats] | None, new: list[LevelStats]) -> list[LevelStats]:
    """Add the counts of ``new`` to ``total`` (same quantizers, same order)."""
    if total is None:
        return new
    for t, n in zip(total, new, strict=True):
        t.add(n)
    return total


def overall_rate(stats: list[LevelStats]) -> float:
    n = sum(s.n for s in stats)
    return sum(s.diff for s in stats) / n if n else 0.0


def k_ranges_of(model) -> dict:
    """name -> (k_min, k_max) for every quantizer of a PyTorch model."""
    from pmsm_compiler.training.activations import quantized_activations

    return {name: (m.k_min, m.k_max) for name, m in quantized_activations(model)}


# ------------------------------------------------------------------------------------------------
# Making random models non-trivial
# ------------------------------------------------------------------------------------------------

def randomize_for_check(model, x_calib=None, seed: int = 0, lam_range=(2.0, 10.0), lam_mode: str = "uniform"):
    """Give a randomly initialized model random λ's and random BatchNorm statistics, in place.

    * λ: uniform in ``lam_range`` (``lam_mode="uniform"``), or ``"calibrated"``: SpikeZIP-style
      λ = L·2·mean|x|/sqrt(k_max) from the quantizer's input on ``x_calib``, times a random factor
      in [0.5, 2] (for models whose activations are far from unit scale, e.g. softmax outputs).
    * BatchNorm: random affine (γ ∈ [0.5, 1.5], β ~ N(0, 0.3²)); running statistics from one
      train-mode pass over ``x_calib`` when given (so every layer sees roughly normalized
      inputs), then perturbed (mean shifted by N(0, 0.2²)·σ, variance scaled by [0.5, 2]), so that
      folding BatchNorm into the convolutions changes the weights non-trivially.

    Leaves the model in eval mode.
    """
    import torch
    import torch.nn as nn

    from pmsm_compiler.training.activations import quantized_activations

    gen = torch.Generator().manual_seed(seed)

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    quantizers = quantized_activations(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        if lam_mode == "uniform":
            for _, q in quantizers:
                q.lam.fill_(float(uniform((), *lam_range)))
        elif lam_mode == "calibrated":
            if x_calib is None:
                raise ValueError("lam_mode='calibrated' needs x_calib")
            handles = []

            def pre_hook(q, inputs):
                mean_abs = float(inputs[0].abs().mean())
                if mean_abs > 0 and math.isfinite(mean_abs):
                    q.lam.fill_(q.levels * 2.0 * mean_abs / math.sqrt(q.k_max) * float(uniform((), 0.5, 2.0)))

            for _, q in quantizers:
                handles.append(q.register_forward_pre_hook(pre_hook))
            model.eval()
            try:
                model(torch.as_tensor(x_calib))
            finally:
                for h in handles:
                    h.remove()
        else:
            raise ValueError(f"lam_mode must be 'uniform' or 'calibrated', got {lam_mode!r}")

        for bn in bns:
            if bn.affine:
                bn.weight.copy_(uniform(bn.weight.shape, 0.5, 1.5))
                bn.bias.copy_(0.3 * torch.randn(bn.bias.shape, generator=gen))
        if bns and x_calib is not None:
            saved = [(bn, bn.momentum) for bn in bns]
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average: after one pass, the batch statistics
            model.train()
            try:
                model(torch.as_tensor(x_calib))
            finally:
                for bn, momentum in saved:
                    bn.momentum = momentum
        for bn in bns:
            if bn.track_running_stats:
                if x_calib is None:
                    bn.running_mean.copy_(0.5 * torch.randn(bn.running_mean.shape, generator=gen))
                    bn.running_var.copy_(uniform(bn.running_var.shape, 0.5, 2.0))
                else:
                    sd = bn.running_var.clamp_min(1e-12).sqrt()
                    bn.running_mean.add_(0.2 * sd * torch.randn(bn.running_mean.shape, generator=gen))
                    bn.running_var.mul_(uniform(bn.running_var.shape, 0.5, 2.0))
    model.eval()
    return model


__all__ = [
    "QUANT_OPS", "QuantNode", "QuantOutputs", "LevelStats", "quantizer_nodes", "with_quantizer_outputs",
    "with_fed_quantizer_inputs",
    "make_session", "pqa_outputs_onnx", "pqa_outputs_torch", "compare_levels", "accumulate", "overall_rate",
    "k_ranges_of", "randomize_for_check",
]
