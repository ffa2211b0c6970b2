"""absorb_threshold_scale (folded mode): every θ moves into the weights; spikes travel as integers.

Checked on hand-built nets with different λ per layer: no Div/Mul by θ stays around a neuron,
the spike tensors hold integers, a conv between neurons A and B has weights W·θ_A/θ_B and bias
b/θ_B, a residual join of two neurons with different θ gets a synapse-scale Mul, and graph
outputs are in real units. Folded and exact compilations are compared on random inputs:

- levels (spike counts k at T = 1) agree on ≥ 99.9 % of all neurons (folding re-associates float
  sums, so a value within an ulp of a level boundary may flip: onnx-findings.md measured 9 in
  524,288 for BN folding);
- outputs agree within FLOAT_RTOL · max|y| on every sample whose levels all agree (re-association
  alone), and within one level flip's worth on the others.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.passes import (PassContext, PassManager, absorb_threshold_scale, canonicalize, pqa_to_aif,
                                  recognize_pqa)
from pmsm_compiler.onnx_utils import with_outputs
from pmsm_compiler.sessions import make_session
from pmsm_compiler.verify import initial_state_feeds, verify

OPSET = 20
C, HW, NCLS, L = 4, 6, 6, 8
FLOAT_RTOL = 1e-5
MIN_LEVEL_AGREEMENT = 0.999
LAMS = {"a": 3.1, "b": 7.3, "c": 5.9}
RNG = np.random.default_rng(11)
W1 = (RNG.standard_normal((C, 3, 3, 3)) * 0.8).astype(np.float32)
B1 = (RNG.standard_normal(C) * 0.5).astype(np.float32)
W2 = (RNG.standard_normal((C, C, 3, 3)) * 0.5).astype(np.float32)
B2 = (RNG.standard_normal(C) * 0.5).astype(np.float32)
WFC = RNG.standard_normal((C, NCLS)).astype(np.float32)
BFC = RNG.standard_normal(NCLS).astype(np.float32)


def theta(name):
    return float(np.float32(LAMS[name]) / np.float32(L))


def _f(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _pqa(x, y, name):
    return helper.make_node("PQA", [x, f"lam_{name}"], [y], name=name, domain="pmsm", L=L, alpha=-0.25, beta=1.0)


def net(residual=False, head=True, expose_b=False):
    """x → conv1 → PQA a → conv2 → PQA b [→ Add(a, b) → PQA c] → GAP → Flatten → Gemm → y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, HW, HW])
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             _pqa("c1", "a1", "a"),
             helper.make_node("Conv", ["a1", "W2", "B2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             _pqa("c2", "a2", "b")]
    last = "a2"
    if residual:
        nodes += [helper.make_node("Add", ["a1", "a2"], ["s"], name="join"), _pqa("s", "a3", "c")]
        last = "a3"
    if head:
        nodes += [helper.make_node("GlobalAveragePool", [last], ["p"], name="gap"),
                  helper.make_node("Flatten", ["p"], ["f"], name="flat"),
                  helper.make_node("Gemm", ["f", "WFC", "BFC"], ["y"], name="fc")]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", NCLS])
    else:
        y = helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", C, HW, HW])
    inits = [_f("W1", W1), _f("B1", B1), _f("W2", W2), _f("B2", B2), _f("WFC", WFC), _f("BFC", BFC)]
    inits += [_f(f"lam_{k}", v) for k, v in LAMS.items()]
    outputs = [y] + ([helper.make_tensor_value_info("a2", TensorProto.FLOAT, ["N", C, HW, HW])] if expose_b else [])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outputs, inits),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def _inputs(n=64, seed=0):
    return (np.random.default_rng(seed).standard_normal((n, 3, HW, HW)) * 2).astype(np.float32)


def _run(compiled, x, extra=()):
    sess = make_session(with_outputs(compiled.model, list(extra)), "all", threads=1)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"x": x, **initial_state_feeds(compiled.info, sess)})))


