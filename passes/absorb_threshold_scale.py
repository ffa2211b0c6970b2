"""absorb_threshold_scale (folded mode): move every neuron's θ into the weights.

Afterwards the traffic between layers is signed integer spike counts k and every neuron has
threshold 1 (the hardware-ready form). Each tensor t carries a scale c(t) with
real value = c(t) · stored value; the pass chooses scales and rewrites constants:

    neuron            input must carry θ_in (stored = X/θ_in); output K carries θ_out
    Conv / Gemm /     W′ = W · c_in / c_out,  b′ = b / c_out,  with c_out the scale the consumers
    MatMul / Mul c /  want (θ_in of the next neuron through transparent ops), else 1; a variable
    Div by c          bias (Gemm's C) is rescaled to c_out. MatMul's constant may be either
                      operand, x·W or W·x (token mixing): c is a per-tensor scalar, so
                      W′·(x/c_in) = (W·x)/c_out on either side
    transparent ops   Add/Sub/Sum/Mean/Concat of activations, Where with a fixed condition, pooling,
                      reshapes, Pad, Neg, Resize (fixed interpolation weights), MaxPool, ReLU
                      (positively homogeneous: f(c·x) = c·f(x) for c > 0): inputs share one scale
                      c, and so does the output
    constants mixed   a constant v in the output's units (Add/Sub either order, Sum, Concat, Where
    with traffic      operands, Pad's fill value, Resize's extrapolation value) is stored as v / c:
                      c·(v/c − k) = v − c·k
    Shape, Size       read no values: no rescale, outputs unscaled
    other ops         (Softmax, LayerNorm, BN left as it is, c / x, x^p, Max with a constant, ...)
                      read real values: stored · c
    graph outputs     real values (scale 1)

Where two scales meet (a residual Add of an identity shortcut with θ_a and a branch with θ_b, a
fork to consumers that want different scales), a constant Mul (a synaptic weight on that edge)
is inserted. Every θ is positive (checked in pqa_to_aif), so pushing scales through MaxPool and
ReLU is valid; a negative scale is never pushed through a non-linear op.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm_compiler.ops import DOMAIN
from pmsm_compiler.ops.neurons import NEURON_OPS
from pmsm_compiler.ops.supported import AFFINE_REAL, METADATA_OPS, TRANSPARENT_ALL, TRANSPARENT_FIRST

from .graph_utils import (PassRefusal, const_value, fresh, is_const, make_const, replace_constant,
                          times_in_float64)


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def _is_float(t):
    if t.dtype is None:
        return True
    try:
        return np.dtype(t.dtype).kind == "f"
    except TypeError:  # onnx-graphsurgeon keeps types numpy lacks (bfloat16, float8) as ONNX enums
        return "FLOAT" in onnx.TensorProto.DataType.Name(int(t.dtype))


def _present(node, i):
    return len(node.inputs) > i and bool(node.inputs[i].name)


def _float_const(t):
    if isinstance(t, gs.Constant):  # its type, without reading its values (``is_const``)
        try:
            return np.dtype(t.dtype).kind == "f"
        except TypeError:
            pass
    value = const_value(t)
    return value is not None and value.dtype.kind == "f"


def _float_identity_cast(node) -> bool:
    """Cast/CastLike from float32 to float32: the identity (exporters emit it around dtype-generic
    code); any other cast rounds or changes the traffic's type."""
    def float32(t):
        try:
            return t.dtype is not None and np.dtype(t.dtype) == np.float32
        except TypeError:  # a type numpy has no dtype for (bfloat16)
            return False

    if node.op not in ("Cast", "CastLike") or not node.inputs or not float32(node.inputs[0]):
        return False
    if node.op == "Cast":
        return int(node.attrs.get("to", 0)) == 1  # TensorProto.FLOAT
    return len(node.inputs) > 1 and float32(node.inputs[1])


