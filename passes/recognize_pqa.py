"""recognize_pqa: find quantized activations in any of four forms and mark them.

Forms recognised (each becomes one internal ``Quantizer`` node that records the exact arithmetic
of the source, so that ``--exact`` can reproduce it bit for bit):

1. ``pmsm::PQA`` / ``pmsm::QCFS`` nodes (our exporter): θ = fl(λ / L), pre = Div θ, post = Mul θ.
2. Plain ops, as a plain PyTorch PQA exports:
   ``[Div(x, c) | Mul(x, c)] → Add(·, 0.5) → Floor → Clip(lo, hi) → [Mul(·, c′) | Div(·, c′)]``;
   the leading and trailing scale are optional (an exporter drops them when c = 1).
   Clip bounds must be integers with lo ≤ 0 < hi; lo = 0 is read as QCFS (clip to [0, λ]).
3. ``QuantizeLinear(x, s, zp) → [Clip] → DequantizeLinear(·, s′, zp)``, per-tensor: levels
   k = q − zp in [max(lo, qmin) − zp, min(hi, qmax) − zp]. QuantizeLinear rounds half to even
   (PQA half up), so its quantizer records ``rounding = "half_even"`` and becomes the neuron
   that fires the same way (``pmsm::AIFHalfEven``); its output op is the DequantizeLinear itself
   (scale s′, zero point zp), which exact mode keeps.
4. Fake quantization with ``Round``, as QAT code written with ``torch.round`` exports (LSQ, PACT,
   DoReFa-style quantizers): ``[Div(x, c) | Mul(x, c)] → Round → Clip(lo, hi) → [Mul | Div]``,
   or with the Clip before the Round. With integer bounds the two orders are the same function
   (Round fixes integers and is monotone: round(clip(u)) = clip(round(u)), bit for bit). Round
   rounds half to even, so the quantizer records ``rounding = "half_even"`` (``pmsm::AIFHalfEven``)
   and kind PQA, also for lo = 0 (a multi-level unsigned quantizer, not QCFS's half-up floor). A
   Round without a Clip of constant bounds next to it is no quantizer and is left alone; one with
   such a Clip whose bounds, scales or range do not qualify is refused like the forms above, unless
   it reads only values computed from the network input (then it stays an op). The straight-through
   estimator ``(round(u) − u).detach() + u`` (LSQ) exports as ``Round → Sub(·, u) → Add(·, u)``
   between them; it equals Round(u) bit for bit for every finite u (``_straight_through``).

Refused, with the reason in the report: a pattern whose inner tensors fork, non-scalar scales,
scales, λ or θ that are not positive and finite (θ = λ/L must be a normal float32, or the
neuron's threshold units are meaningless), L < 1, non-integer or non-finite bounds (α·L and β·L
must be integers: the AIF neuron's clip range is a range of spike counts) and bounds beyond
±2^24 (float32 counts exactly only up to there), per-axis quantization, mismatched zero points.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from pmsm_compiler.defaults import PQA_ALPHA, PQA_BETA, PQA_LEVELS
from pmsm_compiler.onnx_utils import downstream, tensor_flow

from .graph_utils import INTERNAL_DOMAIN, PassRefusal, const_operand, const_value, producer, scalar_value

MAX_LEVEL = 2**24  # float32 represents every integer up to 2^24 exactly: beyond, levels and membranes round

QDQ_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255),
              np.dtype(np.int16): (-32768, 32767), np.dtype(np.uint16): (0, 65535)}


def _f32(x) -> float:
    return float(np.float32(x))


def _integer(value: float, what: str) -> int:
    if not np.isfinite(value):
        raise PassRefusal(f"{what} {value} is not an integer level")
    k = round(value)
    if abs(value - k) > 1e-6 * max(1, abs(k)):  # float32 rounding of α·L, relative
        raise PassRefusal(f"{what} {value:.7g} is not an integer level")
    return int(k)


def _positive_finite(value: float, what: str) -> None:
    # float32 normal range: a subnormal θ loses precision, inf/NaN turn every level into NaN or 0
    if not (np.isfinite(value) and value >= np.finfo(np.float32).tiny and value <= np.finfo(np.float32).max):
        raise PassRefusal(f"{what} {value} must be a positive, finite float32")


def _make_quantizer(graph, x, y, *, kind, levels, k_min, k_max, pre_op, pre_value, post_op, post_value, lam,
                    name, source, rounding="half_up", post_zero_point=0, post_qtype=""):
    if not k_min <= 0 < k_max:
        raise PassRefusal(f"{name}: clip range [{k_min}, {k_max}] must satisfy k_min ≤ 0 < k_max")
    if max(-k_min, k_max) > MAX_LEVEL:
        raise PassRefusal(f"{name}: clip range [{k_min}, {k_max}] exceeds ±2^24, the largest spike count a float32 "
                          f"membrane holds exactly")
    for what, op, value in (("input scale", pre_op, pre_value), ("output scale", post_op, post_value)):
        if op:
            _positive_finite(value, f"{name}: {what}")
    _positive_finite(lam, f"{name}: λ")
    node = gs.Node(op="Quantizer", name=name, domain=INTERNAL_DOMAIN, inputs=[x], outputs=[y], attrs=dict(
        kind=kind, levels=int(levels), k_min=int(k_min), k_max=int(k_max), pre_op=pre_op, pre_value=pre_value,
        post_op=post_op, post_value=post_value, lam=lam, source=source, rounding=rounding,
        post_zero_point=int(post_zero_point), post_qtype=post_qtype))
    graph.nodes.append(node)
    return node


def _layer_name(candidates):
    for c in candidates:
        if c:
            return c
    return "act"


def recognize_pqa(graph: gs.Graph, ctx) -> gs.Graph:
    refusals = {}  # id(node) -> why its pattern was not mapped
    _recognize_nodes(graph, ctx)
    _recognize_plain(graph, ctx, refusals)
    _recognize_round(graph, ctx, refusals)
    _recognize_qdq(graph, ctx, refusals)
    # A Floor or a Round pattern that did not map: in a model with quantizers, one on values computed
    # from the network input alone is the same at every step (input preprocessing such as
    # floor(x·255)/255), an op like any other; on spike traffic, or in a model without quantizers,
    # it is the quantizer that failed to match, and its reason is the refusal.
    unmatched = [n for n in graph.nodes if n.outputs and (n.op == "Floor" or (n.op == "Round" and id(n) in refusals))]
    has_quantizers = any(n.domain == INTERNAL_DOMAIN and n.op == "Quantizer" for n in graph.nodes)
    spiking = _downstream_of_quantizers(graph) if unmatched and has_quantizers else set()
    static = [n for n in unmatched if has_quantizers and n.inputs[0].name not in spiking]
    for n in static:
        ctx.notes.append(f"recognize_pqa: {n.op} '{n.name}' reads values computed from the network input "
                         f"alone: kept as an op, the same at every step")
    leftovers = [n for n in graph.nodes if n.outputs and (n.op == "QuantizeLinear" or n.domain == "pmsm")]
    leftovers += [n for n in unmatched if n not in static]
    if leftovers:
        reasons = [refusals.get(id(n), f"{n.op} '{n.name}': pattern not recognised") for n in leftovers[:3]]
        more = f"; and {len(leftovers) - 3} more" if len(leftovers) > 3 else ""
        raise PassRefusal(f"cannot map quantizer op(s): {'; '.join(reasons)}{more}")
    return graph


def _downstream_of_quantizers(graph) -> set[str]:
    """The tensors computed from some recognised quantizer's output (spike traffic once compiled)."""
    outputs = {q.outputs[0].name for q in graph.nodes if q.domain == INTERNAL_DOMAIN and q.op == "Quantizer"}
    return downstream(tensor_flow(graph.nodes), outputs)


