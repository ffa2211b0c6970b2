"""The graph walks on networkx (pmsm_compiler.onnx_utils): reachability that follows data, stops
where told, and does not depend on the node order."""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from pmsm_compiler.onnx_utils import downstream, node_dag, tensor_flow


def _chain():
    """u → Add(x) → a → Shape → s;  a → Relu → r;  x → Neg → n (listed out of order)."""
    x, u = gs.Variable("x", np.float32), gs.Variable("u", np.float32)
    a, s, r, n = (gs.Variable(name, np.float32) for name in "asrn")
    return [gs.Node("Relu", inputs=[a], outputs=[r]), gs.Node("Shape", inputs=[a], outputs=[s]),
            gs.Node("Add", inputs=[u, x], outputs=[a]), gs.Node("Neg", inputs=[x], outputs=[n])]


def test_downstream_follows_data_whatever_the_node_order():
    nodes = _chain()
    assert downstream(tensor_flow(nodes), {"u"}) == {"u", "a", "s", "r"}
    assert downstream(tensor_flow(nodes), {"x"}) == {"x", "a", "s", "r", "n"}
    assert downstream(tensor_flow(nodes), {"absent"}) == {"absent"}


def test_skipped_nodes_do_not_propagate():
    flow = tensor_flow(_chain(), skip=lambda node: node.op == "Shape")
    assert downstream(flow, {"u"}) == {"u", "a", "r"}


def test_node_dag_on_protos_and_its_cut():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Add", ["b", "x"], ["y"])]
    dag = node_dag(nodes)
    assert nx.ancestors(dag, 2) == {0, 1} and nx.descendants(dag, 0) == {1, 2}
    assert nx.ancestors(node_dag(nodes, cut={"b"}), 2) == set()