def classify(node):
    """How an op relates to the scales of its inputs (see the module docstring):

    neuron, weighted (a constant weight: Conv/Gemm W, MatMul x·W or W·x, Mul c or c·, Div by c), affine_add
    (Add/Sub with one constant), transparent_all (Add/Sub/Sum/Mean/Concat: every input in one scale),
    transparent_first (scale passes through the first input; the others are shapes, axes, indices),
    select (Where: cond picks between inputs 1 and 2), metadata (Shape/Size), affine_real
    (BatchNormalization), real (anything else: reads real values).
    """
    if node.domain == DOMAIN and node.op in NEURON_OPS:
        return "neuron"
    if node.op in METADATA_OPS and not node.domain:
        return "metadata"
    consts = [is_const(t) for t in node.inputs]
    if node.op in ("Conv", "Gemm") and len(node.inputs) > 1 and consts[1] and not consts[0]:
        return "weighted"
    if node.op == "MatMul" and len(node.inputs) == 2 and consts[0] != consts[1]:
        return "weighted"  # x·W or W·x: linear in x either way (layout: ``batch_axis_refusal``)
    binary_const = node.op in ("Mul", "Div", "Add", "Sub") and len(node.inputs) == 2 and consts[1] != consts[0]
    if binary_const and not _float_const(node.inputs[0 if consts[0] else 1]):
        return "real"  # integer arithmetic (shape computations) carries no scale: x // 2 is no x · 0.5
    if node.op in ("Mul", "Div") and binary_const:
        if node.op == "Div" and consts[0]:
            return "real"  # c / x is not linear in x
        return "weighted"
    if binary_const:
        return "affine_add"
    if node.op in TRANSPARENT_ALL:
        return "transparent_all"
    if node.op == "Where" and len(node.inputs) == 3:
        return "select"
    if node.op in TRANSPARENT_FIRST or _float_identity_cast(node):
        return "transparent_first"
    if node.op in AFFINE_REAL:
        return "affine_real"
    return "real"


def weight_index(node):
    """The constant operand of a weighted op (Mul and MatMul may have it first)."""
    if node.op in ("Mul", "Div", "MatMul"):
        return 0 if is_const(node.inputs[0]) else 1
    return 1


def batch_axis_refusal(node) -> str | None:
    """Why a MatMul with a constant weight cannot be compiled, or None.

    C = W·x, W [.., M, K], x [B, .., K, N]: one spike at x[b, .., k, n] drives the M accumulations of
    the column W[.., :, k]; for C = x·W, W [.., K, P], the P of the row W[.., k, :]. That holds per
    sample only when the batch axis of x stays axis 0 of C. W·x needs x of rank ≥ 3 (rank 2, [B, N],
    would contract the batch axis: samples mixed, the result depends on how a run batches them).
    Either side needs W of lower rank than x, or of the same rank with a leading 1 (a longer W
    would move the batch axis; a W with a leading axis > 1 pairs weights with samples); x·W with x
    and W both of rank 2 is the plain linear layer."""
    if node.op != "MatMul" or classify(node) != "weighted":
        return None
    left = weight_index(node) == 0
    w, x = node.inputs if left else node.inputs[::-1]
    label = f"MatMul '{node.name}'" if node.name else "MatMul"
    side = "constant weight first (W·x)" if left else "constant weight second (x·W)"
    if x.shape is None:
        return f"{label}: {side} on '{x.name}' of unknown rank: cannot tell its batch axis"
    if left and len(x.shape) < 3:
        return (f"{label}: {side} contracts axis 0 of the rank-{len(x.shape)} input "
                f"'{x.name}', its batch axis: samples would mix")
    same_rank_batch = len(w.shape) == len(x.shape) and (left or len(x.shape) >= 3)
    if len(w.shape) > len(x.shape) or (same_rank_batch and w.shape[0] != 1):
        return (f"{label}: {side} of rank {len(w.shape)} broadcasts against the batch axis "
                f"of the rank-{len(x.shape)} input '{x.name}'")
    return None


def _data_inputs(node, cls):
    """The inputs that carry traffic in this op's scale bookkeeping (rescaled by the pass)."""
    if cls in ("transparent_all", "affine_add"):
        return [i for i, t in enumerate(node.inputs) if not is_const(t) and t.name and _is_float(t)]
    if cls == "select":
        return [i for i in (1, 2) if not is_const(node.inputs[i]) and _is_float(node.inputs[i])]
    if cls == "transparent_first":
        # Pad's fill value is in the output's units: a time-varying one travels with the data.
        extra = [2] if node.op == "Pad" and _present(node, 2) and not is_const(node.inputs[2]) else []
        return [0] + extra
    if cls == "weighted":
        bias = [2] if node.op in ("Conv", "Gemm") and _present(node, 2) and not is_const(node.inputs[2]) \
            else []
        return [1 - weight_index(node) if node.op in ("Mul", "Div", "MatMul") else 0] + bias
    if cls == "neuron":
        return [0]
    if cls == "metadata":
        return []
    return [i for i, t in enumerate(node.inputs) if t.name and not is_const(t) and _is_float(t)]