def _recognize_nodes(graph, ctx):
    for node in list(graph.nodes):
        if node.domain != "pmsm" or node.op not in ("PQA", "QCFS"):
            continue
        if len(node.inputs) != 2:
            raise PassRefusal(f"pmsm::{node.op} '{node.name}' needs inputs (X, lam)")
        where = f"pmsm::{node.op} '{node.name}'"
        lam = scalar_value(node.inputs[1])
        if lam is None:
            raise PassRefusal(f"{where}: λ must be a constant scalar")
        _positive_finite(lam, f"{where}: λ =")
        levels = int(node.attrs.get("L", PQA_LEVELS))
        if levels < 1:
            raise PassRefusal(f"{where}: L = {levels} must be >= 1 (the number of positive levels)")
        lam32 = np.float32(lam)
        step = float(lam32 / np.float32(levels))
        _positive_finite(step, f"{where}: θ = λ/L =")
        if node.op == "PQA":
            alpha, beta = float(node.attrs.get("alpha", PQA_ALPHA)), float(node.attrs.get("beta", PQA_BETA))
            # the function body computes Round(α·L) in float32: accept only products that are integers
            # up to float32 rounding (α = −1/3, L = 3), refuse e.g. α·L = −2.4
            k_min = _integer(float(np.float32(alpha) * np.float32(levels)), f"{where}: α·L =")
            k_max = _integer(float(np.float32(beta) * np.float32(levels)), f"{where}: β·L =")
            kind = "PQA"
        else:
            k_min, k_max, kind = 0, levels, "QCFS"
        lam_name = node.inputs[1].name
        name = _layer_name([node.name, lam_name[:-4] if lam_name.endswith(".lam") else "", node.outputs[0].name])
        x, y = node.inputs[0], node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        _make_quantizer(graph, x, y, kind=kind, levels=levels, k_min=k_min, k_max=k_max, pre_op="Div",
                        pre_value=step, post_op="Mul", post_value=step, lam=float(lam32), name=name,
                        source=f"pmsm::{kind} node")


