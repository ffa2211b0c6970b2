"""One table of supported ops (pmsm_compiler.ops.supported): the loader admits what the passes handle.

The loader's allowlist is derived from the passes' tables, so an op a pass knows what to do with is
no longer refused before the pass runs. Each op the old hand-written allowlist refused although a
pass handled it goes here through the whole front door: load_model → compile_model (both modes) →
verification at T = 1, from a file on disk.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.loading import DEFAULT_ALLOWED_OPS, load_model
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.ops.supported import (AFFINE_REAL, METADATA_OPS, SUPPORTED_OPS, TRANSPARENT_ALL, TRANSPARENT_FIRST,
                                         WRAPPED_OPS)
from pmsm_compiler.verify import random_inputs, verify

C, H = 4, 4  # x [N, C, H, H]


def _f(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _i64(name, value):
    return numpy_helper.from_array(np.asarray(value, np.int64), name)


# op: (nodes from "a" [N, C, H, H] to "z", initializers); z is flattened into a Gemm head
CASES = {
    "Mean": ([helper.make_node("Mean", ["a", "a"], ["z"])], []),
    "Tile": ([helper.make_node("Tile", ["a", "reps"], ["z"])], [_i64("reps", [1, 1, 2, 1])]),
    "DepthToSpace": ([helper.make_node("DepthToSpace", ["a"], ["z"], blocksize=2)], []),
    "SpaceToDepth": ([helper.make_node("SpaceToDepth", ["a"], ["z"], blocksize=2)], []),
    "Resize": ([helper.make_node("Resize", ["a", "", "scales"], ["z"], mode="nearest")],
               [_f("scales", [1, 1, 2, 2])]),
    "Size": ([helper.make_node("Size", ["a"], ["n"]), helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
              helper.make_node("Div", ["a", "nf"], ["z"])], []),
    "ReduceMin": ([helper.make_node("ReduceMin", ["a", "axes"], ["z"], keepdims=1)], [_i64("axes", [1])]),
    "HardSigmoid": ([helper.make_node("HardSigmoid", ["a"], ["z"])], []),
    "HardSwish": ([helper.make_node("HardSwish", ["a"], ["z"])], []),
    "LogSoftmax": ([helper.make_node("LogSoftmax", ["a"], ["z"], axis=1)], []),
    "Softplus": ([helper.make_node("Softplus", ["a"], ["z"])], []),
    # activation functions of CNNs (torch.nn.PReLU, ELU, SELU, CELU, Mish, Softsign, Threshold-like)
    "PRelu": ([helper.make_node("PRelu", ["a", "slope"], ["z"])], [_f("slope", np.full((C, 1, 1), 0.25))]),
    "Elu": ([helper.make_node("Elu", ["a"], ["z"], alpha=0.8)], []),
    "Selu": ([helper.make_node("Selu", ["a"], ["z"])], []),
    "Celu": ([helper.make_node("Celu", ["a"], ["z"], alpha=1.5)], []),
    "Mish": ([helper.make_node("Mish", ["a"], ["z"])], []),
    "Softsign": ([helper.make_node("Softsign", ["a"], ["z"])], []),
    "ThresholdedRelu": ([helper.make_node("ThresholdedRelu", ["a"], ["z"], alpha=0.3)], []),
}


def _model(op):
    nodes, inits = CASES[op]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("PQA", ["c", "lam"], ["a"], name="act", domain="pmsm", L=4, alpha=-0.25, beta=1.0),
             *nodes, helper.make_node("Flatten", ["z"], ["flat"]), helper.make_node("MatMul", ["flat", "head"], ["y"])]
    rng = np.random.default_rng(0)
    probe = helper.make_model(helper.make_graph(nodes[:-2], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, C, H, H])], [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [_f("w", rng.standard_normal((C, C, 3, 3)) * 0.3), _f("lam", 2.0), *inits]),
        opset_imports=[helper.make_opsetid("", 20)])
    add_functions(probe, quantizer_functions())
    z = onnx.shape_inference.infer_shapes(probe).graph.output[0].type.tensor_type.shape
    features = int(np.prod([d.dim_value for d in z.dim[1:]]))
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, H, H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [_f("w", rng.standard_normal((C, C, 3, 3)) * 0.3), _f("lam", 2.0), *inits,
                               _f("head", rng.standard_normal((features, 3)) * 0.2)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    onnx.checker.check_model(model, full_check=True)
    return model


def test_the_allowlist_is_the_table():
    assert DEFAULT_ALLOWED_OPS == frozenset(("", op) for op in SUPPORTED_OPS)
    assert TRANSPARENT_ALL | TRANSPARENT_FIRST | METADATA_OPS | AFFINE_REAL | WRAPPED_OPS <= SUPPORTED_OPS
    assert set(CASES) <= SUPPORTED_OPS


@pytest.mark.parametrize("mode", ["exact", "folded"])
@pytest.mark.parametrize("op", sorted(CASES))
def test_an_op_a_pass_handles_goes_through_the_loader_and_compiles(tmp_path, op, mode):
    path = tmp_path / f"{op}.onnx"
    onnx.save(_model(op), path)
    ann = load_model(path, static_inputs=False)
    compiled = compile_model(ann, mode=mode)
    assert op in {n.op_type for n in compiled.model.graph.node}
    report = verify(ann, compiled, random_inputs(compiled.info, 8, 0), mode=mode)
    assert report["passed"], report["failures"]
