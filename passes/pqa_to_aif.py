"""pqa_to_aif: rewrite each recognised quantizer into a spiking neuron with explicit state.

PQA quantizers become ``pmsm::AIF`` (θ = step, s_min = αL, s_max = βL), Q/DQ quantizers
``pmsm::AIFHalfEven`` (the same neuron firing as QuantizeLinear rounds: half to even); QCFS
becomes the binary ``pmsm::IF`` with θ = λ (the baseline's conversion). Each neuron gets a state
input ``<layer>.u`` and output ``<layer>.u_next`` (the membrane in threshold units; its initial
value, ``ops.neurons.INITIAL_MEMBRANES``, is supplied by the runtime as a broadcast tensor).

exact mode: the source's own scaling ops are kept around the neuron,
    X → [Div θ | Mul 1/θ] → AIF → K → [Mul θ | Div 1/θ | DequantizeLinear] → Y
so that step 1 performs exactly the quantizer's float operations (u = ½ + X/θ, Floor, Clip).
folded mode: the neuron reads X and emits K directly; the layer records θ_in (I = X/θ_in) and
θ_out (Y = θ_out·K) for ``absorb_threshold_scale``, which moves them into the weights.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper as onnx_helper

from pmsm_compiler.ops import DOMAIN
from pmsm_compiler.ops.neurons import AIF_OP_FOR_ROUNDING
from pmsm_compiler.snn_format import NeuronLayer, State

from .graph_utils import INTERNAL_DOMAIN, PassRefusal, fresh, make_const


def _scale(op: str, value: float, for_input: bool) -> float:
    """The real factor a scaling op stands for: X/θ_in on the input, θ_out·K on the output."""
    if not op:
        return 1.0
    if for_input:
        return float(value) if op == "Div" else 1.0 / float(value)
    return float(value) if op in ("Mul", "DequantizeLinear") else 1.0 / float(value)


def _state(graph, base: str, rank: int, dtype=np.float32):
    name = fresh(graph, base)
    return gs.Variable(name, dtype=dtype, shape=[f"{name}:{i}" for i in range(rank)])


def pqa_to_aif(graph: gs.Graph, ctx) -> gs.Graph:
    quantizers = [n for n in graph.nodes if n.domain == INTERNAL_DOMAIN and n.op == "Quantizer"]
    if not quantizers:
        raise PassRefusal("no quantized activation (PQA, QCFS, Q/DQ or a Round fake quantizer) found: nothing to convert to neurons")
    for q in quantizers:
        a = q.attrs
        x, y = q.inputs[0], q.outputs[0]
        rank = len(y.shape) if y.shape is not None else (len(x.shape) if x.shape is not None else None)
        if rank is None:
            raise PassRefusal(f"quantizer '{q.name}': unknown rank of its input")
        if a["kind"] == "QCFS":
            neuron, op, s_min, s_max = "IF", "IF", 0, 1
            # θ = λ, in the units of each side: s_out·L on the output (that is a["lam"]) and
            # s_in·L on the input, which differ when the source's two scales differ (plain ops
            # without a leading or trailing scale).
            lam = float(np.float32(a["lam"]))
            in_scale = _scale(a["pre_op"], a["pre_value"], True)
            out_scale = _scale(a["post_op"], a["post_value"], False)
            theta_out = lam
            theta_in = lam if in_scale == out_scale else float(np.float32(in_scale * a["levels"]))
            pre_op, pre_value, post_op, post_value = "Div", theta_in, "Mul", theta_out
        else:
            neuron, op, s_min, s_max = "AIF", AIF_OP_FOR_ROUNDING[a["rounding"]], a["k_min"], a["k_max"]
            pre_op, pre_value, post_op, post_value = a["pre_op"], a["pre_value"], a["post_op"], a["post_value"]
            theta_in, theta_out = _scale(pre_op, pre_value, True), _scale(post_op, post_value, False)
        if not (theta_in > 0 and theta_out > 0):
            raise PassRefusal(f"quantizer '{q.name}': thresholds must be positive (θ_in={theta_in}, θ_out={theta_out})")
        name = q.name
        u_in = _state(graph, f"{name}.u", rank)
        u_out = _state(graph, f"{name}.u_next", rank)
        q.inputs.clear()
        q.outputs.clear()
        current = x
        if ctx.mode == "exact" and pre_op:
            current = gs.Variable(fresh(graph, f"{name}.current"), dtype=np.float32, shape=x.shape)
            graph.nodes.append(gs.Node(pre_op, name=fresh(graph, f"{name}/to_threshold_units"),
                                       inputs=[x, make_const(graph, f"{name}.theta_in", pre_value)],
                                       outputs=[current]))
        spikes = y
        if ctx.mode == "exact" and post_op:
            spikes = gs.Variable(fresh(graph, f"{name}.spikes"), dtype=np.float32, shape=y.shape)
            ctx.psp_nodes.extend(_emit_psp(graph, name, spikes, y, post_op, post_value, a))
        attrs = {"s_min": int(s_min), "s_max": int(s_max)} if neuron == "AIF" else {}
        node = gs.Node(op, name=fresh(graph, f"{name}/{op}"), domain=DOMAIN, attrs=attrs,
                       inputs=[current, u_in], outputs=[spikes, u_out])
        graph.nodes.append(node)
        graph.inputs.append(u_in)
        graph.outputs.append(u_out)
        ctx.states.append(State.membrane(name, op, u_in.name, u_out.name))
        ctx.layers.append(NeuronLayer(
            name=name, kind=a["kind"], neuron=neuron, op=op, rounding=a["rounding"],
            s_min=int(s_min), s_max=int(s_max),
            levels=int(a["levels"]), lam=float(a["lam"]), theta=float(theta_in),
            theta_in=float(theta_in), theta_out=float(theta_out), source=a["source"],
            ann_output=y.name, ann_post_scale=_scale(a["post_op"], a["post_value"], False),
            ann_post_op=a["post_op"], ann_post_value=float(a["post_value"]),
            spike_tensor=spikes.name, state_in=u_in.name, state_out=u_out.name,
            lossless_at_t1=neuron == "AIF"))
        ctx.neuron_nodes[name] = node
    return graph


def _emit_psp(graph, name, spikes, y, post_op, post_value, attrs):
    """Exact mode: Y from the spike count K with the source's own output op, so that onnxruntime
    optimizes the SNN's output side as it does the ANN's (a Mul before a MatMul is fused into it,
    a DequantizeLinear is not: the same values, rounded differently)."""
    label = fresh(graph, f"{name}/psp")
    start = len(graph.nodes)
    if post_op != "DequantizeLinear":
        graph.nodes.append(gs.Node(post_op, name=label, inputs=[spikes, make_const(graph, f"{name}.theta_out", post_value)],
                                   outputs=[y]))
        return graph.nodes[start:]
    qtype = np.dtype(attrs["post_qtype"])
    zp = attrs["post_zero_point"]
    level = spikes
    if zp:
        level = gs.Variable(fresh(graph, f"{name}.level"), dtype=np.float32, shape=y.shape)
        graph.nodes.append(gs.Node("Add", name=fresh(graph, f"{name}/add_zero_point"),
                                   inputs=[spikes, make_const(graph, f"{name}.zero_point_f", float(zp))],
                                   outputs=[level]))
    q = gs.Variable(fresh(graph, f"{name}.q"), dtype=qtype, shape=y.shape)
    graph.nodes.append(gs.Node("Cast", name=fresh(graph, f"{name}/to_{qtype.name}"),
                               attrs={"to": int(onnx_helper.np_dtype_to_tensor_dtype(qtype))},
                               inputs=[level], outputs=[q]))
    graph.nodes.append(gs.Node("DequantizeLinear", name=label,
                               inputs=[q, make_const(graph, f"{name}.theta_out", post_value),
                                       make_const(graph, f"{name}.zero_point", zp, dtype=qtype)],
                               outputs=[y]))
    return graph.nodes[start:]
