"""absorb_threshold_scale (folded mode): move every neuron's θ into the weights.

Afterwards the traffic between layers is signed integer spike counts k and every neuron has
threshold 1 (the hardware-ready form). Each tensor t carries a scale c(t) with
real value = c(t) · stored value; the pass chooses scales and rewrites constants:

    neuron            input must carry θ_in (stored = X/θ_in); output K carries θ_out
    Conv / Gemm /     W′ = W · c_in / c_out,  b′ = b / c_out,  with c_out the scale the consumers
    MatMul / Mul c    want (θ_in of the next neuron through transparent ops), else 1
    Add c             c′ = c / c_in (a bias in the input's units)
    transparent ops   Add/Sub/Concat of activations, pooling, reshapes, MaxPool, ReLU (positively
                      homogeneous: f(c·x) = c·f(x) for c > 0): inputs share one scale
    other non-linear  (Softmax, LayerNorm, ...) read real values: stored · c
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
from pmsm_compiler.ops.temporal import HOMOGENEOUS_OPS

from .graph_utils import PassRefusal, const_value, fresh, make_const

TRANSPARENT_ALL = {"Add", "Sub", "Concat", "Sum"}
TRANSPARENT_FIRST = {"AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                     "Slice", "Split", "ReduceSum", "ReduceMean", "Identity", "Pad", "DepthToSpace", "SpaceToDepth",
                     "Tile", "Expand", "Gather"} | HOMOGENEOUS_OPS


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def _is_float(t):
    if t.dtype is None:
        return True
    try:
        return np.dtype(t.dtype).kind == "f"
    except TypeError:  # onnx-graphsurgeon keeps types numpy lacks (bfloat16, float8) as ONNX enums
        return "FLOAT" in onnx.TensorProto.DataType.Name(int(t.dtype))


def classify(node):
    if node.domain == DOMAIN and node.op in ("AIF", "IF"):
        return "neuron"
    consts = [const_value(t) is not None for t in node.inputs]
    if node.op in ("Conv", "Gemm") and len(node.inputs) > 1 and consts[1] and not consts[0]:
        return "weighted"
    if node.op == "MatMul" and len(node.inputs) == 2 and consts[1] and not consts[0]:
        return "weighted"
    if node.op in ("Mul", "Div") and len(node.inputs) == 2 and consts[1] != consts[0]:
        if node.op == "Div" and consts[0]:
            return "real"
        return "weighted"
    if node.op == "Add" and len(node.inputs) == 2 and consts[1] != consts[0]:
        return "affine_add"
    if node.op in TRANSPARENT_ALL:
        return "transparent_all"
    if node.op == "Pad":
        mode = node.attrs.get("mode", "constant")
        value = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        if mode != "constant" or (value is not None and float(np.asarray(value).reshape(-1)[0]) != 0.0):
            return "real"
        return "transparent_first"
    if node.op in TRANSPARENT_FIRST:
        return "transparent_first"
    return "real"


def _data_inputs(node, cls):
    if cls == "transparent_all":
        return [i for i, t in enumerate(node.inputs) if const_value(t) is None and t.name and _is_float(t)]
    if cls in ("transparent_first", "weighted", "neuron"):
        return [0]
    if cls == "affine_add":
        return [0 if const_value(node.inputs[1]) is not None else 1]
    return [i for i, t in enumerate(node.inputs) if t.name and const_value(t) is None and _is_float(t)]


def absorb_threshold_scale(graph: gs.Graph, ctx) -> gs.Graph:
    if ctx.mode != "folded":
        return graph
    graph.toposort()
    layer_of = {id(layer["_node"]): layer for layer in ctx.layers}
    state_inputs = {s["input"] for s in ctx.states}
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
        for i in _data_inputs(node, cls):
            t = node.inputs[i]
            if cls == "neuron":
                want(t, layer_of[id(node)]["theta_in"])
            elif cls == "weighted":
                want(t, None)
            elif cls in ("transparent_all", "transparent_first", "affine_add"):
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
            node.inputs[0] = rescale(x, scale_of(x) / layer["theta_in"], label)
            carried[node.outputs[0].name] = layer["theta_out"]
            continue
        if cls == "weighted":
            x = node.inputs[0]
            c_in, d = scale_of(x), desire.get(node.outputs[0].name)
            d = 1.0 if d is None else d
            _rewrite_weights(graph, node, c_in / d, 1.0 / d)
            carried[node.outputs[0].name] = d
            continue
        if cls == "affine_add":
            i = _data_inputs(node, cls)[0]
            c = scale_of(node.inputs[i])
            k = 1 - i
            value = const_value(node.inputs[k]).astype(np.float64)
            node.inputs[k] = make_const(graph, f"{node.inputs[k].name}_scaled", value / c,
                                        dtype=const_value(node.inputs[k]).dtype)
            carried[node.outputs[0].name] = c
            continue
        if cls in ("transparent_all", "transparent_first"):
            idx = _data_inputs(node, cls)
            scales = [scale_of(node.inputs[i]) for i in idx]
            d = desire.get(node.outputs[0].name)
            target = d if d is not None and any(_close(s, d) for s in scales) else (scales[0] if scales else 1.0)
            for i, s in zip(idx, scales):
                node.inputs[i] = rescale(node.inputs[i], s / target, label)
            for out in node.outputs:
                carried[out.name] = target
            continue
        for i in _data_inputs(node, "real"):
            node.inputs[i] = rescale(node.inputs[i], scale_of(node.inputs[i]), label)
        for out in node.outputs:
            carried[out.name] = 1.0

    # 3. Graph outputs in real units, under their original names.
    for j, t in enumerate(list(graph.outputs)):
        if t.name in {s["output"] for s in ctx.states}:
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
            if layer["spike_tensor"] == t.name:
                layer["spike_tensor"] = stored.name
    ctx.notes.append(f"absorb_threshold_scale: {len(rescaled)} synapse scale node(s) inserted")
    return graph


def _rewrite_weights(graph, node, w_factor: float, b_factor: float):
    op = node.op
    w = const_value(node.inputs[1])
    if op == "Div":
        node.op = "Mul"
        new_w = (1.0 / w.astype(np.float64)) * w_factor
    else:
        new_w = w.astype(np.float64) * w_factor
    node.inputs[1] = make_const(graph, f"{node.inputs[1].name}_folded", new_w, dtype=w.dtype)
    if op in ("Conv", "Gemm") and len(node.inputs) > 2 and node.inputs[2].name:
        b = const_value(node.inputs[2])
        if op == "Gemm":
            b_factor = b_factor / float(node.attrs.get("alpha", 1.0)) * float(node.attrs.get("alpha", 1.0))
        node.inputs[2] = make_const(graph, f"{node.inputs[2].name}_folded", b.astype(np.float64) * b_factor,
                                    dtype=b.dtype)