def _producer(model, name):
    return next(n for n in model.graph.node if name in n.output)


def _consumers(model, name):
    return [n for n in model.graph.node if name in n.input]


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_no_theta_scaling_around_neurons():
    compiled = compile_model(net(), mode="folded")
    m = compiled.model
    aifs = [n for n in m.graph.node if n.op_type == "AIF"]
    assert len(aifs) == 2
    for node in aifs:
        assert _producer(m, node.input[0]).op_type == "Conv"
        assert not any(c.op_type in ("Mul", "Div") for c in _consumers(m, node.output[0]))
    assert not [n for n in m.graph.node if n.op_type in ("Mul", "Div")]
    assert not [n for n in m.graph.node if "synapse_scale" in n.name]


def test_weights_absorb_thresholds():
    ann, compiled = net(), compile_model(net(), mode="folded")
    m, new = compiled.model, _inits(compiled.model)
    conv1, conv2 = (n for n in m.graph.node if n.op_type == "Conv")
    fc = next(n for n in m.graph.node if n.op_type == "Gemm")
    ta, tb = theta("a"), theta("b")

    def scaled(w, factor):
        return (w.astype(np.float64) * factor).astype(np.float32)

    # input (real units, scale 1) → a: W1·1/θ_a, b1/θ_a
    np.testing.assert_array_equal(new[conv1.input[1]], scaled(W1, 1.0 / ta))
    np.testing.assert_array_equal(new[conv1.input[2]], scaled(B1, 1.0 / ta))
    # a → b: W2·θ_a/θ_b, b2/θ_b (the conv reads integer spikes of a and feeds b in its units)
    np.testing.assert_array_equal(new[conv2.input[1]], scaled(W2, ta / tb))
    np.testing.assert_array_equal(new[conv2.input[2]], scaled(B2, 1.0 / tb))
    # b → (GAP, transparent) → Gemm → graph output in real units (scale 1): W·θ_b, bias unchanged
    np.testing.assert_array_equal(new[fc.input[1]], scaled(WFC, tb))
    np.testing.assert_array_equal(new[fc.input[2]], scaled(BFC, 1.0))
    assert len(ann.graph.node) == 7  # the ANN itself is untouched


def test_traffic_between_neurons_is_integer():
    compiled = compile_model(net(residual=True), mode="folded")
    spikes = [l["spike_tensor"] for l in compiled.layers]
    out = _run(compiled, _inputs(16), spikes)
    for layer, name in zip(compiled.layers, spikes):
        k = out[name]
        assert np.array_equal(k, np.round(k)), name
        assert k.min() >= layer["s_min"] and k.max() <= layer["s_max"]
        assert np.abs(k).max() > 1  # multi-level spikes, not just 0/1


def test_residual_join_gets_synapse_scale_and_stays_correct():
    ann = net(residual=True)
    folded = compile_model(ann, mode="folded")
    m = folded.model
    scales = [n for n in m.graph.node if "synapse_scale" in n.name]
    assert scales, "the join of θ_a and θ_b needs a synapse scale"
    inits = _inits(m)
    factors = sorted(float(inits[n.input[1]]) for n in scales)
    ta, tb = theta("a"), theta("b")
    # the two scales meet at the Add: one side is rescaled to the other's θ, then to θ_c
    assert any(np.isclose(f, r, rtol=1e-6) for f in factors for r in (ta / tb, tb / ta))
    join = next(n for n in m.graph.node if n.name == "join")
    assert any(_producer(m, i).name in {n.name for n in scales} for i in join.input)
    report = verify(ann, folded, _inputs(64), mode="folded")
    assert report["passed"], report["failures"]
    assert report["level_agreement"] >= MIN_LEVEL_AGREEMENT


