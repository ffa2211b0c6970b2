"""drop_implied_clamps: a Relu / Clip in front of a quantizer whose range implies it is removed.

Each test builds a tiny graph ``x → clamp(s) → quantizer → y``, runs the front passes,
recognize_pqa and the pass, and checks which clamps went. Then the ANN with exactly those
clamps removed is compared with the original in onnxruntime (Q/DQ as float simulation), bit for
bit, on inputs that probe the bounds: the bounds themselves, values just beyond them, exact ties
of the rounding, ±inf, ±1e30 and NaN. For a clamp the pass keeps, removing it must change some
output: the refusal is needed.
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
from pmsm_compiler.passes import FRONT, PassContext, PassManager, drop_implied_clamps, recognize_pqa
from pmsm_compiler.passes.drop_implied_clamps import quantizer_level
from pmsm_compiler.sessions import make_session
from pmsm_compiler.verify import verify

OPSET = 20
SHAPE = [1, 64]


def _f(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _model(nodes, inits, functions=False):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    if functions:
        add_functions(model, quantizer_functions())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def relu(src, dst, name="relu"):
    return [helper.make_node("Relu", [src], [dst], name=name)], []


def clip(src, dst, lo=None, hi=None, name="clip"):
    inputs, inits = [src], []
    for bound, value in (("lo", lo), ("hi", hi)):
        if value is None:
            inputs.append("")
        else:
            inputs.append(f"{name}.{bound}")
            inits.append(_f(f"{name}.{bound}", value))
    while inputs[-1] == "":
        inputs.pop()
    return [helper.make_node("Clip", inputs, [dst], name=name)], inits


def qdq(src, dst, scale, zp, dtype, int_clip=None, p=""):
    """QuantizeLinear → [Clip(lo, hi) on the integers, as Brevitas exports] → DequantizeLinear;
    tensor and node names prefixed with ``p``."""
    inits = [_f(p + "s", scale), _f(p + "zp", zp, dtype)]
    nodes = [helper.make_node("QuantizeLinear", [src, p + "s", p + "zp"], [p + "q"], name=p + "ql")]
    q = p + "q"
    if int_clip is not None:
        inits += [_f(p + "qlo", int_clip[0], dtype), _f(p + "qhi", int_clip[1], dtype)]
        nodes.append(helper.make_node("Clip", [q, p + "qlo", p + "qhi"], [p + "qc"], name=p + "qclip"))
        q = p + "qc"
    nodes.append(helper.make_node("DequantizeLinear", [q, p + "s", p + "zp"], [dst], name=p + "dql"))
    return nodes, inits


def pqa(src, dst, lam=4.0, levels=8, alpha=-0.25, beta=1.0):
    return [helper.make_node("PQA", [src, "lam"], [dst], domain="pmsm", name="pqa", L=levels, alpha=alpha,
                             beta=beta)], [_f("lam", lam)]


def chain(*parts, functions=False):
    nodes, inits = [], []
    for ns, ins in parts:
        nodes += ns
        inits += ins
    return _model(nodes, inits, functions)


def run_pass(model):
    ctx = PassContext(mode="exact")
    graph = PassManager(FRONT + [recognize_pqa, drop_implied_clamps]).run(gs.import_onnx(model), ctx)
    kept = sorted(n.name for n in graph.nodes if n.op in ("Relu", "Clip") and n.name != "qclip")
    return kept, ctx


def without(model, names):
    """The model with the named single-input-used nodes removed (their readers read their input)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in [n for n in out.graph.node if n.name in names]:
        for other in out.graph.node:
            other.input[:] = [node.input[0] if t == node.output[0] else t for t in other.input]
        out.graph.node.remove(node)
    return out


def outputs(model, x):
    return make_session(model, "disable", qdq_fusion=False).run(None, {"x": x})[0]


