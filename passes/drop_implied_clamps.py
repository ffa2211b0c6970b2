"""drop_implied_clamps: remove a Relu / Clip whose bounds the quantizer reading it already applies.

Quantization toolchains put a clamp in front of an activation quantizer whose integer range
implies it: onnxruntime's QDQ export and PyTorch's PT2E keep ``Relu → QuantizeLinear`` with an
unsigned range (zero point at the bottom of the integer range), Brevitas' QuantReLU exports
``Relu → QuantizeLinear → Clip(0, 2^b − 1) → DequantizeLinear``, a Relu6 becomes ``Clip(0, 6)``.
Left in place, such a clamp reads spike traffic and would become a temporal wrapper between two
neurons. With the quantizer's level function (what recognize_pqa recorded)

    level(x) = round(pre(x))      pre: x / s, x · c or x, in float32;  round: half to even
                                  (QuantizeLinear) or floor(· + ½) (PQA)
    Q(x)     = clip(level(x), k_min, k_max)

and ``level`` monotone non-decreasing in x, for a clamp c(x) = min(max(x, lo), hi):

    Q(c(x)) = Q(x) for every x   ⇔   level(lo) ≤ k_min  and  level(hi) ≥ k_max

(⇐: below lo, Q(x) and Q(lo) both saturate at k_min; above hi, both at k_max; in between c(x) = x.
⇒: at x → −∞, Q(x) = k_min, so Q(lo) must be k_min too, and likewise at +∞.) A missing bound is
±∞ and always implied; NaN passes through both sides alike. The clamp is then removed and the
quantizer reads the clamp's input; the levels, and so the ANN's outputs, are bit-identical.

Kept, with a note: a bound the quantizer does not imply (e.g. a Relu before a symmetric int8
quantizer: level(0) = 0 > k_min = −128), a non-constant or non-scalar bound, and a clamp whose
output has another reader or is a graph output (the others would see the unclamped values).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import INTERNAL_DOMAIN, node_label, producer, scalar_value

CLAMP_OPS = ("Relu", "Clip")


def quantizer_level(value: float, attrs: dict) -> float:
    """The quantizer's level of ``value`` before its clip, with the quantizer's own float32
    arithmetic and rounding (``attrs``: a ``Quantizer`` node's attributes)."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.float32(value)
        scale = np.float32(attrs["pre_value"])
        u = {"Div": lambda: x / scale, "Mul": lambda: x * scale}.get(attrs["pre_op"], lambda: x)()
        if attrs["rounding"] == "half_even":
            return float(np.rint(u))
        return float(np.floor(u + np.float32(0.5)))


def clamp_bounds(node: gs.Node) -> tuple[float, float] | str:
    """(lo, hi) of a Relu or Clip, a missing bound as ±inf; a string saying why not otherwise."""
    if node.op == "Relu":
        return 0.0, float("inf")
    bounds = []
    for i, missing in ((1, -np.inf), (2, np.inf)):
        if len(node.inputs) <= i or not node.inputs[i].name:
            bounds.append(float(missing))
            continue
        value = scalar_value(node.inputs[i])
        if value is None or np.isnan(value):
            return f"its {'min' if i == 1 else 'max'} is not a constant number"
        bounds.append(value)
    return bounds[0], bounds[1]


def _fmt(value: float) -> str:
    return f"{value:.9g}"


def drop_implied_clamps(graph: gs.Graph, ctx) -> gs.Graph:
    dropped = 0
    for q in [n for n in graph.nodes if n.domain == INTERNAL_DOMAIN and n.op == "Quantizer"]:
        while True:  # Relu → Clip → quantizer: both may go
            clamp = producer(q.inputs[0])
            if clamp is None or clamp.op not in CLAMP_OPS or clamp.domain not in (None, "", "ai.onnx"):
                break
            reason = _why_kept(graph, clamp, q)
            if reason:
                ctx.notes.append(f"drop_implied_clamps: {node_label(clamp)} before quantizer '{q.name}' kept: "
                                 f"{reason}")
                break
            q.inputs[0] = clamp.inputs[0]
            clamp.inputs.clear()
            clamp.outputs.clear()
            dropped += 1
    if dropped:
        ctx.notes.append(f"drop_implied_clamps: {dropped} Relu/Clip node(s) removed (implied by the range of the "
                         f"quantizer that reads them)")
    return graph


def _why_kept(graph, clamp, q) -> str | None:
    out = clamp.outputs[0]
    if out in graph.outputs or len(out.outputs) != 1:
        return f"its output '{out.name}' has other readers"
    bounds = clamp_bounds(clamp)
    if isinstance(bounds, str):
        return bounds
    lo, hi = bounds
    a = q.attrs
    k_min, k_max = int(a["k_min"]), int(a["k_max"])
    if lo != -np.inf:
        level = quantizer_level(lo, a)
        if not level <= k_min:
            return f"the quantizer's level of its min {_fmt(lo)} is {level:g} > k_min = {k_min} (it changes the levels)"
    if hi != np.inf:
        level = quantizer_level(hi, a)
        if not level >= k_max:
            return f"the quantizer's level of its max {_fmt(hi)} is {level:g} < k_max = {k_max} (it changes the levels)"
    return None
