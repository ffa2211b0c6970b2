"""canonicalize: constant folding, identity removal, Sub(x, c) -> Add(x, −c) (folded mode).

Only rewrites that leave every float result unchanged: x − c and x + (−c) are the same IEEE
operation, and removing Identity/Dropout changes nothing. The Sub rewrite is made in folded mode
only: onnxruntime fuses an Add of a per-channel constant into the Conv before it (into its bias),
which rounds differently, and does not fuse a Sub; exact mode keeps the ANN's ops so that
onnxruntime optimizes both graphs alike. Div(x, c) is *not* turned into
Mul(x, 1/c): the two round differently, and the quantizer patterns depend on the exact form.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import const_value, make_const, replace_uses


def canonicalize(graph: gs.Graph, ctx) -> gs.Graph:
    if fold_constant_subgraphs(graph):
        ctx.constants_evaluated = True
    _constant_nodes_to_initializers(graph)
    _remove_identities(graph)
    if ctx.mode == "folded":
        _sub_to_add(graph)
    return graph


def fold_constant_subgraphs(graph) -> bool:
    """Evaluate nodes whose inputs are all constant (e.g. λ/L chains from some exporters) once,
    in onnxruntime: the same arithmetic onnxruntime's own constant folding would perform.
    Returns whether anything was folded."""
    if not any(n.inputs and all(isinstance(t, gs.Constant) or (t.inputs and t.inputs[0].op == "Constant")
                                for t in n.inputs if t.name) and n.op != "Constant" for n in graph.nodes):
        return False
    before = len(graph.cleanup(remove_unused_graph_inputs=False).nodes)
    try:
        graph.fold_constants(fold_shapes=True, recurse_subgraphs=False, error_ok=False)
    except Exception as exc:  # noqa: BLE001 - folding is an optimization: keep the graph as it is
        import logging

        logging.getLogger(__name__).info("constant folding skipped: %s", exc)
        return False
    return len(graph.cleanup(remove_unused_graph_inputs=False).nodes) < before


def _constant_nodes_to_initializers(graph):
    for node in list(graph.nodes):
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        value = const_value(node.outputs[0])
        if value is None:
            continue
        out = node.outputs[0]
        const = gs.Constant(out.name + "_c", np.asarray(value, dtype=out.dtype or value.dtype))
        replace_uses(graph, out, const)
        node.outputs.clear()


def _remove_identities(graph):
    for node in list(graph.nodes):
        if node.op not in ("Identity", "Dropout") or not node.inputs:
            continue
        src, out = node.inputs[0], node.outputs[0]
        if out in graph.outputs and (src in graph.inputs or isinstance(src, gs.Constant)):
            continue  # an output must stay produced by a node
        if out in graph.outputs:
            # Keep the output's name: let the producer write it directly.
            prod = src.inputs[0] if len(src.inputs) == 1 else None
            if prod is None or src in graph.outputs or len(src.outputs) != 1:
                continue
            prod.outputs = [out if t is src else t for t in prod.outputs]
        else:
            replace_uses(graph, out, src)
        node.inputs.clear()
        node.outputs.clear()


def _sub_to_add(graph):
    for node in list(graph.nodes):
        if node.op != "Sub" or len(node.inputs) != 2:
            continue
        c = const_value(node.inputs[1])
        if c is None or const_value(node.inputs[0]) is not None or c.dtype.kind != "f":
            continue
        node.op = "Add"
        node.inputs[1] = make_const(graph, node.inputs[1].name + "_neg", -c, dtype=c.dtype)