def probe(points, scale):
    """The clamp bounds, their float32 neighbours, rounding ties around them, extremes and NaN."""
    values = [0.0, -0.0, np.inf, -np.inf, 1e30, -1e30, np.nan]
    for p in points:
        p32 = np.float32(p)
        values += [p32, np.nextafter(p32, np.float32(np.inf)), np.nextafter(p32, np.float32(-np.inf)),
                   p32 + np.float32(scale) / 2, p32 - np.float32(scale) / 2, p32 + 3 * np.float32(scale),
                   p32 - 3 * np.float32(scale)]
    values = np.array(values, np.float32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32) * np.float32(200 * scale)
    x.reshape(-1)[:values.size] = values
    return x


def assert_same_outputs(model, removed, x):
    a, b = outputs(model, x), outputs(without(model, removed), x)
    assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("name,parts,removed", [
    # onnxruntime uint8 after a ReLU: zp 0, levels 0..255
    ("uint8 zp 0", lambda: (relu("x", "r"), qdq("r", "y", 0.02, 0, np.uint8)), ["relu"]),
    # onnxruntime int8, ActivationSymmetric False, after a ReLU: zp −128, levels 0..255
    ("int8 zp -128", lambda: (relu("x", "r"), qdq("r", "y", 0.02, -128, np.int8)), ["relu"]),
    # Brevitas QuantReLU: Relu → Q → Clip(0, 15) → DQ
    ("brevitas 4 bit", lambda: (relu("x", "r"), qdq("r", "y", 0.1, 0, np.uint8, int_clip=(0, 15))), ["relu"]),
    # Relu6 exported as Clip(0, 6), scale 6/255: level(6) = 255
    ("relu6 uint8", lambda: (clip("x", "r", 0.0, 6.0), qdq("r", "y", 6 / 255, 0, np.uint8)), ["clip"]),
    ("relu then relu6", lambda: (relu("x", "a"), clip("a", "r", 0.0, 6.0), qdq("r", "y", 6 / 255, 0, np.uint8)),
     ["clip", "relu"]),
    # an upper bound only, past the last level
    ("clip max only", lambda: (clip("x", "r", None, 100.0), qdq("r", "y", 0.5, 0, np.int8)), ["clip"]),
    # half to even: level(−127.5·s) = rint(−127.5) = −128 = k_min (half up would give −127)
    ("tie to even at k_min", lambda: (clip("x", "r", -127.5 * 0.5, 63.5), qdq("r", "y", 0.5, 0, np.int8)), ["clip"]),
])
def test_implied_clamps_are_removed(name, parts, removed):
    model = chain(*parts())
    kept, ctx = run_pass(model)
    assert kept == []
    assert f"{len(removed)} Relu/Clip node(s) removed" in ctx.notes[-1]
    scale = float(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "s")))
    assert_same_outputs(model, removed, probe([0.0, 6.0, -63.75, 63.5, 100.0, 1.5], scale))


@pytest.mark.parametrize("name,parts,note", [
    # ReLU before a symmetric int8 quantizer (onnxruntime, ActivationSymmetric True): level(0) = 0 > −128
    ("symmetric int8", lambda: (relu("x", "r"), qdq("r", "y", 0.02, 0, np.int8)),
     "Relu 'relu' before quantizer 'ql' kept: the quantizer's level of its min 0 is 0 > k_min = -128"),
    # Relu6 before a uint8 quantizer whose range goes past 6: level(6) = 191 < 255
    ("relu6 wide range", lambda: (clip("x", "r", 0.0, 6.0), qdq("r", "y", 8 / 255, 0, np.uint8)),
     "Clip 'clip' before quantizer 'ql' kept: the quantizer's level of its max 6 is 191 < k_max = 255"),
    # half to even: level(−126.5·s) = −126 > −128
    ("tie above k_min", lambda: (clip("x", "r", -126.5 * 0.5), qdq("r", "y", 0.5, 0, np.int8)),
     "level of its min -63.25 is -126 > k_min = -128"),
])
def test_clamps_that_change_levels_are_kept(name, parts, note):
    model = chain(*parts())
    kept, ctx = run_pass(model)
    assert kept == [model.graph.node[0].name]
    assert any(note in n for n in ctx.notes), ctx.notes
    scale = float(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "s")))
    x = probe([0.0, 6.0, -63.25], scale)
    assert not np.array_equal(outputs(model, x), outputs(without(model, kept), x), equal_nan=True)