def linear_inputs(node, cls) -> list[int]:
    """The inputs in which the op is linear (affine): a time-varying value there needs no temporal
    wrapper, since the op applied at every step averages to the op of the average. A time-varying
    value in any other input (a shape, indices, a condition) is not linear."""
    if cls == "affine_real":
        return [0]
    if cls == "metadata":
        return list(range(len(node.inputs)))  # reads no values at all
    if cls == "real":
        return []
    return _data_inputs(node, cls)


def _unit_constants(node, cls):
    """Constant inputs in the units of the output (an added constant, a Concat/Where operand, Pad's
    fill value): with the traffic stored as real/c, they must be stored as value/c too."""
    if cls in ("transparent_all", "affine_add"):
        return [i for i, t in enumerate(node.inputs) if t.name and is_const(t)]
    if cls == "select":
        return [i for i in (1, 2) if is_const(node.inputs[i])]
    if cls == "transparent_first" and node.op == "Pad" and _present(node, 2) and \
            is_const(node.inputs[2]):
        return [2]
    return []


# Ops whose output carries the scale of their (shared) traffic inputs.
TRANSPARENT_CLASSES = ("transparent_all", "transparent_first", "affine_add", "select")


def _in_units(graph, node, i, scale):
    """Constant input i of node stored in units of ``scale`` (value / scale)."""
    t = node.inputs[i]
    if _close(scale, 1.0):
        return t
    value = const_value(t)
    if value.dtype.kind != "f":
        raise PassRefusal(f"{node.op} '{node.name}': integer constant '{t.name}' meets traffic of scale {scale:g}")
    return make_const(graph, f"{t.name}_scaled", value.astype(np.float64) / scale, dtype=value.dtype)