def _labelled(node, exc) -> str:
    """The refusal message, starting with the node it is about."""
    label = f"{node.op} '{node.name}'"
    return str(exc) if str(exc).startswith(label) else f"{label}: {exc}"


def _single_use(t, graph):
    return len(t.outputs) == 1 and t not in graph.outputs


def _recognize_plain(graph, ctx, refusals):
    for floor in [n for n in graph.nodes if n.op == "Floor"]:
        try:
            _match_plain(graph, floor, ctx)
        except PassRefusal as exc:
            ctx.notes.append(str(exc))
            refusals[id(floor)] = _labelled(floor, exc)


def _read_only_by(t, nodes, graph) -> bool:
    return t not in graph.outputs and sorted(map(id, t.outputs)) == sorted(map(id, nodes))


def _leading_scale(graph, t, readers=None):
    """(x, pre_op, pre_value, node): an optional Div(x, c) or Mul(x, c), c a scalar ``_scale_like``,
    whose output only the pattern reads (one reader, or exactly ``readers``)."""
    p = producer(t)
    if p is not None and p.op in ("Div", "Mul") and (_single_use(t, graph) if readers is None
                                                     else _read_only_by(t, readers, graph)):
        operand = const_operand(p)
        if operand is not None and operand[2] == 1 and _scale_like(operand[1]):
            return operand[0], p.op, _f32(operand[1].reshape(())), p
    return t, "", 1.0, None


def _scale_like(value) -> bool:
    """A scalar that the pattern takes as its scale: anything but a negative number (a negative
    factor is an op of its own before or after the quantizer). 0, ±inf and NaN are taken, and so
    refused by ``_make_quantizer`` with the reason, instead of dividing the model by zero."""
    return value.size == 1 and not float(value.reshape(())) < 0


def _trailing_scale(graph, t):
    """(y, post_op, post_value, node): an optional Mul(·, c) or Div(·, c), c a scalar ``_scale_like``,
    the only reader."""
    if _single_use(t, graph):
        q = t.outputs[0]
        if q.op in ("Mul", "Div"):
            operand = const_operand(q)
            if operand is not None and _scale_like(operand[1]) and (q.op == "Mul" or operand[2] == 1):
                return q.outputs[0], q.op, _f32(operand[1].reshape(())), q
    return t, "", 1.0, None


def _clip_bounds(node):
    """(lo, hi) of a Clip with two constant scalar bounds, or None (no such Clip)."""
    if node is None or node.op != "Clip" or len(node.inputs) < 3:
        return None
    lo, hi = scalar_value(node.inputs[1]), scalar_value(node.inputs[2])
    return None if lo is None or hi is None else (lo, hi)


def _exact_integer(value: float, what: str) -> int:
    """round(clip(u)) = clip(round(u)) needs bounds that are integers exactly (``_integer`` allows
    float32 rounding of α·L, which a Clip's bounds do not have)."""
    if not (np.isfinite(value) and float(value) == round(value)):
        raise PassRefusal(f"{what} {value:.7g} is not an integer level")
    return int(value)


def _straight_through(graph, rnd):
    """[Sub, Add] where Round(u) is followed by the straight-through estimator's
    ``(round(u) − u).detach() + u`` as exporters write it, Sub(Round(u), u) → Add(·, u), else []. It
    has Round(u)'s values for every finite u: r − u is exact (Sterbenz: r = round(u) lies within
    [u/2, 2u], or r = 0, or r = u), and adding u back to the exact difference gives r exactly."""
    u, r = rnd.inputs[0], rnd.outputs[0]
    if not _single_use(r, graph):
        return []
    sub = r.outputs[0]
    if sub.op != "Sub" or len(sub.inputs) != 2 or sub.inputs[0] is not r or sub.inputs[1] is not u:
        return []
    if not _single_use(sub.outputs[0], graph):
        return []
    add = sub.outputs[0].outputs[0]
    if add.op != "Add" or len(add.inputs) != 2 or sorted(map(id, add.inputs)) != sorted(map(id, (sub.outputs[0], u))):
        return []
    return [sub, add]