def test_pqa_levels_round_half_up():
    """pmsm::PQA, λ = 4, L = 8 (θ = 0.5), levels −2..8: Clip(−1, 4) is implied (level(−1) = floor(−2 + ½)
    = −2, level(4) = 8); Clip(−0.75, 4) is not (level(−0.75) = floor(−1.5 + ½) = −1)."""
    model = chain(clip("x", "r", -1.0, 4.0), pqa("r", "y"), functions=True)
    kept, _ = run_pass(model)
    assert kept == []
    x = probe([-1.0, 4.0, -1.25, -0.75], 0.5)
    assert_same_outputs(model, ["clip"], x)
    model = chain(clip("x", "r", -0.75, 4.0), pqa("r", "y"), functions=True)
    kept, ctx = run_pass(model)
    assert kept == ["clip"] and "level of its min -0.75 is -1 > k_min = -2" in ctx.notes[-1]
    assert not np.array_equal(outputs(model, x), outputs(without(model, ["clip"]), x), equal_nan=True)


def test_level_follows_the_quantizers_rounding():
    half_even = {"pre_op": "Div", "pre_value": 0.5, "rounding": "half_even"}
    half_up = dict(half_even, rounding="half_up")
    assert quantizer_level(-63.75, half_even) == -128 and quantizer_level(-63.75, half_up) == -127
    assert quantizer_level(1.25, half_even) == 2 and quantizer_level(1.25, half_up) == 3
    assert quantizer_level(3.0, {"pre_op": "Mul", "pre_value": 2.0, "rounding": "half_up"}) == 6
    assert quantizer_level(-np.inf, half_even) == -np.inf


def test_a_clamp_with_other_readers_is_kept():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             *qdq("r", "qy", 0.02, 0, np.uint8)[0],
             helper.make_node("Add", ["qy", "r"], ["y"], name="add")]
    model = _model(nodes, qdq("r", "qy", 0.02, 0, np.uint8)[1])
    kept, ctx = run_pass(model)
    assert kept == ["relu"] and "its output 'r' has other readers" in ctx.notes[-1]


def test_a_non_constant_bound_is_kept():
    nodes = [helper.make_node("Neg", ["x"], ["nx"], name="neg"),
             helper.make_node("ReduceMin", ["nx"], ["m"], name="min", keepdims=0),
             helper.make_node("Clip", ["x", "m"], ["r"], name="clip"),
             *qdq("r", "y", 0.02, 0, np.uint8)[0]]
    model = _model(nodes, qdq("r", "y", 0.02, 0, np.uint8)[1])
    kept, ctx = run_pass(model)
    assert kept == ["clip"] and "its min is not a constant number" in ctx.notes[-1]


def test_compiled_without_a_temporal_wrapper_and_exact():
    """Conv → Relu → Q/DQ (uint8) → Conv: the Relu between two neurons' traffic used to become a
    temporal wrapper; dropped, the SNN has none and is still bit-identical at T = 1."""
    rng = np.random.default_rng(3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])
    a_nodes, a_inits = qdq("x", "xa", 0.05, 0, np.int8, p="in_")
    b_nodes, b_inits = qdq("r", "ra", 0.03, 0, np.uint8)
    nodes = a_nodes + [helper.make_node("Conv", ["xa", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["c1"], ["r"], name="relu")] + b_nodes + [
        helper.make_node("Conv", ["ra", "W2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    inits = [*a_inits, *b_inits,
             _f("W1", rng.standard_normal((4, 3, 3, 3))), _f("W2", rng.standard_normal((4, 4, 3, 3)))]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for mode in ("exact", "folded"):
        compiled = compile_model(model, mode=mode)
        assert compiled.info["wrappers"] == []
        assert not any(n.op_type == "Relu" for n in compiled.model.graph.node)
        report = verify(model, compiled, rng.standard_normal((16, 3, 6, 6)).astype(np.float32), mode=mode)
        assert report["passed"], report["failures"]
        if mode == "exact":
            assert report["max_abs_diff"] == 0 and report["level_agreement"] == 1.0
