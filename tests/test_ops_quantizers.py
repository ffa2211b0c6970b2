"""The ``pmsm::PQA`` / ``pmsm::QCFS`` function bodies, node for node.

The bodies are built from one template (pmsm_compiler.ops.quantizers); every exported model carries
them, and the compiler's recognizer, the AIF neuron's first step and the PyTorch modules all repeat
their op order, so a change to either body is a change of the model format. The expected bodies
are written out here with onnx.helper, independently of the template text.
"""

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pmsm_compiler.ops import DOMAIN, ONNX_OPSET
from pmsm_compiler.ops.quantizers import pqa_function, qcfs_function, quantizer_functions

# sha256 of SerializeToString(deterministic=True), captured from the hand-written bodies the template replaced
DIGESTS = {"PQA": "8ca8bac0354824a5a0431c53629deddbd681de7c845625294748da22f90962d0",
           "QCFS": "1c0c507f0b997e8fb99e4a4bdcbaed66a486805ca1025c7e154a6c196eeee27d"}


def _node(op, inputs, outputs, **attrs):
    node = helper.make_node(op, inputs, outputs, domain="")
    for name, value in attrs.items():
        if isinstance(value, str) and value.startswith("@"):   # a reference to the function's attribute
            ref = onnx.AttributeProto(name=name, ref_attr_name=value[1:])
            ref.type = onnx.AttributeProto.INT if name == "value_int" else onnx.AttributeProto.FLOAT
            node.attribute.append(ref)
        else:
            node.attribute.append(helper.make_attribute(name, value))
    return node


def _quantize(clip_range_nodes, lo, hi):
    return [
        _node("Constant", [], ["L_int"], value_int="@L"),
        _node("Cast", ["L_int"], ["L_f"], to=TensorProto.FLOAT),
        _node("Div", ["lam", "L_f"], ["step"]),
        _node("Div", ["X", "step"], ["u"]),
        _node("Constant", [], ["half"], value_float=0.5),
        _node("Add", ["u", "half"], ["shifted"]),
        _node("Floor", ["shifted"], ["level"]),
        *clip_range_nodes,
        _node("Clip", ["level", lo, hi], ["k"]),
        _node("Mul", ["k", "step"], ["Y"]),
    ]


def _function(name, attributes, nodes):
    return helper.make_function(DOMAIN, name, ["X", "lam"], ["Y"], nodes,
                                [helper.make_opsetid("", ONNX_OPSET)], attributes=attributes)


EXPECTED = {
    "PQA": _function("PQA", ["L", "alpha", "beta"], _quantize([
        _node("Constant", [], ["alpha_f"], value_float="@alpha"),
        _node("Constant", [], ["beta_f"], value_float="@beta"),
        _node("Mul", ["alpha_f", "L_f"], ["k_min_raw"]),
        _node("Round", ["k_min_raw"], ["k_min"]),
        _node("Mul", ["beta_f", "L_f"], ["k_max_raw"]),
        _node("Round", ["k_max_raw"], ["k_max"]),
    ], "k_min", "k_max")),
    "QCFS": _function("QCFS", ["L"], _quantize([
        _node("Constant", [], ["zero"], value_float=0.0),
    ], "zero", "L_f")),
}
BUILT = {"PQA": pqa_function, "QCFS": qcfs_function}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_body_is_the_expected_one_node_for_node(name):
    built, expected = BUILT[name](), EXPECTED[name]
    assert [(n.op_type, list(n.input), list(n.output)) for n in built.node] == \
           [(n.op_type, list(n.input), list(n.output)) for n in expected.node]
    for got, want in zip(built.node, expected.node):
        assert got == want, f"{name}: node {got.output[0]} differs:\n{got}\nexpected:\n{want}"
    assert built == expected
    assert built.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    assert hashlib.sha256(built.SerializeToString(deterministic=True)).hexdigest() == DIGESTS[name]


def test_quantizer_functions_lists_both():
    assert [f.name for f in quantizer_functions()] == ["PQA", "QCFS"]
    assert all(f.domain == DOMAIN for f in quantizer_functions())


@pytest.mark.parametrize("name,attrs,lo,hi", [("PQA", {"L": 3, "alpha": -1 / 3, "beta": 1.0}, -1, 3),
                                              ("QCFS", {"L": 4}, 0, 4)])
def test_body_runs_the_quantizer(name, attrs, lo, hi):
    """The body evaluated by onnx's reference runtime equals y = s·clip(floor(x/s + ½), lo, hi), s = λ/L
    (PQA's bounds round(αL), round(βL): α = −1/3, L = 3 still gives the integer level −1)."""
    from onnx.reference import ReferenceEvaluator

    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])
    lam = helper.make_tensor("lam", TensorProto.FLOAT, [], [2.0])
    node = helper.make_node(name, ["x", "lam"], ["y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "g", [x_info], [y_info], [lam])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                                     helper.make_opsetid(DOMAIN, 1)],
                              functions=[BUILT[name]()])
    onnx.checker.check_model(model, full_check=True)
    x = np.linspace(-4, 4, 64, dtype=np.float32)
    (y,) = ReferenceEvaluator(model).run(None, {"x": x})
    step = np.float32(2.0) / np.float32(attrs["L"])
    expected = np.clip(np.floor(x / step + np.float32(0.5)), lo, hi) * step
    np.testing.assert_array_equal(y, expected.astype(np.float32))
