"""fold_weight_quantization: quantized constants (weights, biases) → the float constants they stand for.

Quantization toolchains store weights as integers behind a ``DequantizeLinear``, or as floats
behind a fake quantizer:

    W_q (int) → DequantizeLinear(s, zp[, axis])                      onnxruntime.quantization, PT2E
    W (float) → QuantizeLinear(s, zp) → [Clip(lo, hi)] → DequantizeLinear(s, zp)   Brevitas QCDQ

    DequantizeLinear:  W′ = (q − zp) · s          (per tensor, or per channel along ``axis``)
    QuantizeLinear:    q = saturate(rint(W / s) + zp)     (ties to even)

Every such chain whose inputs are all constant is evaluated once, in onnxruntime (the engine the
ANN runs in, so W′ holds exactly the float32 values the ANN's own kernels compute at run time), and
replaced by the constant W′, and what that makes constant is folded as ``canonicalize`` does.
Afterwards the weighted ops read float weights, which the other passes fold and scale as usual. onnx-graphsurgeon's constant folding skips Q/DQ nodes on purpose
(to keep QDQ patterns for integer kernels), which is why this is its own pass.

Check: the chain's output has no other consumer than ordinary nodes (a graph output stays as it
is); an activation quantizer (a QuantizeLinear whose input is not constant) is never touched:
``recognize_pqa`` maps those to neurons.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .canonicalize import fold_constant_subgraphs
from .graph_utils import const_value, is_const

CHAIN_OPS = ("QuantizeLinear", "Clip", "DequantizeLinear")


def _constant_chain(dq: gs.Node) -> list[gs.Node] | None:
    """The nodes from the constant source to ``dq`` (DequantizeLinear), or None if an input of the
    chain is not constant."""
    chain, node = [], dq
    while True:
        chain.append(node)
        extra = [t for t in node.inputs[1:] if t.name and not is_const(t)]
        if extra:
            return None
        data = node.inputs[0]
        if is_const(data):
            return chain[::-1]
        prod = data.inputs[0] if len(data.inputs) == 1 else None
        if prod is None or prod.op not in CHAIN_OPS or prod.op == "DequantizeLinear":
            return None
        node = prod


def _evaluate(chain: list[gs.Node], opset: int) -> np.ndarray:
    """Run the constant chain alone in onnxruntime (no graph optimization) and return its output.
    Built as a separate ONNX model from copies of the values: the graph itself is not touched."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    inits, nodes, produced = {}, [], set()
    for n in chain:
        for t in n.inputs:
            if t.name and t.name not in produced and t.name not in inits:
                inits[t.name] = numpy_helper.from_array(np.asarray(const_value(t)), t.name)
        nodes.append(helper.make_node(n.op, [t.name for t in n.inputs], [t.name for t in n.outputs], **n.attrs))
        produced.update(t.name for t in n.outputs)
    out = chain[-1].outputs[0].name
    graph = helper.make_graph(nodes, "fold", [], [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
                              list(inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, {})[0]


def fold_weight_quantization(graph: gs.Graph, ctx) -> gs.Graph:
    folded = 0
    for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        out = dq.outputs[0]
        if out in graph.outputs:
            continue
        chain = _constant_chain(dq)
        if chain is None:
            continue
        value = _evaluate(chain, graph.opset or onnx.defs.onnx_opset_version())
        const = gs.Constant(out.name + "_dequantized", np.asarray(value))
        for consumer in list(out.outputs):
            consumer.inputs = [const if t is out else t for t in consumer.inputs]
        dq.outputs.clear()
        folded += 1
    if folded:
        ctx.constants_evaluated = True
        fold_constant_subgraphs(graph)  # what the float weights make constant (e.g. a transposed weight)
        ctx.notes.append(f"fold_weight_quantization: {folded} quantized constant(s) folded into float constants")
    return graph
