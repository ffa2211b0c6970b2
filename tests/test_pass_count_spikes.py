"""count_spikes: the in-graph per-layer spike counter ``pmsm_spike_counts`` (int64 [batch, layers]).

The counter must equal Σ_neurons |k| of each layer's spike tensor (exposed with
``verify.with_outputs``) computed in numpy, at every step with the state carried, in both modes,
for signed AIF layers (Abs needed), non-negative layers (IF from QCFS; AIF from uint8 QDQ) and on
both code paths: the float32 sum (exact while neurons·max|k| < 2^24) and the int64 path, forced
here by monkeypatching ``FLOAT_EXACT_LIMIT``. Counts are integers, so every comparison is exact.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.onnx_utils import with_outputs
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.passes import COUNTS_OUTPUT
from pmsm_compiler.sessions import make_session
from pmsm_compiler.verify import initial_state_feeds

# the module, not the function of the same name that pmsm_compiler.passes re-exports
count_spikes_module = importlib.import_module("pmsm_compiler.passes.count_spikes")
OPSET = 20
STEPS = 5
BATCH = 3


def _f(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def net():
    """x → conv1 → PQA (k −2..8) → conv2 → QCFS (IF) → conv3 → QDQ uint8 (k 0..255) → GAP → Gemm."""
    rng = np.random.default_rng(21)  # the same weights on every call
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("PQA", ["c1", "lam1"], ["a1"], name="pqa", domain="pmsm", L=8, alpha=-0.25, beta=1.0),
        helper.make_node("Conv", ["a1", "W2"], ["c2"], name="conv2", strides=[2, 2], kernel_shape=[2, 2]),
        helper.make_node("QCFS", ["c2", "lam2"], ["a2"], name="qcfs", domain="pmsm", L=4),
        helper.make_node("Conv", ["a2", "W3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c3", "qs", "qzp"], ["q3"], name="quant"),
        helper.make_node("DequantizeLinear", ["q3", "qs", "qzp"], ["a3"], name="dequant"),
        helper.make_node("GlobalAveragePool", ["a3"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "WFC"], ["y"], name="fc"),
    ]
    inits = [_f("W1", rng.standard_normal((6, 3, 3, 3))), _f("lam1", 4.7),
             _f("W2", rng.standard_normal((6, 6, 2, 2)) * 0.5), _f("lam2", 3.0),
             _f("W3", rng.standard_normal((4, 6, 3, 3)) * 0.5), _f("qs", 0.02), _f("qzp", 0, np.uint8),
             _f("WFC", rng.standard_normal((4, 5)))]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


X = (np.random.default_rng(0).standard_normal((BATCH, 3, 8, 8)) * 2).astype(np.float32)


def counts_over_steps(compiled, steps=STEPS):
    """[(counts from the graph, counts computed in numpy from the spike tensors)] for each step."""
    info = compiled.info
    spikes = [l["spike_tensor"] for l in info["layers"]]
    sess = make_session(with_outputs(compiled.model, spikes), "all", threads=1)
    meta = {o.name: o for o in sess.get_outputs()}
    assert meta[COUNTS_OUTPUT].type == "tensor(int64)"
    names = list(meta)
    states = initial_state_feeds(info, sess)
    result = []
    for _ in range(steps):
        out = dict(zip(names, sess.run(None, {"x": X, **states})))
        states = {s["input"]: out[s["output"]] for s in info["states"]}
        counts = out[COUNTS_OUTPUT]
        expected = np.zeros((BATCH, len(spikes)), np.int64)
        for layer in info["layers"]:
            k = out[layer["spike_tensor"]]
            assert np.array_equal(k, np.round(k)), layer["name"]
            expected[:, layer["count_index"]] = np.abs(k.astype(np.int64)).reshape(BATCH, -1).sum(1)
        result.append((counts, expected, out))
    return result


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_counts_equal_sum_of_abs_spikes_over_steps(mode):
    compiled = compile_model(net(), mode=mode)
    layers = compiled.info["layers"]
    assert [l["neuron"] for l in layers] == ["AIF", "IF", "AIF"]
    assert [(l["s_min"], l["s_max"]) for l in layers] == [(-2, 8), (0, 1), (0, 255)]
    assert [l["count_index"] for l in layers] == [0, 1, 2]
    assert compiled.info["spike_counts_output"] == COUNTS_OUTPUT
    assert all(l["count_dtype"] == "float32-exact" for l in layers)
    out_meta = {o.name: o for o in compiled.model.graph.output}[COUNTS_OUTPUT]
    assert out_meta.type.tensor_type.elem_type == TensorProto.INT64
    saw_negative = False
    for counts, expected, out in counts_over_steps(compiled):
        assert counts.dtype == np.int64 and counts.shape == (BATCH, 3)
        np.testing.assert_array_equal(counts, expected)
        saw_negative |= bool((out[layers[0]["spike_tensor"]] < 0).any())
        assert (counts > 0).all()
    assert saw_negative  # the signed layer did emit negative spikes: Abs mattered


def test_abs_only_for_signed_layers():
    compiled = compile_model(net(), mode="folded")
    abs_nodes = [n.name for n in compiled.model.graph.node if n.op_type == "Abs"]
    assert len(abs_nodes) == 1 and abs_nodes[0].startswith("pqa/")


@pytest.mark.parametrize("limit,expected_dtypes", [
    (1, ["int64", "int64", "int64"]),  # every layer on the int64 path
    (400, ["int64", "float32-exact", "int64"]),  # mixed: pqa 384·8, qcfs 96·1, qdq 256·255
])
@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_int64_path_gives_same_counts(monkeypatch, limit, expected_dtypes, mode):
    reference = [c for c, _, _ in counts_over_steps(compile_model(net(), mode=mode))]
    monkeypatch.setattr(count_spikes_module, "FLOAT_EXACT_LIMIT", limit)
    compiled = compile_model(net(), mode=mode)
    assert [l["count_dtype"] for l in compiled.info["layers"]] == expected_dtypes
    assert any(n.op_type == "Cast" and helper.get_attribute_value(n.attribute[0]) == TensorProto.INT64
               and n.input[0].endswith("flat_spikes") for n in compiled.model.graph.node)
    for (counts, expected, _), ref in zip(counts_over_steps(compiled), reference):
        assert counts.dtype == np.int64 and counts.shape == (BATCH, 3)
        np.testing.assert_array_equal(counts, expected)
        np.testing.assert_array_equal(counts, ref)


def test_layer_neuron_counts_recorded():
    compiled = compile_model(net(), mode="folded")
    assert [l["neurons"] for l in compiled.info["layers"]] == [6 * 8 * 8, 6 * 4 * 4, 4 * 4 * 4]
    assert [l["shape"] for l in compiled.info["layers"]] == [[6, 8, 8], [6, 4, 4], [4, 4, 4]]


# ------------------------------------------------------------------------------------------------
# pmsm_spike_counters: every counting rule, against numpy on the same spike tensors
# ------------------------------------------------------------------------------------------------

from pmsm_compiler.ops.counters import COUNTERS, spike_counters  # noqa: E402
from pmsm_compiler.passes import COUNTERS_OUTPUT  # noqa: E402


def test_numpy_reference_by_hand():
    # s_min −2, s_max 8: sample 0 = [−2, −2, 0, 1, 8, 3], sample 1 = [0, 0, 0, 0, 0, −1]
    k = np.array([[-2, -2, 0, 1, 8, 3], [0, 0, 0, 0, 0, -1]], np.float32).reshape(2, 1, 2, 3)
    got = spike_counters(k, -2, 8)
    # spikes Σ|k| 16 and 1; events 5 and 1; positive 12 and 0; negative 4 and 1;
    # at −2: 2 and 0; at 8: 1 and 0; at 0: 1 and 5
    assert COUNTERS == ("spikes", "events", "positive", "negative", "at_lower_cap", "at_upper_cap", "at_zero")
    assert got.dtype == np.int64
    assert got.tolist() == [[16, 5, 12, 4, 2, 1, 1], [1, 1, 0, 1, 0, 0, 5]]
    with pytest.raises(ValueError):
        spike_counters(np.array([[0.5]]), 0, 1)


def counters_over_steps(compiled, steps=STEPS):
    """[(counters from the graph, counters computed in numpy from the spike tensors, outputs)]."""
    result = []
    for counts, _, out in counts_over_steps(compiled, steps):
        expected = np.zeros((BATCH, len(compiled.info["layers"]), len(COUNTERS)), np.int64)
        for layer in compiled.info["layers"]:
            expected[:, layer["count_index"]] = spike_counters(out[layer["spike_tensor"]], layer["s_min"],
                                                               layer["s_max"])
        result.append((out[COUNTERS_OUTPUT], expected, out))
        assert np.array_equal(out[COUNTERS_OUTPUT][:, :, 0], counts)  # its spikes column is pmsm_spike_counts
    return result


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_counters_equal_numpy_rules_over_steps(mode):
    compiled = compile_model(net(), mode=mode)
    info = compiled.info
    assert info["counters_output"] == COUNTERS_OUTPUT and info["counters"] == list(COUNTERS)
    assert [l["op"] for l in info["layers"]] == ["AIF", "IF", "AIFHalfEven"]
    assert all(l["counters_dtype"] == "float32-exact" for l in info["layers"])
    out_meta = {o.name: o for o in compiled.model.graph.output}[COUNTERS_OUTPUT]
    assert out_meta.type.tensor_type.elem_type == TensorProto.INT64
    assert [d.dim_value for d in out_meta.type.tensor_type.shape.dim[1:]] == [3, len(COUNTERS)]
    assert COUNTERS_OUTPUT not in info["outputs"]
    total = np.zeros((3, len(COUNTERS)), np.int64)
    for counters, expected, _ in counters_over_steps(compiled):
        assert counters.dtype == np.int64 and counters.shape == (BATCH, 3, len(COUNTERS))
        np.testing.assert_array_equal(counters, expected)
        total += counters.sum(0)
    # every rule is exercised: negative spikes and both caps of the signed layer, both states of
    # the binary one, and the 0..255 layer's upper cap
    c = dict(zip(COUNTERS, total.T))
    assert c["negative"][0] > 0 and c["at_lower_cap"][0] > 0 and c["at_upper_cap"][0] > 0 and c["at_zero"][0] > 0
    assert c["events"][1] > 0 and c["at_zero"][1] > 0 and c["at_upper_cap"][2] > 0
    assert (c["events"] < c["spikes"])[[0, 2]].all()  # multi-spikes: fewer events than spikes


@pytest.mark.parametrize("limit,expected_dtypes", [
    (1, ["int64", "int64", "int64"]),
    (400, ["int64", "float32-exact", "int64"]),  # pqa 384·8, qcfs 96·1, qdq 64·255
])
@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_counters_int64_path_gives_same_counters(monkeypatch, limit, expected_dtypes, mode):
    reference = [c for c, _, _ in counters_over_steps(compile_model(net(), mode=mode))]
    monkeypatch.setattr(count_spikes_module, "FLOAT_EXACT_LIMIT", limit)
    compiled = compile_model(net(), mode=mode)
    assert [l["counters_dtype"] for l in compiled.info["layers"]] == expected_dtypes
    graph = compiled.model.graph
    producers = {o: n for n in graph.node for o in n.output}
    counter_inputs = [producers[n.input[0]] for n in graph.node if n.op_type == "SpikeCounters"]
    assert [p.op_type == "Cast" for p in counter_inputs] == [d == "int64" for d in expected_dtypes]
    for (counters, expected, _), ref in zip(counters_over_steps(compiled), reference):
        np.testing.assert_array_equal(counters, expected)
        np.testing.assert_array_equal(counters, ref)


def _counters_model(opset, dtype, shape):
    node = helper.make_node("SpikeCounters", ["k"], ["c"], domain="pmsm", s_min=-3, s_max=5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("k", dtype, shape)],
                              [helper.make_tensor_value_info("c", TensorProto.INT64, ["N", 7])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    from pmsm_compiler.ops.counters import counter_functions

    add_functions(model, counter_functions())
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("opset", [15, 20, 28])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_spike_counters_op_alone_at_every_opset(opset, dtype):
    """The function body alone, on spikes that hit both caps and 0, in onnxruntime and in the ONNX
    reference evaluator, at the lowest, default and highest opset the loader accepts."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(opset)
    k = rng.integers(-3, 6, size=(4, 2, 3, 5)).astype(dtype)
    k[1] = 0  # a silent sample
    k[2] = 5  # every neuron at the upper cap
    onnx_type = TensorProto.FLOAT if dtype == np.float32 else TensorProto.INT64
    model = _counters_model(opset, onnx_type, ["N", 2, 3, 5])
    expected = spike_counters(k, -3, 5)
    got = make_session(model, "all", threads=1).run(None, {"k": k})[0]
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"k": k})[0], expected)
    assert expected[1].tolist() == [0, 0, 0, 0, 0, 0, 30] and expected[2].tolist() == [150, 30, 150, 0, 0, 30, 0]