def _recognize_round(graph, ctx, refusals):
    for rnd in [n for n in graph.nodes if n.op == "Round" and n.outputs]:
        shape = rnd.inputs[0].shape
        if shape is not None and len(shape) < 2:  # shape arithmetic, not an activation [batch, ...]
            continue
        rounding = [rnd, *_straight_through(graph, rnd)]  # the nodes whose output is round(u); u's readers
        out = rounding[-1].outputs[0]
        after = out.outputs[0] if _single_use(out, graph) else None
        before = producer(rnd.inputs[0]) if _read_only_by(rnd.inputs[0], rounding, graph) else None
        if _clip_bounds(after) is not None:  # Round → Clip
            clip, u, u_readers, last = after, rnd.inputs[0], rounding, after
        elif _clip_bounds(before) is not None:  # Clip → Round
            clip, u, u_readers, last = before, before.inputs[0], None, rounding[-1]
        else:
            ctx.notes.append(f"recognize_pqa: Round '{rnd.name}' is no quantizer (no Clip with constant bounds "
                             f"right before or after it, read only by it); left as it is")
            continue
        x, pre_op, pre_value, pre_node = _leading_scale(graph, u, u_readers)
        y, post_op, post_value, post_node = _trailing_scale(graph, last.outputs[0])
        out_scale = post_value if post_op == "Mul" else (1.0 / post_value if post_op == "Div" else 1.0)
        source = "plain ops (Div/Mul, Round" + (" with its straight-through Sub/Add" if len(rounding) > 1 else "") \
            + ", Clip, Mul)"
        try:
            lo, hi = _clip_bounds(clip)
            k_min, k_max = _exact_integer(lo, "clip min"), _exact_integer(hi, "clip max")
            _make_quantizer(graph, x, y, kind="PQA", levels=max(k_max, 1), k_min=k_min, k_max=k_max, pre_op=pre_op,
                            pre_value=pre_value, post_op=post_op, post_value=post_value,
                            lam=float(out_scale * max(k_max, 1)), name=_layer_name([rnd.name, y.name]),
                            rounding="half_even", source=source)
        except PassRefusal as exc:  # left as it is; ``recognize_pqa`` decides whether that is a refusal
            ctx.notes.append(f"recognize_pqa: Round '{rnd.name}' left as it is: {exc}")
            refusals[id(rnd)] = _labelled(rnd, exc)
            continue
        for n in (pre_node, *rounding, clip, post_node):
            if n is not None:
                n.inputs.clear()
                n.outputs.clear()


def _match_plain(graph, floor, ctx):
    where = f"Floor '{floor.name}'"
    add = producer(floor.inputs[0])
    if add is None or add.op != "Add":
        raise PassRefusal(f"{where}: not preceded by Add(x, 0.5)")
    if not _single_use(floor.inputs[0], graph):
        raise PassRefusal(f"{where}: its input '{floor.inputs[0].name}' (Add 0.5 → Floor) has other consumers "
                          f"(a fork inside the quantizer pattern)")
    operand = const_operand(add)
    if operand is None or operand[1].size != 1 or float(operand[1].reshape(())) != 0.5:
        raise PassRefusal(f"{where}: the Add before Floor must add the constant 0.5")
    shifted_in = operand[0]
    if not _single_use(floor.outputs[0], graph):
        raise PassRefusal(f"{where}: its output '{floor.outputs[0].name}' (Floor → Clip) has other consumers "
                          f"(a fork inside the quantizer pattern)")
    clip = floor.outputs[0].outputs[0]
    if clip.op != "Clip" or len(clip.inputs) < 3:
        raise PassRefusal(f"{where}: not followed by Clip(min, max) with both bounds")
    lo, hi = scalar_value(clip.inputs[1]), scalar_value(clip.inputs[2])
    if lo is None or hi is None:
        raise PassRefusal(f"{where}: Clip bounds must be constant scalars")
    k_min, k_max = _integer(lo, "clip min"), _integer(hi, "clip max")

    x, pre_op, pre_value, pre_node = _leading_scale(graph, shifted_in)
    y, post_op, post_value, post_node = _trailing_scale(graph, clip.outputs[0])
    kind = "QCFS" if k_min == 0 else "PQA"
    levels = k_max
    out_scale = post_value if post_op == "Mul" else (1.0 / post_value if post_op == "Div" else 1.0)
    name = _layer_name([floor.name, y.name])
    # Build (and so validate) the quantizer before detaching the matched nodes: a refusal must
    # leave the graph as it was.
    _make_quantizer(graph, x, y, kind=kind, levels=levels, k_min=k_min, k_max=k_max, pre_op=pre_op,
                    pre_value=pre_value, post_op=post_op, post_value=post_value, lam=float(out_scale * levels),
                    name=name, source="plain ops (Div/Mul, Add 0.5, Floor, Clip, Mul)")
    for n in (pre_node, add, floor, clip, post_node):
        if n is not None:
            n.inputs.clear()
            n.outputs.clear()


