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

from .graph_utils import const_value, is_const, make_const, replace_uses


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
    shapes_folded = _fold_static_shapes(graph)
    if not any(n.inputs and all(isinstance(t, gs.Constant) or (t.inputs and t.inputs[0].op == "Constant")
                                for t in n.inputs if t.name) and n.op != "Constant" for n in graph.nodes):
        return shapes_folded
    before = len(graph.cleanup(remove_unused_graph_inputs=False).nodes)
    try:
        graph.fold_constants(fold_shapes=True, recurse_subgraphs=False, error_ok=False)
    except Exception as exc:  # noqa: BLE001 - folding is an optimization: keep the graph as it is
        import logging

        logging.getLogger(__name__).info("constant folding skipped: %s", exc)
        return shapes_folded
    return shapes_folded or len(graph.cleanup(remove_unused_graph_inputs=False).nodes) < before


def _fold_static_shapes(graph) -> bool:
    """Replace each Shape node whose (sliced) result is static by that constant. Done here, not by
    onnx-graphsurgeon's shape folding, which ignores Shape's ``start``/``end`` (opset 15): with a
    fixed batch, torch's ``expand(B, -1, -1)`` (``Shape(x, end=1)``) folded to all four of x's dims
    and the model failed the checker. Returns whether any was replaced."""
    replaced = False
    for node in list(graph.nodes):
        if node.op != "Shape" or len(node.outputs) != 1 or node.outputs[0] in graph.outputs:
            continue
        shape = node.inputs[0].shape
        if shape is None:
            continue
        rank = len(shape)
        start, end = (int(node.attrs.get(k, default)) for k, default in (("start", 0), ("end", rank)))
        start, end = (min(max(i + rank if i < 0 else i, 0), rank) for i in (start, end))
        dims = list(shape[start:end])
        if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims):
            continue
        out = node.outputs[0]
        replace_uses(graph, out, make_const(graph, out.name + "_c", dims, np.int64))
        node.outputs.clear()
        replaced = True
    return replaced


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
        if c is None or is_const(node.inputs[0]) or c.dtype.kind != "f":
            continue
        node.op = "Add"
        node.inputs[1] = make_const(graph, node.inputs[1].name + "_neg", -c, dtype=c.dtype)
