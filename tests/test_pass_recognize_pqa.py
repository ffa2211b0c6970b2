"""recognize_pqa: the four quantizer forms, QCFS, and the refusals.

Forms: (1) ``pmsm::PQA`` / ``pmsm::QCFS`` nodes (export_onnx of resnet_tiny; a hand-built QCFS
node), (2) plain ops ``[Div | Mul] → Add 0.5 → Floor → Clip → [Mul]`` (hand-built, with and
without the scales), (3) ``QuantizeLinear → [Clip] → DequantizeLinear`` (int8 with a zero point,
uint8), (4) fake quantization with Round (``[Div | Mul] → Round → Clip → [Mul]``, either order of
Round and Clip). Each test checks the internal ``Quantizer`` node the pass leaves (kind, levels, the scale
ops it recorded) and, through compile_model(mode="exact"), that the SNN at T = 1 reproduces the
ANN in onnxruntime bit for bit (np.array_equal): the claim of the exact mode.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.errors import UnsupportedModelError
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.passes import PassContext, PassManager, PassRefusal, canonicalize, recognize_pqa
from pmsm_compiler.passes.graph_utils import INTERNAL_DOMAIN
from pmsm_compiler.sessions import make_session
from pmsm_compiler.verify import initial_state_feeds, verify

OPSET = 20
C_IN, C, HW = 3, 4, 6
RNG = np.random.default_rng(1234)
W1 = (RNG.standard_normal((C, C_IN, 3, 3)) * 0.6).astype(np.float32)
B1 = (RNG.standard_normal(C) * 0.3).astype(np.float32)
W2 = (RNG.standard_normal((C, C, 3, 3)) * 0.4).astype(np.float32)

LAM, L = np.float32(7.3), 8
STEP = LAM / np.float32(L)  # fl(λ/L), as the PQA function body computes it


def _f(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def build(mid_nodes, mid_inits, *, functions=False, mid_in="c1", mid_out="q"):
    """x → Conv1 → [quantizer nodes: mid_in → mid_out] → Conv2 → y (shape-inferred)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C_IN, HW, HW])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, HW, HW])
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], [mid_in], name="conv1", pads=[1, 1, 1, 1]),
             *mid_nodes,
             helper.make_node("Conv", [mid_out, "W2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    inits = [_f("W1", W1), _f("B1", B1), _f("W2", W2), *mid_inits]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    if functions:
        add_functions(model, quantizer_functions())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def plain(pre="Div", post="Mul", lo=-2.0, hi=8.0, name="q_floor"):
    nodes, inits, cur = [], [_f("half", 0.5), _f("lo", lo), _f("hi", hi)], "c1"
    if pre == "Div":
        nodes.append(helper.make_node("Div", [cur, "s_in"], ["u"], name="pre"))
        inits.append(_f("s_in", STEP))
        cur = "u"
    elif pre == "Mul":
        nodes.append(helper.make_node("Mul", [cur, "s_in"], ["u"], name="pre"))
        inits.append(_f("s_in", np.float32(1) / STEP))
        cur = "u"
    nodes += [helper.make_node("Add", [cur, "half"], ["sh"], name="add_half"),
              helper.make_node("Floor", ["sh"], ["fl"], name=name),
              helper.make_node("Clip", ["fl", "lo", "hi"], ["k" if post else "q"], name="clip")]
    if post:
        nodes.append(helper.make_node(post, ["k", "s_out"], ["q"], name="post"))
        inits.append(_f("s_out", STEP))
    return nodes, inits


def qdq(dtype, zp, scale=0.05, clip=None, axis_scale=False):
    s = np.full(C, scale, np.float32) if axis_scale else np.float32(scale)
    inits = [_f("qs", s), _f("qzp", np.full(C, zp) if axis_scale else zp, dtype)]
    q_out = "qc" if clip else "qq"
    nodes = [helper.make_node("QuantizeLinear", ["c1", "qs", "qzp"], ["qq"], name="ql", axis=1)]
    if clip:
        inits += [_f("qlo", clip[0], dtype), _f("qhi", clip[1], dtype)]
        nodes.append(helper.make_node("Clip", ["qq", "qlo", "qhi"], ["qc"], name="qclip"))
    nodes.append(helper.make_node("DequantizeLinear", [q_out, "qs", "qzp"], ["q"], name="dql", axis=1))
    return nodes, inits


def recognized(model):
    ctx = PassContext(mode="exact")
    graph = PassManager([canonicalize, recognize_pqa]).run(gs.import_onnx(model), ctx)
    quantizers = [n for n in graph.nodes if n.domain == INTERNAL_DOMAIN and n.op == "Quantizer"]
    return graph, quantizers, ctx


def inputs(n=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, C_IN, HW, HW)).astype(np.float32) * 3


def assert_exact_t1(model, x, opt_level="all"):
    """Compile in exact mode; the SNN's first step must equal the ANN bit for bit."""
    compiled = compile_model(model, mode="exact")
    ann = make_session(model, opt_level, threads=1)
    snn = make_session(compiled.model, opt_level, threads=1)
    feeds = {"x": x, **initial_state_feeds(compiled.info, snn)}
    y_ann = ann.run(["y"], {"x": x})[0]
    y_snn = snn.run(["y"], feeds)[0]
    assert np.array_equal(y_ann, y_snn), f"max |diff| {np.abs(y_ann - y_snn).max()}"
    return compiled


# ------------------------------------------------------------------------------------------
# form 1: pmsm::PQA nodes from export_onnx (dynamo), pmsm::QCFS node
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_resnet_tiny():
    torch = pytest.importorskip("torch")
    from pmsm_compiler.training.activations import quantized_activations
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.zoo import build_model

    torch.manual_seed(0)
    net = build_model("resnet_tiny", act="pqa")
    lams = {}
    rng = np.random.default_rng(7)
    for name, m in quantized_activations(net):
        m.lam.data.fill_(float(rng.uniform(2, 10)))
        lams[name] = np.float32(m.lam.detach().item())
    return export_onnx(net, exporter="dynamo", pqa_as="node"), lams


def test_pqa_nodes_from_export(exported_resnet_tiny):
    model, lams = exported_resnet_tiny
    assert sum(n.domain == "pmsm" and n.op_type == "PQA" for n in model.graph.node) == len(lams) == 7
    graph, quantizers, _ = recognized(model)
    assert not any(n.domain == "pmsm" for n in graph.nodes)
    by_name = {q.name: q.attrs for q in quantizers}
    assert set(by_name) == set(lams)  # layer names = module paths
    for name, lam in lams.items():
        a = by_name[name]
        assert (a["kind"], a["levels"], a["k_min"], a["k_max"]) == ("PQA", 8, -2, 8)
        step = float(lam / np.float32(8))
        assert (a["pre_op"], a["pre_value"], a["post_op"], a["post_value"]) == ("Div", step, "Mul", step)
        assert a["lam"] == float(lam)
        assert a["source"] == "pmsm::PQA node"


def test_pqa_nodes_compile_exact_bit_identical(exported_resnet_tiny):
    model, _ = exported_resnet_tiny
    compiled = compile_model(model, mode="exact")
    x = np.random.default_rng(3).standard_normal((16, 3, 32, 32)).astype(np.float32)
    report = verify(model, compiled, x, mode="exact")
    assert report["passed"], report["failures"]
    assert report["level_agreement"] == 1.0 and report["max_abs_diff"] == 0.0
    assert all(p["mismatches"] == 0 for p in report["layers"])


def test_qcfs_node_is_kind_qcfs():
    lam = np.float32(4.0)
    model = build([helper.make_node("QCFS", ["c1", "lam"], ["q"], name="qcfs0", domain="pmsm", L=4)],
                  [_f("lam", lam)], functions=True)
    _, (q,), _ = recognized(model)
    a = q.attrs
    assert (a["kind"], a["levels"], a["k_min"], a["k_max"]) == ("QCFS", 4, 0, 4)
    assert a["lam"] == 4.0 and a["pre_value"] == 1.0 and a["source"] == "pmsm::QCFS node"
    compiled = compile_model(model, mode="exact")
    assert [l["neuron"] for l in compiled.layers] == ["IF"]


# ------------------------------------------------------------------------------------------
# form 2: plain ops
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pre,post", [("Div", "Mul"), ("Mul", "Mul"), ("Div", "Div"), ("", ""), ("Div", ""),
                                      ("", "Mul")])
