"""fold_weight_quantization: quantized constants → float constants, evaluated in onnxruntime.

Each test builds a tiny graph whose weights are stored quantized (an integer initializer behind a
DequantizeLinear, per tensor or per channel, int8/uint8, with and without zero points; or a float
weight behind QuantizeLinear → Clip → DequantizeLinear as Brevitas exports it), runs the pass,
checks that the Q/DQ nodes of the weights are gone and the activation quantizers are not, and
compares both graphs in onnxruntime: the folded weights hold exactly the values the DequantizeLinear
computes, so the outputs are identical at the "disable" level, where onnxruntime treats a constant
and a computed weight alike for these ops.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.passes import PassContext, PassManager, fold_weight_quantization
from pmsm_compiler.sessions import make_session

OPSET = 20


def _model(nodes, inits, y_shape=("N", 4, 4, 4)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _run_pass(model):
    ctx = PassContext()
    graph = PassManager([fold_weight_quantization]).run(gs.import_onnx(model), ctx)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    onnx.checker.check_model(out, full_check=True)
    return out, ctx


def _outputs(model, x):
    return make_session(model, "disable").run(None, {"x": x})[0]


def _activation_qdq(src, dst):
    """An activation quantizer (input not constant): the pass must leave it alone."""
    return [helper.make_node("QuantizeLinear", [src, "a_s", "a_zp"], [dst + "_q"], name=dst + "_ql"),
            helper.make_node("DequantizeLinear", [dst + "_q", "a_s", "a_zp"], [dst], name=dst + "_dql")]


ACT = {"a_s": np.array(0.05, np.float32), "a_zp": np.array(0, np.int8)}
X = np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32)


@pytest.mark.parametrize("dtype,per_channel,zero_point", [
    (np.int8, False, 0), (np.int8, True, 0), (np.uint8, False, 128), (np.uint8, True, 7), (np.int8, True, -3)])
def test_dequantized_weights_become_float_constants(dtype, per_channel, zero_point):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    wq = rng.integers(info.min, info.max + 1, (4, 3, 3, 3)).astype(dtype)
    scale = (rng.uniform(0.001, 0.02, 4) if per_channel else np.array(0.01)).astype(np.float32)
    zp = np.full(scale.shape, zero_point, dtype)
    attrs = {"axis": 0} if per_channel else {}
    nodes = _activation_qdq("x", "xa") + [
        helper.make_node("DequantizeLinear", ["wq", "w_s", "w_zp"], ["w"], name="w_dq", **attrs),
        helper.make_node("Conv", ["xa", "w"], ["y"], name="conv")]
    model = _model(nodes, {"wq": wq, "w_s": scale, "w_zp": zp, **ACT})
    out, ctx = _run_pass(model)
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear", "Conv"]  # the activation quantizer stays
    assert ctx.constants_evaluated and "1 quantized constant" in ctx.notes[-1]
    w = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == out.graph.node[2].input[1]))
    shape = (-1, 1, 1, 1) if per_channel else ()
    expected = (wq.astype(np.int32) - zp.astype(np.int32).reshape(shape)).astype(np.float32) * scale.reshape(shape)
    assert w.dtype == np.float32 and np.array_equal(w, expected)
    assert np.array_equal(_outputs(model, X), _outputs(out, X))


def test_brevitas_fake_quantized_float_weights_fold():
    """W (float) → QuantizeLinear → Clip → DequantizeLinear (Brevitas QCDQ, narrow range)."""
    rng = np.random.default_rng(2)
    nodes = _activation_qdq("x", "xa") + [
        helper.make_node("QuantizeLinear", ["wf", "w_s", "w_zp"], ["wq"], name="w_ql"),
        helper.make_node("Clip", ["wq", "lo", "hi"], ["wc"], name="w_clip"),
        helper.make_node("DequantizeLinear", ["wc", "w_s", "w_zp"], ["w"], name="w_dq"),
        helper.make_node("Conv", ["xa", "w"], ["y"], name="conv")]
    wf = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = _model(nodes, {"wf": wf, "w_s": np.array(0.2, np.float32), "w_zp": np.array(0, np.int8),
                           "lo": np.array(-7, np.int8), "hi": np.array(7, np.int8), **ACT})
    out, _ = _run_pass(model)
    assert [n.op_type for n in out.graph.node] == ["QuantizeLinear", "DequantizeLinear", "Conv"]
    w = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == out.graph.node[2].input[1]))
    assert np.array_equal(w, np.clip(np.rint(wf / np.float32(0.2)), -7, 7).astype(np.float32) * np.float32(0.2))
    assert np.array_equal(_outputs(model, X), _outputs(out, X))


def test_a_dequantized_graph_output_and_activation_chains_are_left_alone():
    nodes = [helper.make_node("QuantizeLinear", ["x", "a_s", "a_zp"], ["q"], name="ql"),
             helper.make_node("DequantizeLinear", ["q", "a_s", "a_zp"], ["y"], name="dql")]
    model = _model(nodes, ACT, y_shape=("N", 3, 6, 6))
    out, ctx = _run_pass(model)
    assert [n.op_type for n in out.graph.node] == ["QuantizeLinear", "DequantizeLinear"]
    assert not ctx.constants_evaluated
