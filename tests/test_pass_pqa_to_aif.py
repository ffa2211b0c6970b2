"""pqa_to_aif: quantizers → spiking neurons with explicit state.

exact mode: ``Div θ → pmsm::AIF → Mul θ`` with a state input ``<layer>.u`` and output
``<layer>.u_next``; the SNN's first step equals the ANN bit for bit (np.array_equal), also on
inputs that land exactly on a level boundary k + ½ (in threshold units), where any other
formulation of the rounding (θ/2 + x, multiply by 1/θ) goes wrong. folded mode: the AIF reads the
conv output directly. QCFS → ``pmsm::IF`` (binary, s_min 0, s_max 1, θ = λ).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.onnx_utils import with_outputs
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.neurons import AIFNeuron
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.passes import PassContext, PassManager, canonicalize, pqa_to_aif, recognize_pqa
from pmsm_compiler.sessions import make_session
from pmsm_compiler.verify import initial_state_feeds

OPSET = 20
C, HW, NCLS = 3, 6, 5
LAM, L = 7.3, 8
THETA = np.float32(LAM) / np.float32(L)  # fl(fl(λ)/L), as the PQA function body computes it
K_MIN, K_MAX = -2, 8
RNG = np.random.default_rng(5)
W2 = (RNG.standard_normal((C, C, 3, 3)) * 0.7).astype(np.float32)
B2 = (RNG.standard_normal(C) * 0.5).astype(np.float32)
WFC = (RNG.standard_normal((C, NCLS))).astype(np.float32)


def _f(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def tiny_net(op="PQA", lam=LAM, levels=L):
    """x → Conv 1×1 identity → PQA → Conv 3×3 → PQA → GlobalAveragePool → Flatten → Gemm → y.

    The first conv is an exact identity (1·x plus zeros), so ties placed in x reach the first
    quantizer unchanged."""
    attrs = dict(L=levels, alpha=K_MIN / levels, beta=K_MAX / levels) if op == "PQA" else dict(L=levels)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, HW, HW])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", NCLS])
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1"),
        helper.make_node(op, ["c1", "lam1"], ["a1"], name="act1", domain="pmsm", **attrs),
        helper.make_node("Conv", ["a1", "W2", "B2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node(op, ["c2", "lam2"], ["a2"], name="act2", domain="pmsm", **attrs),
        helper.make_node("GlobalAveragePool", ["a2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "WFC"], ["y"], name="fc"),
    ]
    inits = [_f("W1", np.eye(C).reshape(C, C, 1, 1)), _f("lam1", lam), _f("W2", W2), _f("B2", B2),
             _f("lam2", lam), _f("WFC", WFC)]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def tie_values(theta=THETA, ks=range(-4, 11)):
    """float32 values v with fl(v/θ) == k + ½ exactly (a level boundary in threshold units)."""
    out = []
    for k in ks:
        v = np.float32((k + 0.5) * float(theta))
        for _ in range(64):  # walk to a value whose quotient rounds exactly onto the boundary
            q = v / theta
            if q == np.float32(k + 0.5):
                out.append(v)
                break
            v = np.nextafter(v, np.float32(np.inf) if q < k + 0.5 else np.float32(-np.inf))
    return np.array(out, np.float32)


def inputs_with_ties(n=8, seed=0):
    x = (np.random.default_rng(seed).standard_normal((n, C, HW, HW)) * 4).astype(np.float32)
    ties = tie_values()
    flat = x.reshape(-1)
    flat[: ties.size] = ties
    flat[ties.size: 2 * ties.size] = -ties
    return x, ties


def _nodes_by_op(model, op, domain=""):
    return [n for n in model.graph.node if n.op_type == op and n.domain == domain]


def _producer(model, name):
    return next((n for n in model.graph.node if name in n.output), None)


def _consumers(model, name):
    return [n for n in model.graph.node if name in n.input]


def _init(model, name):
    return next((numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name), None)


def test_tie_values_are_exact_ties():
    ties = tie_values()
    assert ties.size >= 12
    q = ties / THETA
    assert np.all(q - np.floor(q) == np.float32(0.5))


def test_exact_mode_structure():
    compiled = compile_model(tiny_net(), mode="exact")
    m = compiled.model
    aifs = _nodes_by_op(m, "AIF", "pmsm")
    assert len(aifs) == 2
    graph_in = {i.name: i for i in m.graph.input}
    graph_out = {o.name for o in m.graph.output}
    for node, layer in zip(aifs, compiled.layers):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"s_min": K_MIN, "s_max": K_MAX}
        div = _producer(m, node.input[0])
        assert div.op_type == "Div"
        assert _init(m, div.input[1]) == THETA  # the PQA's own θ = fl(λ/L), divided (not multiplied)
        # the spikes feed the PSP Mul (and the spike counters: Flatten and SpikeCounters, see count_spikes)
        (mul,) = [c for c in _consumers(m, node.output[0]) if c.op_type not in ("Flatten", "SpikeCounters")]
        assert mul.op_type == "Mul" and _init(m, mul.input[1]) == THETA
        assert mul.output[0] == layer["ann_output"]  # the ANN tensor keeps its name
        # state: input <layer>.u (rank-only), output <layer>.u_next
        assert node.input[1] == f"{layer['name']}.u" == layer["state_in"]
        assert node.output[1] == f"{layer['name']}.u_next" == layer["state_out"] and node.output[1] in graph_out
        dims = graph_in[node.input[1]].type.tensor_type.shape.dim
        assert len(dims) == 4 and not any(d.HasField("dim_value") for d in dims)
        assert (layer["neuron"], layer["s_min"], layer["s_max"], layer["theta"]) == ("AIF", K_MIN, K_MAX,
                                                                                     float(THETA))
    assert {s["input"]: s["init"] for s in compiled.info["states"]} == {"act1.u": 0.5, "act2.u": 0.5}
    assert "AIF" in {f.name for f in m.functions}


@pytest.mark.parametrize("opt_level", ["disable", "all"])
def test_exact_t1_bit_identical_with_ties(opt_level):
    ann = tiny_net()
    compiled = compile_model(ann, mode="exact")
    x, ties = inputs_with_ties()
    inner = ["a1", "a2"]
    ann_sess = make_session(with_outputs(ann, inner), opt_level, threads=1)
    snn_sess = make_session(with_outputs(compiled.model, inner + ["act1.spikes"]), opt_level, threads=1)
    feeds = {"x": x, **initial_state_feeds(compiled.info, snn_sess)}
    assert all(v.shape == (1, 1, 1, 1) and v.item() == 0.5 for k, v in feeds.items() if k != "x")
    a = dict(zip([o.name for o in ann_sess.get_outputs()], ann_sess.run(None, {"x": x})))
    s = dict(zip([o.name for o in snn_sess.get_outputs()], snn_sess.run(None, feeds)))
    for name in ["y", *inner]:
        assert np.array_equal(a[name], s[name]), name
    # the ties reached the first neuron and were rounded half up, as PQA does
    k1 = s["act1.spikes"].reshape(-1)
    ks = np.floor(ties / THETA)  # k of the boundary k + ½
    np.testing.assert_array_equal(k1[: ties.size], np.clip(ks + 1, K_MIN, K_MAX))
    # ...and the absolute form floor((θ/2 + x)/θ), or a multiply by 1/θ, would not be exact here
    # (the reason for keeping the membrane in threshold units): at least one of them differs.
    absolute = np.clip(np.floor((THETA / 2 + x) / THETA), K_MIN, K_MAX).reshape(-1)
    multiply = np.clip(np.floor(x * (np.float32(1) / THETA) + np.float32(0.5)), K_MIN, K_MAX).reshape(-1)
    assert not (np.array_equal(absolute, k1) and np.array_equal(multiply, k1))


def test_exact_mode_membrane_over_steps_matches_numpy_reference():
    compiled = compile_model(tiny_net(), mode="exact")
    x, _ = inputs_with_ties(n=2)
    sess = make_session(with_outputs(compiled.model, ["act1.spikes", "act1.current"]), "disable", threads=1)
    names = [o.name for o in sess.get_outputs()]
    states = initial_state_feeds(compiled.info, sess)
    ref = AIFNeuron(K_MIN, K_MAX)
    for _ in range(5):
        out = dict(zip(names, sess.run(None, {"x": x, **states})))
        np.testing.assert_array_equal(out["act1.current"], x / THETA)
        np.testing.assert_array_equal(out["act1.spikes"], ref.step(x / THETA))
        np.testing.assert_array_equal(out["act1.u_next"], ref.u)
        states = {s["input"]: out[s["output"]] for s in compiled.info["states"]}


def test_folded_mode_aif_reads_conv_output():
    ctx = PassContext(mode="folded")
    graph = PassManager([canonicalize, recognize_pqa, pqa_to_aif]).run(gs.import_onnx(tiny_net()), ctx)
    aifs = [n for n in graph.nodes if n.op == "AIF"]
    assert len(aifs) == 2
    for node in aifs:
        assert node.inputs[0].inputs[0].op == "Conv"  # no Div between the conv and the neuron
        assert not any(c.op in ("Mul", "Div") for c in node.outputs[0].outputs)
    assert [l["theta_in"] for l in ctx.layers] == [float(THETA)] * 2
    assert [l["theta_out"] for l in ctx.layers] == [float(THETA)] * 2
    # after the whole pipeline too (θ absorbed into the conv weights)
    compiled = compile_model(tiny_net(), mode="folded")
    for node in _nodes_by_op(compiled.model, "AIF", "pmsm"):
        assert _producer(compiled.model, node.input[0]).op_type == "Conv"


def test_qcfs_becomes_if_neuron():
    lam = 4.0
    compiled = compile_model(tiny_net(op="QCFS", lam=lam, levels=4), mode="exact")
    m = compiled.model
    assert not _nodes_by_op(m, "AIF", "pmsm")
    ifs = _nodes_by_op(m, "IF", "pmsm")
    assert len(ifs) == 2 and all(not n.attribute for n in ifs)
    for layer, node in zip(compiled.layers, ifs):
        assert (layer["kind"], layer["neuron"], layer["s_min"], layer["s_max"]) == ("QCFS", "IF", 0, 1)
        assert layer["theta"] == layer["theta_in"] == layer["theta_out"] == lam  # θ = λ (Bu et al.)
        assert layer["lossless_at_t1"] is False
        div = _producer(m, node.input[0])
        assert div.op_type == "Div" and _init(m, div.input[1]) == np.float32(lam)
    assert {f.name for f in m.functions if f.domain == "pmsm"} == {"IF", "SpikeCounters"}
    # binary spikes at T=1: 1 where x/λ + ½ ≥ 1
    x = np.random.default_rng(0).uniform(-1, 5, (4, C, HW, HW)).astype(np.float32)
    sess = make_session(with_outputs(m, ["act1.spikes"]), "disable", threads=1)
    k = sess.run(["act1.spikes"], {"x": x, **initial_state_feeds(compiled.info, sess)})[0]
    np.testing.assert_array_equal(k, (x / np.float32(lam) + np.float32(0.5) >= 1).astype(np.float32))


def _plain_qcfs(scale, levels, post):
    """x → Div(x, s) → Add ½ → Floor → Clip(0, L) [→ Mul s] → Identity → y (plain QCFS)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    nodes = [helper.make_node("Gemm", ["x", "Wid"], ["z"], name="fc"),
             helper.make_node("Div", ["z", "s"], ["u"], name="pre"),
             helper.make_node("Add", ["u", "half"], ["sh"], name="shift"),
             helper.make_node("Floor", ["sh"], ["fl"], name="qcfs"),
             helper.make_node("Clip", ["fl", "lo", "hi"], ["k" if post else "q"], name="clip")]
    if post:
        nodes.append(helper.make_node("Mul", ["k", "s"], ["q"], name="post"))
    nodes.append(helper.make_node("Gemm", ["q", "Wid"], ["y"], name="fc2"))
    inits = [_f("Wid", np.eye(8)), _f("s", scale), _f("half", 0.5), _f("lo", 0.0), _f("hi", float(levels))]
    model = helper.make_model(helper.make_graph(nodes, "q", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


@pytest.mark.parametrize("post", [True, False])
def test_plain_qcfs_if_threshold_in_input_units(post):
    """θ_in of the IF is λ in the units of the quantizer's input (s_in·L), θ_out in the units of its
    output (s_out·L), so the rate over many steps approaches the ANN's activation."""
    s, levels, steps = 0.25, 4, 64
    model = _plain_qcfs(s, levels, post)
    compiled = compile_model(model, mode="exact")
    (layer,) = compiled.layers
    assert layer["neuron"] == "IF"
    assert layer["theta_in"] == pytest.approx(s * levels)
    assert layer["theta_out"] == pytest.approx((s if post else 1.0) * levels)
    x = np.linspace(-0.2, 1.2, 8, dtype=np.float32)[None, :]
    sess = make_session(compiled.model, "disable", threads=1)
    names = [o.name for o in sess.get_outputs()]
    states = initial_state_feeds(compiled.info, sess)
    total = np.zeros_like(x)
    for _ in range(steps):
        out = dict(zip(names, sess.run(None, {"x": x, **states})))
        total += out["y"]
        states = {st["input"]: out[st["output"]] for st in compiled.info["states"]}
    y_ann = make_session(model, "disable").run(["y"], {"x": x})[0]
    out_scale = s if post else 1.0
    # rate coding: the mean output is θ_out·(spikes/T) ≈ clip(x/s_in, 0, L)·s_out, within half a
    # level of the quantized ANN, plus one spike's worth (θ_out/T) of rate resolution
    np.testing.assert_allclose(total / steps, y_ann, atol=out_scale * (0.5 + levels / steps) + 1e-6)