def test_plain_ops_recognized_and_exact(pre, post):
    nodes, inits = plain(pre, post)
    model = build(nodes, inits)
    graph, quantizers, _ = recognized(model)
    assert len(quantizers) == 1
    a = quantizers[0].attrs
    assert (a["kind"], a["k_min"], a["k_max"], a["levels"]) == ("PQA", -2, 8, 8)
    assert a["pre_op"] == pre and a["post_op"] == post
    if pre == "Div":
        assert a["pre_value"] == float(STEP)
    elif pre == "Mul":
        assert a["pre_value"] == float(np.float32(1) / STEP)  # the multiplier itself, not re-inverted
    if post:
        assert a["post_value"] == float(STEP)
    # nothing of the pattern is left over
    ops = [n.op for n in graph.nodes]
    assert "Floor" not in ops and "Clip" not in ops and ops.count("Conv") == 2
    assert [n.op for n in graph.nodes if n.domain != INTERNAL_DOMAIN] == ["Conv", "Conv"]
    assert_exact_t1(model, inputs())


def test_plain_qcfs_clip_zero_to_L():
    nodes, inits = plain("Div", "Mul", lo=0.0, hi=8.0)
    _, (q,), _ = recognized(build(nodes, inits))
    a = q.attrs
    assert (a["kind"], a["k_min"], a["k_max"], a["levels"]) == ("QCFS", 0, 8, 8)
    assert a["lam"] == pytest.approx(float(STEP) * 8, rel=1e-7)
    compiled = compile_model(build(nodes, inits), mode="exact")
    assert [(l["neuron"], l["s_min"], l["s_max"]) for l in compiled.layers] == [("IF", 0, 1)]