@pytest.mark.parametrize("residual", [False, True])
def test_folded_matches_exact(residual):
    ann = net(residual=residual)
    exact, folded = compile_model(ann, mode="exact"), compile_model(ann, mode="folded")
    x = _inputs(256, seed=1)
    e = _run(exact, x, [l["spike_tensor"] for l in exact.layers])
    f = _run(folded, x, [l["spike_tensor"] for l in folded.layers])
    agree, total = 0, 0
    sample_ok = np.ones(len(x), bool)
    for le, lf in zip(exact.layers, folded.layers):
        assert le["name"] == lf["name"]
        same = e[le["spike_tensor"]] == f[lf["spike_tensor"]]
        agree, total = agree + same.sum(), total + same.size
        sample_ok &= same.reshape(len(x), -1).all(1)
    assert agree / total >= MIN_LEVEL_AGREEMENT
    ye, yf = e["y"], f["y"]
    scale = float(np.abs(ye).max())
    np.testing.assert_allclose(yf[sample_ok], ye[sample_ok], rtol=FLOAT_RTOL, atol=FLOAT_RTOL * scale)
    # a flipped level moves an output by at most one level's PSP through the head:
    # θ·max|W_fc| per flipped neuron, averaged by the pool
    bound = theta("c" if residual else "b") * float(np.abs(WFC).max()) * 2 + FLOAT_RTOL * scale
    assert float(np.abs(yf - ye).max()) <= bound
    assert sample_ok.mean() >= 0.9


def test_neuron_output_as_graph_output_is_real_and_spikes_stay_integer():
    """A neuron feeding the graph output directly: the output is k·θ (real units), under its name,
    and the layer's spike tensor (counted, verified) is the integer k before that scale."""
    ann = net(head=False)
    folded = compile_model(ann, mode="folded")
    (layer_a, layer_b) = folded.layers
    assert layer_b["ann_output"] == "a2" and layer_b["spike_tensor"] != "a2"
    x = _inputs(8)
    out = _run(folded, x, [layer_b["spike_tensor"]])
    k = out[layer_b["spike_tensor"]]
    assert np.array_equal(k, np.round(k))
    np.testing.assert_array_equal(out["a2"], k * np.float32(theta("b")))
    counts = out["pmsm_spike_counts"][:, layer_b["count_index"]]
    np.testing.assert_array_equal(counts, np.abs(k).reshape(len(x), -1).sum(1).astype(np.int64))
    report = verify(ann, folded, _inputs(32), mode="folded")
    assert report["passed"], report["failures"]
    assert report["top1_agreement"] is None  # a feature map is not a classifier output


def test_exact_mode_is_a_no_op():
    ctx = PassContext(mode="exact")
    passes = [canonicalize, recognize_pqa, pqa_to_aif]
    before = gs.export_onnx(PassManager(passes).run(gs.import_onnx(net()), ctx))
    ctx2 = PassContext(mode="exact")
    after = gs.export_onnx(PassManager(passes + [absorb_threshold_scale]).run(gs.import_onnx(net()), ctx2))
    assert [(n.op_type, list(n.input), list(n.output)) for n in before.graph.node] == \
           [(n.op_type, list(n.input), list(n.output)) for n in after.graph.node]


@pytest.mark.parametrize("expose_b", [False, True])
def test_fan_out_same_in_both_modes(expose_b):
    """fan_out (synapses per spike) is a property of the network, not of the compilation mode; with
    b's output also a graph output, folded mode renames it, and its consumers must still count."""
    ann = net(residual=True, expose_b=expose_b)
    exact, folded = compile_model(ann, mode="exact"), compile_model(ann, mode="folded")
    expected = {"a": C * 9 + 1,  # the 3×3 conv over C channels, plus the identity path into c
                "b": 1,  # the identity path into c
                "c": NCLS * C / (C * HW * HW)}  # GAP → Gemm: C·NCLS MACs over C·HW² neurons
    for compiled in (exact, folded):
        got = {l["name"]: l["fan_out"] for l in compiled.layers}
        assert got == pytest.approx(expected, rel=1e-12), compiled.info["mode"]
    if expose_b:
        report = verify(ann, folded, _inputs(16), mode="folded")
        assert report["passed"], report["failures"]


