"""The counting rules at run time: SNNSession's counters against numpy on the spike tensors.

For zoo models (PQA → AIF, QCFS → IF, exact and folded; a Q/DQ model → AIFHalfEven), the spike
tensor of every layer and step comes from ``testing.reference.run_reference`` (plain onnxruntime
sessions with the spikes exposed, not SNNSession); ``ops.counters.spike_counters`` counts them in
numpy. SNNSession must report exactly those counters, per sample and summed over the batch, with
the fused kernels and with the ONNX bodies. Also: a fixed-batch model's padding is not counted, a
model compiled before the counters existed still runs (counters None, same spikes), and the
runner accumulates the counters into the report.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler import kernels
from pmsm_compiler.compiler import compile_model, strip_counters
from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD, Dataset, load_bundled_sample, normalize
from pmsm_compiler.training.export import export_onnx
from pmsm_compiler.loading import load_model
from pmsm_compiler.training.zoo import build_model
from pmsm_compiler.ops.counters import COUNTERS, spike_counters
from pmsm_compiler.runtime import SNNSession, run_dataset
from pmsm_compiler.snn_format import read_snn_info
from pmsm_compiler.testing.reference import run_reference
from pmsm_compiler.training.verify_export import randomize_for_check

KERNEL_CHOICES = ["on", "off"]


@functools.lru_cache(maxsize=None)
def images(n: int, offset: int = 0) -> np.ndarray:
    return normalize(load_bundled_sample().x[offset:offset + n], CIFAR10_MEAN, CIFAR10_STD)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtime_counters")
    cache = {}

    def get(name, act, mode):
        if (name, act) not in cache:
            torch.manual_seed(1)
            net = build_model(name, act=act)
            randomize_for_check(net, torch.from_numpy(images(32, 500)), seed=1)
            path = str(d / f"{name}_{act}.onnx")
            export_onnx(net, path)
            cache[(name, act)] = load_model(path)
        key = (name, act, mode)
        if key not in cache:
            cache[key] = compile_model(cache[(name, act)], mode=mode)
        return cache[key]

    return get


def qdq_conv(batch="N", seed=0):
    """x → Conv → QuantizeLinear/DequantizeLinear int8 (an AIFHalfEven layer, −128..127) → GAP → Gemm."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(rng.standard_normal((6, 10)).astype(np.float32), "W2")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"], name="q"),
             helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["hd"], name="dq"),
             helper.make_node("GlobalAveragePool", ["hd"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W2"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def expected_counters(compiled, x, timesteps):
    """int64 [T, N, layers, counters] counted in numpy on the spike tensors of a reference run."""
    ref = run_reference(compiled, x, timesteps, keep_levels=True)
    layers = compiled.info["layers"]
    out = np.zeros((timesteps, len(x), len(layers), len(COUNTERS)), np.int64)
    for t, levels in enumerate(ref.levels_by_t):
        for layer, k in zip(layers, levels):
            out[t, :, layer["count_index"]] = spike_counters(k, layer["s_min"], layer["s_max"])
    return out, ref.spikes


def _session(model, kernel_choice):
    if kernel_choice == "on" and not kernels.status()["available"]:
        pytest.skip(f"fused kernels unavailable: {kernels.status()['reason']}")
    return SNNSession(model, kernels=kernel_choice)


@pytest.mark.parametrize("kernel_choice", KERNEL_CHOICES)
@pytest.mark.parametrize("name,act,mode", [("resnet_tiny", "pqa", "exact"), ("resnet_tiny", "pqa", "folded"),
                                           ("resnet_tiny", "qcfs", "folded"), ("vgg_tiny", "pqa", "exact")])
def test_counters_match_numpy_on_the_spike_tensors(zoo, name, act, mode, kernel_choice):
    c = zoo(name, act, mode)
    x = images(5, 200)
    expected, spikes = expected_counters(c, x, 4)
    session = _session(c.model, kernel_choice)
    assert session.counter_names == list(COUNTERS)
    if kernel_choice == "on":
        assert session.fused_layers == len(c.info["layers"]) and session.unfused_notes == []
    for T in (1, 4):  # T = 1 runs the first-and-last step variant, T = 4 all three
        r = session.run_batch(x, T, sample_counters=True)
        assert r.counters_by_sample.dtype == np.int64 and r.counters.dtype == np.int64
        assert np.array_equal(r.counters_by_sample, expected[:T])
        assert np.array_equal(r.counters, expected[:T].sum(axis=1))
        assert np.array_equal(r.spikes, spikes[:T])
    assert session.run_batch(x, 2).counters_by_sample is None  # per sample only on request
    neurons = np.array([layer["neurons"] for layer in c.info["layers"]])
    e = dict(zip(COUNTERS, np.moveaxis(expected, -1, 0)))
    assert np.array_equal(e["events"] + e["at_zero"], np.broadcast_to(neurons, e["events"].shape))
    if act == "pqa":  # signed multi-spikes: every rule is exercised
        assert (e["negative"] > 0).any() and (e["at_lower_cap"] > 0).any() and (e["at_upper_cap"] > 0).any()
        assert (e["events"] < e["spikes"]).any()
    else:
        assert np.array_equal(e["events"], e["spikes"]) and not e["negative"].any()


@pytest.mark.parametrize("kernel_choice", KERNEL_CHOICES)
def test_half_even_neurons(kernel_choice):
    c = compile_model(qdq_conv(), mode="exact")
    assert [layer["op"] for layer in c.info["layers"]] == ["AIFHalfEven"]
    x = (np.random.default_rng(3).standard_normal((6, 3, 8, 8)) * 40).astype(np.float32)
    expected, _ = expected_counters(c, x, 3)
    r = _session(c.model, kernel_choice).run_batch(x, 3, sample_counters=True)
    assert np.array_equal(r.counters_by_sample, expected)
    e = dict(zip(COUNTERS, expected.sum(axis=(0, 1))[0]))
    assert e["at_lower_cap"] > 0 and e["at_upper_cap"] > 0 and e["negative"] > 0


@pytest.mark.parametrize("kernel_choice", KERNEL_CHOICES)
def test_fixed_batch_padding_is_not_counted(kernel_choice):
    fixed = _session(compile_model(qdq_conv(batch=4), mode="folded").model, kernel_choice)
    dynamic = _session(compile_model(qdq_conv(), mode="folded").model, kernel_choice)
    x = (np.random.default_rng(4).standard_normal((10, 3, 8, 8)) * 40).astype(np.float32)  # 4 + 4 + 2 (+ 2 padding)
    a = fixed.run_batch(x, 3, sample_counters=True)
    b = dynamic.run_batch(x, 3, sample_counters=True)
    assert a.counters_by_sample.shape == (3, 10, 1, len(COUNTERS))
    assert np.array_equal(a.counters_by_sample, b.counters_by_sample)
    assert np.array_equal(a.counters, b.counters)
    assert np.array_equal(a.counters, b.counters_by_sample.sum(axis=1))


@pytest.mark.parametrize("kernel_choice", KERNEL_CHOICES)
def test_a_model_compiled_before_the_counters_still_runs(zoo, kernel_choice, tmp_path):
    c = zoo("resnet_tiny", "pqa", "folded")
    old = strip_counters(c.model)
    info = read_snn_info(old)
    assert "counters_output" not in info and "counters" not in info
    assert "pmsm_spike_counters" not in {o.name for o in old.graph.output}
    assert not any(n.op_type == "SpikeCounters" for n in old.graph.node)
    path = tmp_path / "old.snn.onnx"
    onnx.save(old, path)
    session = _session(str(path), kernel_choice)
    assert session.counter_names is None
    if kernel_choice == "on":
        assert session.fused_layers == len(info["layers"]) and session.unfused_notes == []
    x = images(4, 300)
    r = session.run_batch(x, 3, sample_counters=True)
    assert r.counters is None and r.counters_by_sample is None
    assert np.array_equal(r.spikes, SNNSession(c.model, kernels=kernel_choice).run_batch(x, 3).spikes)
    report = run_dataset(session, Dataset(load_bundled_sample().x[:6], load_bundled_sample().y[:6], name="six"), 2,
                         4, CIFAR10_MEAN, CIFAR10_STD, progress=False)
    assert report["events_per_image"] is None and report["counters_total"] is None
    assert report["energy"]["per_image_uj"]["events"] is None and report["energy"]["per_image_uj"]["spikes"] > 0
    assert all(layer["events"] is None for layer in report["layers"])


def test_run_dataset_accumulates_the_counters(zoo):
    c = zoo("resnet_tiny", "pqa", "folded")
    sample = load_bundled_sample()
    ds = Dataset(sample.x[:9], sample.y[:9], name="nine")
    report = run_dataset(SNNSession(c.model), ds, 3, 4, CIFAR10_MEAN, CIFAR10_STD, progress=False)
    expected, _ = expected_counters(c, normalize(sample.x[:9], CIFAR10_MEAN, CIFAR10_STD), 3)
    totals = expected.sum(axis=(0, 1))  # [layers, counters], over steps and the 9 images
    assert report["counters_total"] == dict(zip(COUNTERS, (int(v) for v in totals.sum(axis=0))))
    for layer, row in zip(c.info["layers"], report["layers"]):
        assert row["counters_total"] == dict(zip(COUNTERS, (int(v) for v in totals[layer["count_index"]])))
        assert row["events_by_t"] == [float(v) / 9 for v in expected[:, :, layer["count_index"], 1].sum(axis=1)]
    assert report["spikes_total"] == report["counters_total"]["spikes"]


@pytest.mark.parametrize("kernel_choice", KERNEL_CHOICES)
def test_counters_can_be_left_out(zoo, kernel_choice):
    """counters=False: the step graphs drop the counters (onnxruntime would compute an unbound
    output anyway), nothing else changes."""
    c = zoo("resnet_tiny", "pqa", "folded")
    x = images(3, 400)
    full = _session(c.model, kernel_choice)
    lean = SNNSession(c.model, kernels=kernel_choice, counters=False)
    assert lean.counter_names is None and lean.counters_output is None
    a, b = full.run_batch(x, 3, keep_outputs=True), lean.run_batch(x, 3, keep_outputs=True, sample_counters=True)
    assert b.counters is None and b.counters_by_sample is None
    assert np.array_equal(a.spikes, b.spikes) and np.array_equal(a.outputs_by_t, b.outputs_by_t)
    for first, last in ((True, False), (False, False), (False, True)):
        sess = lean.session_for(first, last)
        assert "pmsm_spike_counters" not in {o.name for o in sess.get_outputs()}
    assert "pmsm_spike_counters" in {o.name for o in full.session_for(False, False).get_outputs()}
