"""fold_batchnorm: BatchNormalization after Conv / Gemm / MatMul with constant weights → weights.

    BN(z) = γ·(z − μ)/√(σ² + ε) + β = a·z + (β − a·μ),   a = γ/√(σ² + ε)
    W′ = a·W (per output channel),  b′ = a·(b − μ) + β

Check: the BN's input has no other consumer and the weights/bias are not shared with another
node (as onnxscript's fold does); otherwise the BN is left alone and the reason noted. A BN that
cannot be folded stays a per-step affine op, which rate coding handles exactly (its bias is added
every step, so the time average is BN of the time-averaged input). In the folded mode it is then
rewritten as Mul + Add by channel so that threshold scales can be absorbed into it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import (const_value, fresh, is_const, is_weight_shared, make_const, producer, replace_constant,
                          times_in_float64)


def _bn_factors(bn):
    vals = [const_value(t) for t in bn.inputs[1:5]]
    if any(v is None for v in vals):
        return None
    gamma, beta, mean, var = (v.astype(np.float64) for v in vals)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    a = gamma / np.sqrt(var + eps)
    return a, beta - a * mean


def fold_batchnorm(graph: gs.Graph, ctx) -> gs.Graph:
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        reason = _try_fold(graph, bn)
        if reason:
            ctx.notes.append(f"BatchNormalization '{bn.name}' not folded: {reason}")
            if ctx.mode == "folded":
                _bn_to_affine(graph, bn)
    return graph


def _try_fold(graph, bn) -> str | None:
    if len(bn.outputs) > 1 and any(t.outputs for t in bn.outputs[1:]):
        return "training-mode outputs are used"
    factors = _bn_factors(bn)
    if factors is None:
        return "its parameters are not constant"
    a, shift = factors
    z = bn.inputs[0]
    lin = producer(z)
    if lin is None or lin.op not in ("Conv", "Gemm", "MatMul"):
        return "not preceded by Conv, Gemm or MatMul"
    if len(z.outputs) != 1 or z in graph.outputs:
        return f"the output of {lin.op} '{lin.name}' has other consumers (fork)"
    w = const_value(lin.inputs[1])
    if lin.op == "MatMul" and w is None and is_const(lin.inputs[0]):
        return f"MatMul '{lin.name}' has its constant weight first (W·x); MatMul is folded only as x·W"
    if w is None:
        return f"{lin.op} '{lin.name}' has non-constant weights"
    if is_weight_shared(lin.inputs[1], lin):
        return f"the weights of {lin.op} '{lin.name}' are shared with another node"
    bias_t = lin.inputs[2] if len(lin.inputs) > 2 and lin.inputs[2].name else None
    if bias_t is not None and (not is_const(bias_t) or is_weight_shared(bias_t, lin)):
        return f"the bias of {lin.op} '{lin.name}' is not a private constant"
    bias = const_value(bias_t).astype(np.float64) if bias_t is not None else 0.0
    if lin.op == "Conv":
        if w.shape[0] != a.size:
            return "channel count mismatch"
        w2 = times_in_float64(w, a.reshape((-1,) + (1,) * (w.ndim - 1)))
    elif lin.op == "Gemm":
        if lin.attrs.get("transA", 0) or float(lin.attrs.get("alpha", 1.0)) != 1.0 or \
                float(lin.attrs.get("beta", 1.0)) != 1.0:
            return "Gemm with transA/alpha/beta is not folded"
        w2 = times_in_float64(w, a[:, None] if lin.attrs.get("transB", 0) else a[None, :])
    else:
        if w.ndim != 2 or bn.inputs[0].shape is None or len(bn.inputs[0].shape) != 2:
            return "MatMul is folded only for 2-D activations"
        w2 = times_in_float64(w, a[None, :])
    b2 = a * bias + shift
    replace_constant(lin, 1, make_const(graph, lin.inputs[1].name + "_bn", w2, dtype=w.dtype))
    new_bias = make_const(graph, (bias_t.name if bias_t is not None else lin.name + ".bias") + "_bn", b2,
                          dtype=w.dtype)
    out = bn.outputs[0]
    if lin.op == "MatMul":
        lin.outputs = [gs.Variable(fresh(graph, out.name + "_mm"), dtype=out.dtype, shape=out.shape)]
        graph.nodes.append(gs.Node("Add", name=fresh(graph, (lin.name or "matmul") + "_bias"),
                                   inputs=[lin.outputs[0], new_bias], outputs=[out]))
    else:
        if len(lin.inputs) > 2:
            lin.inputs[2] = new_bias
        else:
            lin.inputs.append(new_bias)
        lin.outputs = [out]
    bn.inputs.clear()
    bn.outputs.clear()
    return None


def _bn_to_affine(graph, bn):
    factors = _bn_factors(bn)
    x = bn.inputs[0]
    if factors is None or x.shape is None:
        return
    a, shift = factors
    shape = (1, -1) + (1,) * (len(x.shape) - 2)
    label = bn.name or "batchnorm"  # unnamed nodes are valid ONNX: every new name is made unique
    mid = gs.Variable(fresh(graph, label + "_scaled"), dtype=np.float32)
    out = bn.outputs[0]
    graph.nodes.append(gs.Node("Mul", name=fresh(graph, label + "_mul"),
                               inputs=[x, make_const(graph, label + ".a", a.reshape(shape))], outputs=[mid]))
    graph.nodes.append(gs.Node("Add", name=fresh(graph, label + "_add"),
                               inputs=[mid, make_const(graph, label + ".b", shift.reshape(shape))], outputs=[out]))
    bn.inputs.clear()
    bn.outputs.clear()