def test_plain_leading_scale_used_elsewhere_stays_a_separate_op():
    """If the Div's output forks, the Div is not part of the quantizer (θ = 1 on its output)."""
    nodes, inits = plain("Div", "Mul")
    model = build(nodes + [helper.make_node("Relu", ["u"], ["extra"], name="other_use")], inits)
    model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", C, HW, HW]))
    graph, (q,), _ = recognized(model)
    assert q.attrs["pre_op"] == "" and q.inputs[0].name == "u"
    assert "Div" in [n.op for n in graph.nodes]
    assert_exact_t1(model, inputs())


# ------------------------------------------------------------------------------------------
# form 3: QuantizeLinear → [Clip] → DequantizeLinear
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,zp,clip,k_range", [
    (np.int8, 3, None, (-131, 124)),
    (np.uint8, 0, None, (0, 255)),
    (np.uint8, 10, None, (-10, 245)),
    (np.int8, -2, (-10, 40), (-8, 42)),
])
def test_qdq_recognized_and_exact(dtype, zp, clip, k_range):
    nodes, inits = qdq(dtype, zp, clip=clip)
    model = build(nodes, inits)
    graph, (q,), _ = recognized(model)
    a = q.attrs
    assert a["kind"] == "QDQ" and (a["k_min"], a["k_max"]) == k_range
    assert (a["pre_op"], a["pre_value"], a["post_op"], a["post_value"]) == (
        "Div", float(np.float32(0.05)), "DequantizeLinear", float(np.float32(0.05)))
    assert (a["rounding"], a["post_zero_point"], a["post_qtype"]) == ("half_even", zp, np.dtype(dtype).name)
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op for n in graph.nodes}
    compiled = assert_exact_t1(model, inputs(32))
    assert [(l["neuron"], l["op"], l["s_min"], l["s_max"]) for l in compiled.layers] == [
        ("AIF", "AIFHalfEven", *k_range)]


