"""canonicalize: Identity/Dropout removal, Constant nodes → initializers, Sub(x, c) → Add(x, −c).

Each test builds a tiny graph with onnx.helper, runs the pass through the PassManager, checks
what changed in the graph, and compares both graphs in onnxruntime. The rewrites claim to leave
every float result unchanged, so the comparisons are exact (np.array_equal), at the
"disable" optimization level (onnxruntime's own rewrites out of the way) and at "all".
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.passes import PassContext, PassManager, canonicalize
from pmsm_compiler.sessions import make_session

OPSET = 20


def _model(nodes, inits, out_names=("y",), shape=(2, 3, 4, 4)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", *shape[1:]]) for n in out_names]
    graph = helper.make_graph(nodes, "g", [x], outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _run_pass(model, mode="folded"):
    ctx = PassContext(mode=mode)
    graph = PassManager([canonicalize]).run(gs.import_onnx(model), ctx)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    onnx.checker.check_model(out, full_check=True)
    return out, ctx


def _run(model, x, level):
    sess = make_session(model, level, threads=1)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"x": x})))


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _inputs(seed=0, n=2):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 4, 4)).astype(np.float32) * 10
    # values where rounding matters: tiny, huge, halves, signed zeros, subnormals
    x.flat[:8] = [0.0, -0.0, 0.5, -0.5, 1e-38, -3.4e38, 1e-45, 16777217.0]
    return x


@pytest.mark.parametrize("level", ["disable", "all"])
def test_identity_and_dropout_removed_outputs_identical(level):
    c = np.full((1, 3, 1, 1), 0.1, np.float32)
    model = _model([
        helper.make_node("Identity", ["x"], ["a"], name="id0"),
        helper.make_node("Add", ["a", "c"], ["b"], name="add"),
        helper.make_node("Dropout", ["b"], ["d"], name="drop"),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["y"], name="id_out"),  # feeds the graph output
    ], {"c": c})
    out, _ = _run_pass(model)
    assert "Identity" not in _ops(out) and "Dropout" not in _ops(out)
    assert _ops(out) == ["Add", "Relu"]
    # the graph output keeps its name, and is produced by a node
    assert [o.name for o in out.graph.output] == ["y"]
    assert out.graph.node[-1].output[0] == "y"
    x = _inputs()
    np.testing.assert_array_equal(_run(model, x, level)["y"], _run(out, x, level)["y"])


def test_identity_from_graph_input_to_output_is_kept():
    """An output that is an Identity of the graph input must stay produced by a node."""
    model = _model([helper.make_node("Identity", ["x"], ["y"], name="id")], {})
    out, _ = _run_pass(model)
    assert _ops(out) == ["Identity"]
    x = _inputs()
    np.testing.assert_array_equal(_run(out, x, "disable")["y"], x)


@pytest.mark.parametrize("level", ["disable", "all"])
def test_sub_const_becomes_add_neg_bit_identical(level):
    c = np.array([0.1, -2.5, 3.0e-8], np.float32).reshape(1, 3, 1, 1)
    model = _model([
        helper.make_node("Sub", ["x", "c"], ["y"], name="sub"),
    ], {"c": c})
    out, _ = _run_pass(model)
    assert _ops(out) == ["Add"]
    add = out.graph.node[0]
    assert add.input[0] == "x"
    neg = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}[add.input[1]]
    np.testing.assert_array_equal(neg, -c)
    assert neg.dtype == np.float32
    for seed in range(3):
        x = _inputs(seed, n=64)
        a, b = _run(model, x, level)["y"], _run(out, x, level)["y"]
        # bit-identical, including the sign of zero
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))
        np.testing.assert_array_equal(a, x - c)


def test_exact_mode_keeps_sub_const():
    """onnxruntime fuses Conv → Add(per-channel c) into the Conv's bias but not Conv → Sub: exact
    mode keeps the ANN's Sub so that both graphs are optimized alike."""
    c = np.array([0.1, -2.5, 3.0e-8], np.float32).reshape(1, 3, 1, 1)
    model = _model([helper.make_node("Sub", ["x", "c"], ["y"], name="sub")], {"c": c})
    out, _ = _run_pass(model, mode="exact")
    assert _ops(out) == ["Sub"]


def test_sub_from_constant_and_sub_of_two_variables_unchanged():
    c = np.full((1, 3, 1, 1), 1.5, np.float32)
    model = _model([
        helper.make_node("Sub", ["c", "x"], ["a"], name="rsub"),  # c − x: not of the form x − c
        helper.make_node("Sub", ["a", "x"], ["y"], name="vsub"),  # two variables
    ], {"c": c})
    out, _ = _run_pass(model)
    assert _ops(out) == ["Sub", "Sub"]
    x = _inputs()
    np.testing.assert_array_equal(_run(model, x, "disable")["y"], _run(out, x, "disable")["y"])


def test_div_by_const_not_turned_into_mul():
    """Div(x, c) and Mul(x, 1/c) round differently: the pass must keep the Div."""
    c = np.array(0.9125, np.float32)  # λ/L = 7.3/8
    model = _model([
        helper.make_node("Div", ["x", "c"], ["y"], name="div"),
    ], {"c": c})
    out, _ = _run_pass(model)
    assert _ops(out) == ["Div"]
    div = out.graph.node[0]
    np.testing.assert_array_equal(
        {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}[div.input[1]], c)
    x = np.random.default_rng(1).standard_normal((2000, 3, 4, 4)).astype(np.float32) * 10
    y = _run(out, x, "disable")["y"]
    np.testing.assert_array_equal(y, x / c)
    # and the reason it matters: the multiply form differs on some inputs
    assert not np.array_equal(x * (np.float32(1) / c), y)