def _recognize_qdq(graph, ctx, refusals):
    for ql in [n for n in graph.nodes if n.op == "QuantizeLinear"]:
        try:
            _match_qdq(graph, ql)
        except PassRefusal as exc:
            ctx.notes.append(str(exc))
            refusals[id(ql)] = _labelled(ql, exc)


def _qparams(node, where):
    scale = const_value(node.inputs[1])
    if scale is None or scale.size != 1:
        raise PassRefusal(f"{where}: only per-tensor (scalar) scales are supported (a neuron layer has one "
                          f"threshold); quantize this activation per tensor (Brevitas: "
                          f"scaling_per_output_channel=False)")
    zp = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if len(node.inputs) > 2 and node.inputs[2].name and zp is None:
        raise PassRefusal(f"{where}: zero point must be constant")
    if zp is not None and zp.size != 1:
        raise PassRefusal(f"{where}: only per-tensor zero points are supported; quantize this activation per "
                          f"tensor")
    dtype = np.dtype(zp.dtype) if zp is not None else np.dtype(np.uint8)
    zp_val = int(zp.reshape(())) if zp is not None else 0
    return _f32(scale.reshape(())), zp_val, dtype


def _match_qdq(graph, ql):
    where = f"QuantizeLinear '{ql.name}'"
    scale, zp, dtype = _qparams(ql, where)
    if dtype not in QDQ_RANGES:
        raise PassRefusal(f"{where}: unsupported quantized type {dtype}")
    qmin, qmax = QDQ_RANGES[dtype]
    if not _single_use(ql.outputs[0], graph):
        raise PassRefusal(f"{where}: its output must feed one DequantizeLinear (optionally via Clip)")
    nxt = ql.outputs[0].outputs[0]
    clip = None
    if nxt.op == "Clip":
        clip = nxt
        lo = scalar_value(clip.inputs[1]) if len(clip.inputs) > 1 and clip.inputs[1].name else qmin
        hi = scalar_value(clip.inputs[2]) if len(clip.inputs) > 2 and clip.inputs[2].name else qmax
        if lo is None or hi is None:
            raise PassRefusal(f"{where}: Clip bounds must be constant")
        qmin, qmax = max(qmin, int(lo)), min(qmax, int(hi))
        if not _single_use(clip.outputs[0], graph):
            raise PassRefusal(f"{where}: the Clip output must feed one DequantizeLinear")
        nxt = clip.outputs[0].outputs[0]
    if nxt.op != "DequantizeLinear":
        raise PassRefusal(f"{where}: not followed by DequantizeLinear")
    dq = nxt
    scale2, zp2, _ = _qparams(dq, f"DequantizeLinear '{dq.name}'")
    if zp2 != zp:
        raise PassRefusal(f"{where}: zero points differ between QuantizeLinear ({zp}) and DequantizeLinear ({zp2})")
    x, y = ql.inputs[0], dq.outputs[0]
    k_min, k_max = qmin - zp, qmax - zp
    _make_quantizer(graph, x, y, kind="QDQ", levels=max(k_max, 1), k_min=k_min, k_max=k_max, pre_op="Div",
                    pre_value=scale, post_op="DequantizeLinear", post_value=scale2, lam=float(scale2 * max(k_max, 1)),
                    name=_layer_name([ql.name, y.name]), source="QuantizeLinear/DequantizeLinear",
                    rounding="half_even", post_zero_point=zp, post_qtype=dtype.name)
    for n in (ql, clip, dq):  # detached only once the quantizer is built (a refusal changes nothing)
        if n is not None:
            n.inputs.clear()
            n.outputs.clear()