def assert_ties_round_to_even(quantizer_nodes, inits, s):
    """x [N, 5] → ``quantizer_nodes`` (x → dq) → Gemm(I) → y in exact mode, verified on inputs with
    x/s = 0.5, 2.5, −1.5 (ties where half-even ≠ half-up), 1.5 (a tie where both give 2) and 1.2:
    every level and output identical."""
    graph = helper.make_graph([*quantizer_nodes, helper.make_node("Gemm", ["dq", "Wg"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [*inits, _f("Wg", np.eye(5))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    compiled = compile_model(model, mode="exact")
    x = np.array([[0.125, 0.625, -0.375, 0.375, 0.3]], np.float32)
    assert np.count_nonzero(np.rint(x / s) != np.floor(x / s + np.float32(0.5))) == 3
    report = verify(model, compiled, x, mode="exact")
    assert report["passed"] and report["layers"][0]["mismatches"] == 0 and report["max_abs_diff"] == 0.0


def test_qdq_ties_round_to_even_like_quantize_linear():
    """On an exact tie (x/s = k + ½) QuantizeLinear rounds to even; so does its neuron
    (pmsm::AIFHalfEven), where the PQA neuron (half up) would differ on three of these five."""
    s = np.float32(0.25)
    assert_ties_round_to_even([helper.make_node("QuantizeLinear", ["x", "qs", "qzp"], ["qq"], name="ql"),
                               helper.make_node("DequantizeLinear", ["qq", "qs", "qzp"], ["dq"], name="dql")],
                              [_f("qs", s), _f("qzp", 0, np.int8)], s)


# ------------------------------------------------------------------------------------------
# form 4: Round-based fake quantization (torch.round in QAT code)
# ------------------------------------------------------------------------------------------

def round_quant(pre="Div", post="Mul", lo=-8.0, hi=7.0, clip_first=False):
    """c1 → [pre s] → Round → Clip(lo, hi) → [post s] → q (or Clip before Round)."""
    nodes, inits, cur = [], [_f("lo", lo), _f("hi", hi)], "c1"
    if pre:
        nodes.append(helper.make_node(pre, [cur, "s_in"], ["u"], name="pre"))
        inits.append(_f("s_in", STEP if pre == "Div" else np.float32(1) / STEP))
        cur = "u"
    first, second = (("Clip", [cur, "lo", "hi"]), ("Round", ["r0"])) if clip_first else \
        (("Round", [cur]), ("Clip", ["r0", "lo", "hi"]))
    nodes += [helper.make_node(first[0], first[1], ["r0"], name=first[0].lower()),
              helper.make_node(second[0], second[1], ["k" if post else "q"], name=second[0].lower())]
    if post:
        nodes.append(helper.make_node(post, ["k", "s_out"], ["q"], name="post"))
        inits.append(_f("s_out", STEP))
    return nodes, inits


@pytest.mark.parametrize("pre,post,clip_first", [("Div", "Mul", False), ("Mul", "Mul", False), ("Div", "Div", False),
                                                 ("", "", False), ("Div", "Mul", True), ("Mul", "", True)])
def test_round_fake_quantization_recognized_and_exact(pre, post, clip_first):
    nodes, inits = round_quant(pre, post, clip_first=clip_first)
    model = build(nodes, inits)
    graph, (q,), _ = recognized(model)
    a = q.attrs
    assert (a["kind"], a["k_min"], a["k_max"], a["rounding"]) == ("PQA", -8, 7, "half_even")
    assert (a["pre_op"], a["post_op"]) == (pre, post)
    assert [n.op for n in graph.nodes if n.domain != INTERNAL_DOMAIN] == ["Conv", "Conv"]
    compiled = assert_exact_t1(model, inputs(32))
    assert [(l["neuron"], l["op"], l["s_min"], l["s_max"]) for l in compiled.layers] == [("AIF", "AIFHalfEven", -8, 7)]
    folded = compile_model(model, mode="folded")
    assert verify(model, folded, inputs(32))["passed"]


def test_round_fake_quantization_unsigned_is_no_qcfs():
    """Clip(0, 15) after a Round: a multi-level unsigned quantizer rounding half to even, not QCFS."""
    nodes, inits = round_quant("Div", "Mul", lo=0.0, hi=15.0)
    compiled = assert_exact_t1(build(nodes, inits), inputs(32))
    assert [(l["kind"], l["neuron"], l["s_min"], l["s_max"]) for l in compiled.layers] == [("PQA", "AIF", 0, 15)]


def test_round_fake_quantization_ties_round_to_even():
    """x/s = k + ½ exactly: Round (and its neuron, pmsm::AIFHalfEven) round to even."""
    s = np.float32(0.25)
    assert_ties_round_to_even([helper.make_node("Div", ["x", "s"], ["u"], name="pre"),
                               helper.make_node("Round", ["u"], ["r"], name="round"),
                               helper.make_node("Clip", ["r", "lo", "hi"], ["k"], name="clip"),
                               helper.make_node("Mul", ["k", "s"], ["dq"], name="post")],
                              [_f("s", s), _f("lo", -8.0), _f("hi", 7.0)], s)


def test_the_straight_through_round_is_round_bit_for_bit():
    """(round(u) − u) + u, as LSQ's STE exports, equals round(u) in float32 for every finite u
    (Sterbenz: the difference is exact): checked in onnxruntime on values over every exponent,
    the ties k + ½ and the integers, with numpy's rint as the second opinion."""
    rng = np.random.default_rng(0)
    mags = np.float32(2.0) ** rng.integers(-30, 40, 20000).astype(np.float32)
    u = np.concatenate([rng.uniform(-1, 1, 20000).astype(np.float32) * mags,
                        np.arange(-50, 50, dtype=np.float32) + np.float32(0.5),
                        np.arange(-50, 50, dtype=np.float32),
                        np.nextafter(np.arange(-8, 8, dtype=np.float32) + np.float32(0.5), np.float32(9))]).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Round", ["u"], ["r"]), helper.make_node("Sub", ["r", "u"], ["d"]),
                               helper.make_node("Add", ["d", "u"], ["ste"])], "g",
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT, [len(u)])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, [len(u)]),
                               helper.make_tensor_value_info("ste", TensorProto.FLOAT, [len(u)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    for level in ("disable", "all"):
        r, ste = make_session(model, level, threads=1).run(None, {"u": u})
        assert np.array_equal(r, ste) and np.array_equal(r, np.rint(u)), level


def test_round_with_its_straight_through_estimator_is_one_quantizer():
    nodes, inits = round_quant("Div", "Mul")
    rnd = next(n for n in nodes if n.op_type == "Round")
    rnd.output[0] = "r_raw"
    ste = [helper.make_node("Sub", ["r_raw", "u"], ["r_minus_u"], name="ste_sub"),
           helper.make_node("Add", ["u", "r_minus_u"], ["r0"], name="ste_add")]  # either operand order
    model = build(nodes[:2] + ste + nodes[2:], inits)
    graph, (q,), _ = recognized(model)
    assert q.attrs["pre_op"] == "Div" and "straight-through" in q.attrs["source"]
    assert [n.op for n in graph.nodes if n.domain != INTERNAL_DOMAIN] == ["Conv", "Conv"]
    assert_exact_t1(model, inputs(32))
    # u read elsewhere too: the quantizer reads u, the Div before it stays an op of its own
    leak = build(nodes[:2] + ste + nodes[2:] + [helper.make_node("Relu", ["u"], ["leak"], name="leak")], inits)
    leak.graph.output.append(helper.make_tensor_value_info("leak", TensorProto.FLOAT, ["N", C, HW, HW]))
    graph, (q,), _ = recognized(leak)
    assert q.attrs["pre_op"] == "" and q.inputs[0].name == "u"
    assert [n.op for n in graph.nodes if n.domain != INTERNAL_DOMAIN] == ["Conv", "Div", "Relu", "Conv"]
    assert_exact_t1(leak, inputs(32))
    # the difference read elsewhere: no straight-through estimator (Round → Sub is no quantizer)
    fork = build(nodes[:2] + ste + nodes[2:] + [helper.make_node("Relu", ["r_minus_u"], ["leak"], name="leak")], inits)
    fork.graph.output.append(helper.make_tensor_value_info("leak", TensorProto.FLOAT, ["N", C, HW, HW]))
    graph, quantizers, ctx = recognized(fork)
    assert quantizers == [] and "Round" in [n.op for n in graph.nodes]
    assert any("Round 'round' is no quantizer" in note for note in ctx.notes)


def test_a_bare_round_on_spikes_is_refused_with_the_quantizer_hint():
    nodes, inits = plain("Div", "Mul")
    model = build(nodes + [helper.make_node("Round", ["q"], ["qr"], name="bare_round")], inits, mid_out="qr")
    # wrap_nonlinear's refusal, which lists every op that has a wrapper after its reason (the list
    # grows with the ops; the quantizer-pattern reasons of ``_refusal`` stay under 400 characters):
    # one line, the op and the hint first
    with pytest.raises(UnsupportedModelError) as info:
        compile_model(model, mode="exact")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Round 'bare_round' is non-linear in spiking input and has no temporal wrapper "
                              "(Round quantizers need an integer Clip); supported: ")


def test_a_floor_on_the_network_input_is_an_op_not_a_refusal():
    """floor(x·255)/255 before the first Conv (input preprocessing) of a model with a quantizer: it
    is the same at every step, kept as an op; a Floor after a quantizer that is no quantizer pattern
    is still refused with the pattern's reason."""
    nodes, inits = plain("Div", "Mul")
    pre = [helper.make_node("Mul", ["x", "c255"], ["x255"], name="to_255"),
           helper.make_node("Floor", ["x255"], ["xf"], name="floor_input"),
           helper.make_node("Div", ["xf", "c255"], ["x8"], name="to_unit"),
           helper.make_node("Conv", ["x8", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    model = build(nodes, inits + [_f("c255", 255.0)])
    rest = list(model.graph.node)[1:]  # conv1 on x, replaced by the preprocessing and conv1 on x8
    del model.graph.node[:]
    model.graph.node.extend(pre + rest)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph, (q,), ctx = recognized(model)
    assert "Floor" in [n.op for n in graph.nodes] and any("Floor 'floor_input'" in note for note in ctx.notes)
    assert_exact_t1(model, inputs(16))
    folded = compile_model(model, mode="folded")
    assert verify(model, folded, inputs(16))["passed"]
    # after the quantizer: spike traffic, and no quantizer pattern
    after = build(nodes + [helper.make_node("Floor", ["q"], ["qf"], name="floor_spikes")], inits, mid_out="qf")
    assert "Floor 'floor_spikes': not preceded by Add(x, 0.5)" in _refusal(after)


def test_a_round_without_a_clip_is_left_alone():
    graph, quantizers, ctx = recognized(build([helper.make_node("Round", ["c1"], ["q"], name="round")], []))
    assert quantizers == [] and "Round" in [n.op for n in graph.nodes]
    assert any("Round 'round' is no quantizer" in note for note in ctx.notes)


@pytest.mark.parametrize("kwargs,reason", [
    ({"lo": -2.5}, "clip min -2.5 is not an integer level"),
    ({"hi": np.inf}, "clip max inf is not an integer level"),
    ({"lo": 1.0}, "clip range [1, 7] must satisfy k_min ≤ 0 < k_max"),
])
def test_a_round_pattern_that_does_not_qualify_is_refused_with_its_reason(kwargs, reason):
    """The model's only quantizer: its reason is the refusal (not "no quantized activation")."""
    nodes, inits = round_quant("Div", "Mul", **kwargs)
    message = _refusal(build(nodes, inits))
    assert "Round 'round'" in message and reason in message


def test_a_round_pattern_that_does_not_qualify_on_the_input_is_an_op():
    """Before the first quantizer (values computed from the network input alone) a Round with a
    Clip that is no quantizer (here a fractional bound) stays an op, the same at every step."""
    nodes, inits = plain("Div", "Mul")
    pre = [helper.make_node("Round", ["x"], ["xr"], name="round_input"),
           helper.make_node("Clip", ["xr", "in_lo", "in_hi"], ["xc"], name="clip_input"),
           helper.make_node("Conv", ["xc", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    model = build(nodes, inits + [_f("in_lo", -2.5), _f("in_hi", 2.5)])
    rest = list(model.graph.node)[1:]
    del model.graph.node[:]
    model.graph.node.extend(pre + rest)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph, (q,), ctx = recognized(model)
    assert q.name == "q_floor" and "Round" in [n.op for n in graph.nodes]
    assert any("Round 'round_input' reads values computed from the network input alone" in n for n in ctx.notes)
    assert_exact_t1(model, inputs(16))


# ------------------------------------------------------------------------------------------
# refusals: one clear line, naming the op
# ------------------------------------------------------------------------------------------

def _refusal(model):
    with pytest.raises(UnsupportedModelError) as info:
        compile_model(model, mode="exact")
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_refuses_forked_inner_tensor():
    nodes, inits = plain("Div", "Mul")
    # the tensor between Add 0.5 and Floor is also read elsewhere: the pattern cannot be collapsed
    model = build(nodes + [helper.make_node("Relu", ["sh"], ["leak"], name="leak")], inits)
    model.graph.output.append(helper.make_tensor_value_info("leak", TensorProto.FLOAT, ["N", C, HW, HW]))
    message = _refusal(model)
    assert "Floor 'q_floor'" in message and "fork" in message
    # the same through the pass alone: PassRefusal, and the note carries the reason
    with pytest.raises(PassRefusal, match="fork"):
        recognized(model)


def test_refuses_forked_floor_output():
    nodes, inits = plain("Div", "Mul")
    model = build(nodes + [helper.make_node("Relu", ["fl"], ["leak"], name="leak")], inits)
    model.graph.output.append(helper.make_tensor_value_info("leak", TensorProto.FLOAT, ["N", C, HW, HW]))
    message = _refusal(model)
    assert "Floor 'q_floor'" in message and "fork" in message


def test_refuses_non_integer_clip_bounds():
    nodes, inits = plain("Div", "Mul", lo=-2.5, hi=8.0)
    message = _refusal(build(nodes, inits))
    assert "Floor 'q_floor'" in message and "-2.5 is not an integer level" in message


def test_refuses_clip_range_above_zero():
    nodes, inits = plain("Div", "Mul", lo=1.0, hi=8.0)
    message = _refusal(build(nodes, inits))
    assert "[1, 8]" in message and "k_min ≤ 0 < k_max" in message


def test_refuses_per_axis_qdq_scale():
    nodes, inits = qdq(np.int8, 0, axis_scale=True)
    message = _refusal(build(nodes, inits))
    assert "QuantizeLinear 'ql'" in message and "per-tensor" in message


def test_refusal_names_its_own_reason_not_other_notes():
    """The refusal carries the reason recorded for the unmapped node, with the advice, and not the
    notes that earlier passes left (here fold_weight_quantization's, for a weight stored as int8)."""
    nodes, inits = qdq(np.int8, 0, axis_scale=True)
    model = build(nodes, inits)
    w2 = next(t for t in model.graph.initializer if t.name == "W2")
    model.graph.initializer.remove(w2)
    model.graph.initializer.extend([_f("W2q", np.ones((C, C, 3, 3)), np.int8), _f("W2s", 0.01)])
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", ["W2q", "W2s"], ["W2"], name="w2_dq"))
    message = _refusal(model)
    assert message.startswith("cannot map quantizer op(s): QuantizeLinear 'ql': only per-tensor (scalar) scales")
    assert "quantize this activation per tensor" in message and "fold_weight_quantization" not in message