def test_constant_node_becomes_initializer_same_values():
    c = np.array([1.0, 2.0, -3.0], np.float32).reshape(1, 3, 1, 1)
    model = _model([
        helper.make_node("Constant", [], ["k"], name="const", value=numpy_helper.from_array(c, "k")),
        helper.make_node("Sub", ["x", "k"], ["y"], name="sub"),
    ], {})
    out, _ = _run_pass(model)
    assert "Constant" not in _ops(out)
    assert _ops(out) == ["Add"]  # the Constant became an initializer, so the Sub was rewritten too
    x = _inputs(n=8)
    np.testing.assert_array_equal(_run(model, x, "disable")["y"], _run(out, x, "disable")["y"])


def test_integer_sub_not_rewritten():
    """Only float Sub is rewritten (integer negation could overflow: −INT_MIN)."""
    x = helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 3])
    c = numpy_helper.from_array(np.array([1, -2, np.iinfo(np.int32).min], np.int32), "c")
    graph = helper.make_graph([helper.make_node("Sub", ["x", "c"], ["y"], name="isub")], "g", [x], [y], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    out, _ = _run_pass(onnx.shape_inference.infer_shapes(model))
    assert _ops(out) == ["Sub"]


def test_constant_subgraph_is_folded_with_the_same_value():
    """Div(λ, L) on constants (as some exporters write the PQA step) becomes one initializer
    holding exactly the float32 quotient onnxruntime computes; the data path is untouched."""
    lam, levels = np.array(7.3, np.float32), np.array(8.0, np.float32)
    nodes = [helper.make_node("Div", ["lam", "L"], ["step"]), helper.make_node("Div", ["x", "step"], ["y"])]
    model = _model(nodes, {"lam": lam, "L": levels})
    out, _ = _run_pass(model)
    assert [n.op_type for n in out.graph.node] == ["Div"]
    folded = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    (step,) = [v for v in folded.values() if v.size == 1]
    assert step == np.float32(lam / levels)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    for level in ("disable", "all"):
        a = make_session(model, level).run(None, {"x": x})[0]
        b = make_session(out, level).run(None, {"x": x})[0]
        assert np.array_equal(a, b)


def test_a_float16_weight_behind_a_cast_becomes_its_float32_value():
    """Weights stored as float16 and Cast to float32 (pmsm-export --weights-float16, and other
    converters' float16 storage with float32 compute): the Cast is folded into a float32
    initializer holding the exact widened values, consumed where the Cast's output was."""
    rng = np.random.default_rng(0)
    w16 = rng.standard_normal((3, 3, 1, 1)).astype(np.float16)
    nodes = [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["x", "w"], ["y"])]
    model = _model(nodes, {"w16": w16})
    out, ctx = _run_pass(model)
    assert _ops(out) == ["Conv"] and ctx.constants_evaluated
    (weight,) = [numpy_helper.to_array(i) for i in out.graph.initializer]
    assert weight.dtype == np.float32 and np.array_equal(weight, w16.astype(np.float32))
    x = _inputs()
    for level in ("disable", "all"):
        assert np.array_equal(_run(model, x, level)["y"], _run(out, x, level)["y"])


def _shape_model(batch, shape_attrs):
    """y = Reshape(x, Concat(Shape(x, **shape_attrs), [-1])): the pattern torch's exporter writes
    for ``x.view(B, -1)`` / ``expand(B, -1, -1)`` (Shape with ``start``/``end``, opset 15+)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Shape", ["x"], ["dims"], **shape_attrs),
             helper.make_node("Concat", ["dims", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.array([-1], np.int64), "minus_one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


@pytest.mark.parametrize(("batch", "attrs", "target"), [
    (2, {"end": 1}, [2, -1]),            # fixed batch: the batch alone (graphsurgeon took all 4 dims)
    (2, {"start": 0, "end": -3}, [2, -1]),
    ("N", {"start": 1, "end": 3}, [3, 4, -1]),  # static dims of a dynamic-batch input
    (2, {"start": -2}, [4, 4, -1]),
    (2, {"start": 9}, [-1]),             # start past the rank: clamped, no dims
    (2, {}, [2, 3, 4, 4, -1]),
])
def test_a_sliced_shape_folds_to_its_slice(batch, attrs, target):
    """Shape's ``start``/``end`` are honoured when the shape is folded to a constant (a fixed-batch
    ViT failed the checker after graphsurgeon folded ``Shape(x, end=1)`` to four dims)."""
    model = _shape_model(batch, attrs)
    out, ctx = _run_pass(model)
    assert _ops(out) == ["Reshape"] and ctx.constants_evaluated
    (folded,) = [numpy_helper.to_array(i) for i in out.graph.initializer]
    assert folded.tolist() == target
    x = _inputs()
    if len(target) == 1:
        x = x.reshape(-1)[:96].reshape(2, 3, 4, 4)
    for level in ("disable", "all"):
        assert np.array_equal(_run(model, x, level)["y"], _run(out, x, level)["y"])


def test_a_shape_of_the_dynamic_batch_is_not_folded():
    out, ctx = _run_pass(_shape_model("N", {"end": 1}))
    assert _ops(out) == ["Shape", "Concat", "Reshape"] and not ctx.constants_evaluated

