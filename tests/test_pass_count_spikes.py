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
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.passes import COUNTS_OUTPUT
from pmsm_compiler.verify import initial_state_feeds, make_session, with_outputs

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
