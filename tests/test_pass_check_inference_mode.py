"""check_inference_mode: BatchNormalization and Dropout exported in training mode are refused by name.

The BN case was a silent wrong answer before: in exact mode the SNN normalized each timestep's
spikes with their own batch statistics (and passed the T = 1 check, whose batches are the ANN's),
in folded mode fold_batchnorm folded the running statistics and the verification failed with
level mismatches that named no cause. A training-mode Dropout was removed by canonicalize as an
identity. The same graphs in inference mode pass through unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.errors import UnsupportedModelError
from pmsm_compiler.passes import PassContext, PassManager, PassRefusal, check_inference_mode

OPSET = 17


def _model(node, inits, outputs=1):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="ql"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dql"),
             helper.make_node("Gemm", ["xd", "W"], ["h"], name="fc"), node]
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "zp"),
             numpy_helper.from_array(np.eye(4, dtype=np.float32), "W"), *inits]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def batchnorm(training):
    inits = [numpy_helper.from_array(np.full(4, v, np.float32), n) for n, v in
             (("gamma", 1.5), ("beta", 0.2), ("mean", 0.1), ("var", 2.0))]
    outputs = ["y", "rm", "rv"] if training else ["y"]
    node = helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], outputs, name="bn",
                            training_mode=int(training))
    return _model(node, inits)


def dropout(training):
    inits = [numpy_helper.from_array(np.float32(0.5), "ratio"), numpy_helper.from_array(np.bool_(training), "train")]
    return _model(helper.make_node("Dropout", ["h", "ratio", "train"], ["y"], name="drop"), inits)


def run(model):
    return PassManager([check_inference_mode]).run(gs.import_onnx(model), PassContext())


@pytest.mark.parametrize("model,message", [
    (batchnorm(True), "BatchNormalization 'bn' has training_mode=1: it normalizes with each batch's own statistics"),
    (dropout(True), "Dropout 'drop': its training_mode input is true (random masks)"),
])
def test_training_mode_is_refused_by_name(model, message):
    with pytest.raises(PassRefusal, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(model)
    for mode in ("exact", "folded"):
        with pytest.raises(UnsupportedModelError, match="export the model in eval mode"):
            compile_model(model, mode=mode)


def test_a_dropout_whose_mode_is_computed_is_refused():
    model = dropout(True)
    graph = gs.import_onnx(model)
    drop = next(n for n in graph.nodes if n.op == "Dropout")
    flag = gs.Variable("flag", dtype=np.bool_, shape=[])
    graph.nodes.append(gs.Node("Greater", inputs=[drop.inputs[1], gs.Constant("half", np.array(0.25, np.float32))],
                               outputs=[flag]))
    drop.inputs[2] = flag
    with pytest.raises(PassRefusal, match="its training_mode input is not a constant"):
        check_inference_mode(graph, PassContext())


@pytest.mark.parametrize("model", [batchnorm(False), dropout(False)])
def test_inference_mode_passes_unchanged(model):
    graph = run(model)
    assert [n.op for n in graph.nodes] == [n.op_type for n in model.graph.node]
    assert compile_model(model, mode="exact").info["layers"]