def absorb_threshold_scale(graph: gs.Graph, ctx) -> gs.Graph:
    if ctx.mode != "folded":
        return graph
    graph.toposort()
    layer_of = {id(ctx.neuron_nodes[layer.name]): layer for layer in ctx.layers}
    state_inputs = {s.input for s in ctx.states}
    nodes = list(graph.nodes)

    # 1. What scale do the consumers of each tensor want? (None: any)
    desire: dict[str, float | None] = {}

    def want(t, d):
        if d is not None and desire.get(t.name) is None:
            desire[t.name] = d
        else:
            desire.setdefault(t.name, None)

    for t in graph.outputs:
        if t.name not in state_inputs:
            want(t, 1.0)
    for node in reversed(nodes):
        cls = classify(node)
        d_out = desire.get(node.outputs[0].name) if node.outputs else None
        for n, i in enumerate(_data_inputs(node, cls)):
            t = node.inputs[i]
            if cls == "neuron":
                want(t, layer_of[id(node)]["theta_in"])
            elif cls == "weighted":
                want(t, None if n == 0 else d_out)  # the weights absorb any scale; a variable bias does not
            elif cls in TRANSPARENT_CLASSES:
                want(t, d_out)
            else:
                want(t, 1.0)

    # 2. Forward: choose each tensor's carried scale, rewrite constants, insert rescales.
    carried: dict[str, float] = {t.name: 1.0 for t in graph.inputs}
    rescaled: dict[tuple, gs.Variable] = {}

    def rescale(t, factor, consumer_name):
        """A tensor holding stored(t)·factor (cached per (tensor, factor))."""
        if _close(factor, 1.0):
            return t
        key = (t.name, round(factor, 15))
        if key not in rescaled:
            out = gs.Variable(fresh(graph, f"{t.name}_rescaled"), dtype=np.float32, shape=t.shape)
            graph.nodes.append(gs.Node("Mul", name=fresh(graph, f"{consumer_name}/synapse_scale"),
                                       inputs=[t, make_const(graph, f"{t.name}.scale", np.float32(factor))],
                                       outputs=[out]))
            rescaled[key] = out
        return rescaled[key]

    def scale_of(t):
        return carried.get(t.name, 1.0)

    for node in nodes:
        cls = classify(node)
        label = node.name or node.op
        if cls == "neuron":
            layer = layer_of[id(node)]
            x = node.inputs[0]
            node.inputs[0] = rescale(x, scale_of(x) / layer.theta_in, label)
            carried[node.outputs[0].name] = layer.theta_out
            continue
        if cls == "weighted":
            x_index, *bias_index = _data_inputs(node, cls)
            c_in, d = scale_of(node.inputs[x_index]), desire.get(node.outputs[0].name)
            d = 1.0 if d is None else d
            _rewrite_weights(graph, node, c_in / d, 1.0 / d)
            for i in bias_index:
                node.inputs[i] = rescale(node.inputs[i], scale_of(node.inputs[i]) / d, label)
            carried[node.outputs[0].name] = d
            continue
        if cls in TRANSPARENT_CLASSES:
            idx = _data_inputs(node, cls)
            scales = [scale_of(node.inputs[i]) for i in idx]
            d = desire.get(node.outputs[0].name)
            target = d if d is not None and any(_close(s, d) for s in scales) else (scales[0] if scales else 1.0)
            for i, s in zip(idx, scales):
                node.inputs[i] = rescale(node.inputs[i], s / target, label)
            for i in _unit_constants(node, cls):
                node.inputs[i] = _in_units(graph, node, i, target)
            if node.op == "Resize" and float(node.attrs.get("extrapolation_value", 0.0)) != 0.0:
                # tf_crop_and_resize fills outside the region with this value, in the output's units
                node.attrs["extrapolation_value"] = float(node.attrs["extrapolation_value"]) / target
            for out in node.outputs:
                carried[out.name] = target
            continue
        if cls == "metadata":  # a shape is the same in every unit
            for out in node.outputs:
                carried[out.name] = 1.0
            continue
        for i in _data_inputs(node, "real"):
            node.inputs[i] = rescale(node.inputs[i], scale_of(node.inputs[i]), label)
        for out in node.outputs:
            carried[out.name] = 1.0

    # 3. Graph outputs in real units, under their original names.
    for j, t in enumerate(list(graph.outputs)):
        if t.name in {s.output for s in ctx.states}:
            continue
        c = scale_of(t)
        if _close(c, 1.0):
            continue
        prod = t.inputs[0] if t.inputs else None
        if prod is None:
            raise PassRefusal(f"graph output '{t.name}' has no producer")
        stored = gs.Variable(fresh(graph, f"{t.name}_stored"), dtype=t.dtype, shape=t.shape)
        prod.outputs = [stored if o is t else o for o in prod.outputs]
        for consumer in list(t.outputs):
            consumer.inputs = [stored if x is t else x for x in consumer.inputs]
        graph.nodes.append(gs.Node("Mul", name=fresh(graph, f"{t.name}/to_real"),
                                   inputs=[stored, make_const(graph, f"{t.name}.scale", np.float32(c))],
                                   outputs=[t]))
        for layer in ctx.layers:  # a neuron's output that is a graph output: its spikes are now `stored`
            if layer.spike_tensor == t.name:
                layer.spike_tensor = stored.name
    ctx.notes.append(f"absorb_threshold_scale: {len(rescaled)} synapse scale node(s) inserted")
    return graph


def _rewrite_weights(graph, node, w_factor: float, b_factor: float):
    op = node.op
    wi = weight_index(node)
    w = const_value(node.inputs[wi])
    if op == "Div":
        node.op = "Mul"
    new_w = times_in_float64(w, w_factor, reciprocal=op == "Div")
    replace_constant(node, wi, make_const(graph, f"{node.inputs[wi].name}_folded", new_w, dtype=w.dtype))
    # Gemm's alpha scales A·B and beta scales C: both commute with the factors above.
    if op in ("Conv", "Gemm") and _present(node, 2) and is_const(node.inputs[2]):
        b = const_value(node.inputs[2])
        replace_constant(node, 2, make_const(graph, f"{node.inputs[2].name}_folded", b.astype(np.float64) * b_factor,
                                             dtype=b.dtype))
