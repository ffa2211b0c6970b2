"""fold_batchnorm: BN after Conv / Gemm / MatMul folded into the weights; the refusals.

Folding re-associates float arithmetic (W·a instead of a·(W∗x)), so the outputs are compared
within a relative tolerance of 1e-5 of the output's scale, not bit for bit. A BN that is not
folded stays (exact mode) or becomes a per-channel Mul + Add (folded mode), whose outputs are
compared the same way.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.passes import PassContext, PassManager, canonicalize, fold_batchnorm
from pmsm_compiler.sessions import make_session

OPSET = 20
RTOL = 1e-5
RNG = np.random.default_rng(42)
C_IN, C, HW = 3, 5, 6


def _f(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _bn_inits(prefix, c, rng=RNG):
    return [_f(f"{prefix}.gamma", rng.uniform(0.5, 2.0, c)), _f(f"{prefix}.beta", rng.uniform(-1, 1, c)),
            _f(f"{prefix}.mean", rng.uniform(-1, 1, c)), _f(f"{prefix}.var", rng.uniform(0.2, 3.0, c))]


def _bn(prefix, x, y, eps=1e-5):
    return helper.make_node("BatchNormalization", [x, f"{prefix}.gamma", f"{prefix}.beta", f"{prefix}.mean",
                                                   f"{prefix}.var"], [y], name=prefix, epsilon=eps)


def _model(nodes, inits, x_shape, outputs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape]) for name, shape in outputs]
    graph = helper.make_graph(nodes, "g", [x], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _run_pass(model, mode="folded"):
    ctx = PassContext(mode=mode)
    graph = PassManager([canonicalize, fold_batchnorm]).run(gs.import_onnx(model), ctx)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    onnx.checker.check_model(out, full_check=True)
    return out, ctx


def _outputs(model, x):
    sess = make_session(model, "disable", threads=1)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))


def _assert_close(model, folded, x):
    a, b = _outputs(model, x), _outputs(folded, x)
    assert a.keys() == b.keys()
    for name in a:
        scale = float(np.abs(a[name]).max())
        np.testing.assert_allclose(b[name], a[name], rtol=RTOL, atol=RTOL * scale, err_msg=name)


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _conv_inits(bias=True, prefix="conv"):
    inits = [_f(f"{prefix}.W", RNG.standard_normal((C, C_IN, 3, 3)))]
    if bias:
        inits.append(_f(f"{prefix}.B", RNG.standard_normal(C)))
    return inits


def _image(n=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, C_IN, HW, HW)).astype(np.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folded(bias):
    inputs = ["x", "conv.W"] + (["conv.B"] if bias else [])
    model = _model([helper.make_node("Conv", inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
                    _bn("bn", "c", "y")],
                   _conv_inits(bias) + _bn_inits("bn", C), (C_IN, HW, HW), [("y", (C, HW, HW))])
    folded, ctx = _run_pass(model)
    assert _ops(folded) == ["Conv"]
    conv = folded.graph.node[0]
    assert len(conv.input) == 3 and conv.output[0] == "y"  # a bias was added if there was none
    assert not ctx.notes
    # the new weights: W·a per output channel, in float32
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    a = inits["bn.gamma"].astype(np.float64) / np.sqrt(inits["bn.var"].astype(np.float64) + 1e-5)
    np.testing.assert_array_equal(new[conv.input[1]],
                                  (inits["conv.W"].astype(np.float64) * a[:, None, None, None]).astype(np.float32))
    _assert_close(model, folded, _image())


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_folded(trans_b):
    k, n = 12, 7
    w = RNG.standard_normal((n, k) if trans_b else (k, n))
    model = _model([helper.make_node("Gemm", ["x", "fc.W", "fc.B"], ["z"], name="fc", transB=trans_b),
                    _bn("bn", "z", "y")],
                   [_f("fc.W", w), _f("fc.B", RNG.standard_normal(n))] + _bn_inits("bn", n), (k,), [("y", (n,))])
    folded, ctx = _run_pass(model)
    assert _ops(folded) == ["Gemm"] and not ctx.notes
    x = np.random.default_rng(1).standard_normal((16, k)).astype(np.float32)
    _assert_close(model, folded, x)


def test_matmul_bn_folded_with_bias_add():
    k, n = 12, 7
    model = _model([helper.make_node("MatMul", ["x", "mm.W"], ["z"], name="mm"), _bn("bn", "z", "y")],
                   [_f("mm.W", RNG.standard_normal((k, n)))] + _bn_inits("bn", n), (k,), [("y", (n,))])
    folded, ctx = _run_pass(model)
    assert _ops(folded) == ["MatMul", "Add"] and not ctx.notes
    _assert_close(model, folded, np.random.default_rng(2).standard_normal((16, k)).astype(np.float32))


def test_bn_after_conv_with_shared_weight_not_folded():
    """Two Convs share one weight tensor: folding BN into it would change the other Conv."""
    model = _model([helper.make_node("Conv", ["x", "conv.W", "conv.B"], ["c1"], name="conv_a", pads=[1, 1, 1, 1]),
                    helper.make_node("Conv", ["x", "conv.W"], ["c2"], name="conv_b", pads=[1, 1, 1, 1]),
                    _bn("bn", "c1", "y1"),
                    helper.make_node("Relu", ["c2"], ["y2"], name="relu")],
                   _conv_inits() + _bn_inits("bn", C), (C_IN, HW, HW), [("y1", (C, HW, HW)), ("y2", (C, HW, HW))])
    folded, ctx = _run_pass(model, mode="folded")
    assert "BatchNormalization" not in _ops(folded)  # folded mode: BN becomes a per-channel affine op
    assert _ops(folded).count("Conv") == 2 and {"Mul", "Add"} <= set(_ops(folded))
    assert any("BatchNormalization 'bn' not folded" in n and "weights of Conv 'conv_a' are shared" in n
               for n in ctx.notes), ctx.notes
    # the shared weight is untouched
    w = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    convs = [n for n in folded.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] == convs[1].input[1] == "conv.W"
    np.testing.assert_array_equal(w["conv.W"], numpy_helper.to_array(model.graph.initializer[0]))
    _assert_close(model, folded, _image())


def test_bn_whose_input_forks_not_folded():
    """The Conv output is also used elsewhere: folding would change that other use."""
    model = _model([helper.make_node("Conv", ["x", "conv.W", "conv.B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                    _bn("bn", "c", "y1"),
                    helper.make_node("Relu", ["c"], ["y2"], name="relu")],
                   _conv_inits() + _bn_inits("bn", C), (C_IN, HW, HW), [("y1", (C, HW, HW)), ("y2", (C, HW, HW))])
    folded, ctx = _run_pass(model)
    assert any("BatchNormalization 'bn' not folded" in n and "fork" in n for n in ctx.notes), ctx.notes
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    assert conv.input[1] == "conv.W"  # weights unchanged
    _assert_close(model, folded, _image())


def test_bn_on_graph_input_becomes_affine():
    model = _model([_bn("bn", "x", "y")], _bn_inits("bn", C_IN), (C_IN, HW, HW), [("y", (C_IN, HW, HW))])
    folded, ctx = _run_pass(model)
    assert _ops(folded) == ["Mul", "Add"]
    assert any("not preceded by Conv, Gemm or MatMul" in n for n in ctx.notes)
    _assert_close(model, folded, _image())


def test_exact_mode_leaves_bn_alone():
    model = _model([helper.make_node("Conv", ["x", "conv.W", "conv.B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                    _bn("bn", "c", "y")],
                   _conv_inits() + _bn_inits("bn", C), (C_IN, HW, HW), [("y", (C, HW, HW))])
    out, ctx = _run_pass(model, mode="exact")
    assert _ops(out) == ["Conv", "BatchNormalization"]
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    x = _image()
    np.testing.assert_array_equal(_outputs(model, x)["y"], _outputs(out, x)["y"])  # nothing changed: exact


# ------------------------------------------------------------------------------------------
# A non-default epsilon: BN(z) = γ·(z − μ)/√(σ² + ε) + β. With running variances of the order of ε
# (or below), ignoring ε (taking the default 1e-5) changes the outputs by far more than RTOL.
# ------------------------------------------------------------------------------------------

def _small_var_bn_inits(prefix, c, seed):
    rng = np.random.default_rng(seed)
    return [_f(f"{prefix}.gamma", rng.uniform(0.5, 2.0, c)), _f(f"{prefix}.beta", rng.uniform(-1, 1, c)),
            _f(f"{prefix}.mean", rng.uniform(-1, 1, c)), _f(f"{prefix}.var", rng.uniform(1e-4, 2e-3, c))]


@pytest.mark.parametrize("eps", [1e-3, 0.1])
def test_conv_bn_folded_with_epsilon(eps):
    model = _model([helper.make_node("Conv", ["x", "conv.W", "conv.B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                    _bn("bn", "c", "y", eps=eps)],
                   _conv_inits() + _small_var_bn_inits("bn", C, seed=5), (C_IN, HW, HW), [("y", (C, HW, HW))])
    folded, ctx = _run_pass(model)
    assert _ops(folded) == ["Conv"] and not ctx.notes
    _assert_close(model, folded, _image())


@pytest.mark.parametrize("eps", [1e-3, 0.1])
def test_gemm_bn_folded_with_epsilon(eps):
    k, n = 12, 7
    model = _model([helper.make_node("Gemm", ["x", "fc.W", "fc.B"], ["z"], name="fc", transB=1),
                    _bn("bn", "z", "y", eps=eps)],
                   [_f("fc.W", RNG.standard_normal((n, k))), _f("fc.B", RNG.standard_normal(n))]
                   + _small_var_bn_inits("bn", n, seed=6), (k,), [("y", (n,))])
    folded, ctx = _run_pass(model)
    assert _ops(folded) == ["Gemm"] and not ctx.notes
    _assert_close(model, folded, np.random.default_rng(1).standard_normal((16, k)).astype(np.float32))


@pytest.mark.parametrize("eps", [1e-3, 0.1])
def test_bn_affine_with_epsilon(eps):
    """A BN that is not folded (on the graph input) becomes a·x + b with a = γ/√(σ² + ε)."""
    model = _model([_bn("bn", "x", "y", eps=eps)], _small_var_bn_inits("bn", C_IN, seed=7), (C_IN, HW, HW),
                   [("y", (C_IN, HW, HW))])
    folded, ctx = _run_pass(model)
    assert _ops(folded) == ["Mul", "Add"]
    _assert_close(model, folded, _image())


def test_two_unnamed_bns_become_affine_with_distinct_names():
    """Node names are optional in ONNX: two unnamed BNs that cannot be folded must not share the names
    of the tensors that replace them."""
    nodes = [helper.make_node("BatchNormalization", ["x", "bn.gamma", "bn.beta", "bn.mean", "bn.var"], ["h"]),
             helper.make_node("BatchNormalization", ["h", "bn.gamma", "bn.beta", "bn.mean", "bn.var"], ["y"])]
    model = _model(nodes, _bn_inits("bn", C_IN), (C_IN, HW, HW), [("y", (C_IN, HW, HW))])
    folded, _ = _run_pass(model)
    assert _ops(folded) == ["Mul", "Add", "Mul", "Add"]
    _assert_close(model, folded, _image())