# ------------------------------------------------------------------------------------------
# Shape reads: x.view(x.size(0), -1) after a neuron
# ------------------------------------------------------------------------------------------

WFLAT = RNG.standard_normal((C * HW * HW, NCLS)).astype(np.float32) * 0.2


def _i64(name, value):
    return numpy_helper.from_array(np.asarray(value, np.int64), name)


def view_net(halve=False):
    """x → conv1 → PQA a → Reshape(a, [n, −1]) → Gemm → y, with n = Shape(a)[0] (n // 2 · 2 if halve:
    integer arithmetic on a shape, as exporters write for views of a dynamic dimension)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, HW, HW])
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             _pqa("c1", "a1", "a"),
             helper.make_node("Shape", ["a1"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["n"], name="batch_dim", axis=0)]
    if halve:
        nodes += [helper.make_node("Div", ["n", "two"], ["half"], name="halve"),
                  helper.make_node("Mul", ["half", "two"], ["n_even"], name="double")]
    nodes += [helper.make_node("Unsqueeze", ["n_even" if halve else "n", "axes0"], ["n1"], name="unsqueeze"),
              helper.make_node("Concat", ["n1", "minus_one"], ["new_shape"], name="concat", axis=0),
              helper.make_node("Reshape", ["a1", "new_shape"], ["flat"], name="view"),
              helper.make_node("Gemm", ["flat", "WFLAT"], ["y"], name="fc")]
    inits = [_f("W1", W1), _f("B1", B1), _f("lam_a", LAMS["a"]), _f("WFLAT", WFLAT), _i64("zero", 0),
             _i64("two", 2), _i64("axes0", [0]), _i64("minus_one", [-1])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", NCLS])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


@pytest.mark.parametrize("halve", [False, True])
def test_shape_reads_spikes_without_rescale(halve):
    """Shape reads no values: it takes the integer spikes as they are (no synapse scale in front of it),
    its integer outputs (and the integer arithmetic on them) keep their constants, and the Gemm after
    the view absorbs θ_a."""
    ann = view_net(halve)
    folded = compile_model(ann, mode="folded")
    m = folded.model
    (layer,) = folded.layers
    shape = next(n for n in m.graph.node if n.op_type == "Shape")
    assert shape.input[0] == layer["spike_tensor"] and _producer(m, shape.input[0]).op_type == "AIF"
    assert not [n for n in m.graph.node if "synapse_scale" in n.name]
    inits = _inits(m)
    if halve:  # n // 2 · 2 on int64: Div stays Div by 2 (a weight rewrite would make it Mul by 1/2 = 0)
        halve_node, double = (next(n for n in m.graph.node if n.name == name) for name in ("halve", "double"))
        assert halve_node.op_type == "Div" and int(inits[halve_node.input[1]]) == 2
        assert double.op_type == "Mul" and int(inits[double.input[1]]) == 2
    fc = next(n for n in m.graph.node if n.op_type == "Gemm")
    np.testing.assert_array_equal(inits[fc.input[1]], (WFLAT.astype(np.float64) * theta("a")).astype(np.float32))
    exact = compile_model(ann, mode="exact")
    x = _inputs(4, seed=3)
    y_ann = make_session(ann, "all", threads=1).run(["y"], {"x": x})[0]
    e, f = _run(exact, x, [exact.layers[0]["spike_tensor"]]), _run(folded, x, [layer["spike_tensor"]])
    assert np.array_equal(e["y"], y_ann)
    np.testing.assert_array_equal(f[layer["spike_tensor"]], e[exact.layers[0]["spike_tensor"]])  # no flip here
    assert float(np.abs(f["y"] - y_ann).max()) <= FLOAT_RTOL * float(np.abs(y_ann).max())
