"""The graph walks (pmsm_compiler.onnx_utils): reachability that follows data, stops
where told, and does not depend on the node order."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from pmsm_compiler.onnx_utils import ancestors, downstream, node_dag, tensor_flow


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
    assert [ancestors(dag, i) for i in range(3)] == [set(), {0}, {0, 1}]
    assert ancestors(node_dag(nodes, cut={"b"}), 2) == set()
    assert ancestors(node_dag(nodes, cut={"b"}), 1) == {0}


def test_ancestors_of_a_diamond_listed_out_of_order_and_a_node_reading_a_tensor_twice():
    # x → A → a;  a → B → b;  a → C → c;  (b, c) → D → d;  d → E(d, d) → e; F reads only x
    nodes = [helper.make_node("Add", ["d", "d"], ["e"]), helper.make_node("Add", ["b", "c"], ["d"]),
             helper.make_node("Neg", ["a"], ["c"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["f"])]
    dag = node_dag(nodes)
    assert ancestors(dag, 0) == {1, 2, 3, 4} and ancestors(dag, 1) == {2, 3, 4}
    assert ancestors(dag, 4) == set() and ancestors(dag, 5) == set()
    assert ancestors(node_dag(nodes, cut={"a"}), 0) == {1, 2, 3}
    assert downstream(tensor_flow(nodes), {"a"}) == {"a", "b", "c", "d", "e"}


def test_in_topological_order_notices_a_node_before_its_producer_and_a_subgraph():
    from pmsm_compiler.runtime.step_graphs import in_topological_order

    x = gs.Variable("x", np.float32, [2])
    a, b = gs.Variable("a", np.float32, [2]), gs.Variable("b", np.float32, [2])
    w = gs.Constant("w", np.ones(2, np.float32))
    first, second = gs.Node("Add", inputs=[x, w], outputs=[a]), gs.Node("Relu", inputs=[a], outputs=[b])
    assert in_topological_order(gs.Graph(nodes=[first, second], inputs=[x], outputs=[b]))
    assert not in_topological_order(gs.Graph(nodes=[second, first], inputs=[x], outputs=[b]))
    body = gs.Graph(nodes=[], inputs=[], outputs=[x])
    branch = gs.Node("If", inputs=[x], outputs=[gs.Variable("c", np.float32)],
                     attrs={"then_branch": body, "else_branch": body})
    assert not in_topological_order(gs.Graph(nodes=[first, second, branch], inputs=[x], outputs=[b]))


def test_export_model_writes_what_graphsurgeon_writes_one_weight_at_a_time():
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from pmsm_compiler.onnx_utils import export_model

    rng = np.random.default_rng(0)
    x = gs.Variable("x", np.float32, [2, 64])
    w = gs.Constant("w", rng.standard_normal((64, 64)).astype(np.float32))  # 16 KiB: written by export_model
    b = gs.Constant("b", rng.standard_normal(64).astype(np.float32))  # 256 bytes: left to graphsurgeon
    h, y = gs.Variable("h", np.float32), gs.Variable("y", np.float32, [2, 64])
    nodes = [gs.Node("MatMul", inputs=[x, w], outputs=[h]), gs.Node("Add", inputs=[h, b], outputs=[y])]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)
    inputs_before = [list(n.inputs) for n in graph.nodes]
    ours, theirs = export_model(graph), gs.export_onnx(graph)
    assert [list(n.inputs) for n in graph.nodes] == inputs_before  # the constants are back in place
    assert all(a is b for a, b in zip(graph.nodes[0].inputs, [x, w]))
    assert sorted(t.name for t in ours.graph.initializer) == ["b", "w"]
    as_theirs = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer}
    for t in ours.graph.initializer:
        value = numpy_helper.to_array(t)
        assert value.dtype == as_theirs[t.name].dtype and np.array_equal(value, as_theirs[t.name])
    onnx.checker.check_model(ours, full_check=True)
    feed = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
           for m in (ours, theirs)]
    assert np.array_equal(*run)


def test_import_graph_reads_a_large_weight_once_and_exports_an_unread_one_as_it_was():
    import onnx
    from onnx import numpy_helper

    from pmsm_compiler.onnx_utils import import_graph

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")  # 16 KiB
    v = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "v")
    small = numpy_helper.from_array(np.float32([1, 2, 3]), "small")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "v"], ["g"]),
             helper.make_node("Add", ["g", "small_b"], ["y"])]
    small.name = "small_b"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [w, v, small])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = import_graph(model)
    tensors = g.tensors()
    value = tensors["w"].values
    assert np.array_equal(value, numpy_helper.to_array(w)) and value.dtype == np.float32 and value.shape == (64, 64)
    assert not value.flags.writeable  # a view of the tensor's bytes: a pass makes new arrays
    assert type(tensors["small_b"]._values).__name__ == "LazyValues"  # small ones as onnx-graphsurgeon has them
    out = gs.export_onnx(g)
    exported = {t.name: t for t in out.graph.initializer}
    assert exported["v"].SerializeToString() == v.SerializeToString()  # never read: the original tensor
    assert np.array_equal(numpy_helper.to_array(exported["w"]), numpy_helper.to_array(w))
