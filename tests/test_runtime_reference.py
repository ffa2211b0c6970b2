"""The runtime against the step-by-step reference, for every t ≤ T (issue 15, item 6).

``SNNSession.run_batch`` (static prologue, step variants, in-place states, fused kernels) must give,
at every step, what the plainest loop over the one-step model gives
(``pmsm_compiler.testing.reference.run_reference``): the per-step outputs, the mean outputs, the
predictions at every t (argmax of the running average) and the spike counters, for T up to 8, on
CNNs (ResNet and VGG, random λ and BatchNorm statistics) and on a calibrated ViT-tiny, whose
temporal wrappers include LayerNorm, Softmax and two-input MatMuls (both inputs time-varying) and
read the step index ``pmsm_t``. Everything is compared exactly: both sum the same float32 outputs
into a float64 running sum in the same order.

The mutations these tests must catch (each left the suite green before): predictions at t taken
from step t alone instead of the running sum; mean outputs not divided by T; the step index bound
as 1 at every step; only the first time-varying input of a two-input wrapper given its running
sum. ``test_the_comparison_catches_*`` apply each to a copy of the runtime's results or models
and check that the comparison fails.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from pmsm_compiler.compiler import compile_model  # noqa: E402
from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD, load_bundled_sample, normalize  # noqa: E402
from pmsm_compiler.training.export import export_onnx  # noqa: E402
from pmsm_compiler.loading import load_model  # noqa: E402
from pmsm_compiler.training.zoo import build_model  # noqa: E402
from pmsm_compiler.runtime import SNNSession  # noqa: E402
from pmsm_compiler.testing.reference import quantizer_node_neurons, run_rate_coded_ann, run_reference  # noqa: E402
from pmsm_compiler.training.verify_export import randomize_for_check  # noqa: E402

T = 8


@functools.lru_cache(maxsize=None)
def images(n: int, offset: int = 0) -> np.ndarray:
    ds = load_bundled_sample()
    return normalize(ds.x[offset:offset + n], CIFAR10_MEAN, CIFAR10_STD)


@functools.lru_cache(maxsize=None)
def ann(name: str, tmp: str) -> onnx.ModelProto:
    torch.manual_seed(1)
    net = build_model(name, act="pqa")
    if name.startswith("vit"):
        from pmsm_compiler.training.zoo.vit import calibrate_lambdas

        with torch.no_grad():  # attention far from uniform, then SpikeZIP's λ calibration
            for block in net.blocks:
                torch.nn.init.normal_(block.attn.qkv.weight, std=0.4)
        calibrate_lambdas(net, torch.from_numpy(images(8, 500)))
    else:
        randomize_for_check(net, torch.from_numpy(images(32, 500)), seed=1)
    path = f"{tmp}/{name}.onnx"
    export_onnx(net.eval(), path)
    return load_model(path)


@functools.lru_cache(maxsize=None)
def compiled(name: str, mode: str, tmp: str):
    return compile_model(ann(name, tmp), mode=mode)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("runtime_reference"))


def assert_same(result, ref, timesteps):
    assert np.array_equal(result.outputs_by_t, ref.outputs_by_t), "per-step outputs"
    assert np.array_equal(result.mean_outputs, ref.mean_outputs), "mean outputs"
    assert np.array_equal(result.predictions_by_t, ref.predictions_by_t), "predictions at every t"
    assert np.array_equal(result.spikes, ref.spikes), "spike counters"
    assert np.array_equal(ref.spikes, ref.spikes_recomputed), "counters vs Σ|k| of the spike tensors"
    assert result.spikes.shape[0] == timesteps


CASES = [("resnet_tiny", "folded"), ("resnet_tiny", "exact"), ("vgg_tiny", "folded"), ("vit_tiny", "folded"),
         ("vit_tiny", "exact")]


@pytest.mark.parametrize("name,mode", CASES)
def test_runtime_equals_the_reference_at_every_step(tmp, name, mode):
    c = compiled(name, mode, tmp)
    x = images(12, 100)
    ref = run_reference(c, x, T)
    for kernels in ("auto", "off"):
        result = SNNSession(c.model, kernels=kernels).run_batch(x, T, keep_outputs=True)
        assert_same(result, ref, T)
    # shorter runs; from T = 2 on they are the first steps of the longer one (a T = 1 run is the
    # one step with no next state to compute, and may differ from a first step in the last bit
    # where onnxruntime fuses a wrapped op with its consumer: see runtime.session.step_variant)
    for timesteps in (1, 2, 5):
        result = SNNSession(c.model).run_batch(x, timesteps, keep_outputs=True)
        short = run_reference(c, x, timesteps)
        assert_same(result, short, timesteps)
        if timesteps > 1:
            assert np.array_equal(short.outputs_by_t, ref.outputs_by_t[:timesteps])


def test_the_models_exercise_what_the_mutations_break(tmp):
    """The comparisons below can only fail if the models give them something to see."""
    vit = compiled("vit_tiny", "folded", tmp)
    wrappers = vit.info["wrappers"]
    assert any(len(w["states"]) == 3 and w["op"] == "MatMul" for w in wrappers)  # two running sums + prev
    assert vit.info["time_input"] is not None
    ref = run_reference(vit, images(12, 100), T)
    step_preds = ref.outputs_by_t.reshape(T, 12, -1).argmax(2)
    assert np.any(step_preds != ref.predictions_by_t)  # step t alone ≠ running average
    assert not np.allclose(ref.mean_by_t[-1] * T, ref.mean_by_t[-1])


def test_the_comparison_catches_predictions_from_the_current_step(tmp):
    c = compiled("vit_tiny", "folded", tmp)
    x = images(12, 100)
    result = SNNSession(c.model).run_batch(x, T, keep_outputs=True)
    result.predictions_by_t = result.outputs_by_t.reshape(T, len(x), -1).argmax(2)
    with pytest.raises(AssertionError, match="predictions"):
        assert_same(result, run_reference(c, x, T), T)


def test_the_comparison_catches_a_mean_not_divided_by_t(tmp):
    c = compiled("resnet_tiny", "folded", tmp)
    x = images(12, 100)
    result = SNNSession(c.model).run_batch(x, T, keep_outputs=True)
    result.mean_outputs = result.outputs_by_t.astype(np.float64).sum(0).astype(np.float32)
    with pytest.raises(AssertionError, match="mean outputs"):
        assert_same(result, run_reference(c, x, T), T)


@pytest.mark.parametrize("time_batch", [1, 4])
def test_the_comparison_catches_the_step_index_bound_as_one(tmp, monkeypatch, time_batch):
    c = compiled("vit_tiny", "folded", tmp)
    x = images(12, 100)
    session = SNNSession(c.model, time_batch=time_batch, time_batch_bytes=1 << 40)
    if time_batch == 1:  # step by step: what run_batch binds as pmsm_t
        original = np.array

        def time_always_one(value, *args, **kwargs):
            if isinstance(value, list) and len(value) == 1 and args == (np.float32,):
                value = [1]
            return original(value, *args, **kwargs)

        import pmsm_compiler.runtime.session as session_module

        monkeypatch.setattr(session_module.np, "array", time_always_one)
    else:  # layer by layer: the rows' steps of a pass
        import pmsm_compiler.runtime.time_batched as time_batched_module

        assert session.time_batched, session.time_batched_note
        monkeypatch.setattr(time_batched_module, "time_rows",
                            lambda first, steps, samples: np.ones(steps * samples, np.float32))
    result = session.run_batch(x, T, keep_outputs=True)
    monkeypatch.undo()
    with pytest.raises(AssertionError):
        assert_same(result, run_reference(c, x, T), T)


def test_the_comparison_catches_a_wrapper_input_without_its_running_sum(tmp):
    """Rewire a two-input wrapper so that its second input reads the current step's value instead
    of its running average: the reference (unchanged model) must disagree from t = 2 on."""
    c = compiled("vit_tiny", "folded", tmp)
    model = onnx.ModelProto()
    model.CopyFrom(c.model)
    wrapper = next(w for w in c.info["wrappers"] if w["op"] == "MatMul" and len(w["states"]) == 3)
    average = [n for n in model.graph.node if n.op_type == "Div" and n.name.startswith(wrapper["name"] + "/average")]
    assert len(average) == 2
    second = sorted(average, key=lambda n: n.name)[1]
    accumulate = next(n for n in model.graph.node if n.output[0] == second.input[0])
    current = accumulate.input[1]  # Add(sum, x): x is this step's value
    for node in model.graph.node:
        node.input[:] = [current if i == second.output[0] else i for i in node.input]
    x = images(12, 100)
    result = SNNSession(model).run_batch(x, T, keep_outputs=True)
    ref = run_reference(c, x, T)
    assert np.array_equal(result.outputs_by_t[0], ref.outputs_by_t[0])  # identical at t = 1
    with pytest.raises(AssertionError):
        assert_same(result, ref, T)


@pytest.mark.parametrize("name,mode", CASES)
def test_the_compiled_snn_follows_rate_coding_of_the_ann(tmp, name, mode):
    """The comparisons above take the compiled step model as given; this one holds its T > 1
    behaviour to the definition, computed from the ANN alone (``run_rate_coded_ann``: each
    quantizer a numpy neuron, the rest of the ANN run on the running means), within the fuzzer's
    bounds (rare level flips from other float rounding; running means to 1e-4 relative). A
    compiled wrapper that averaged only one input, or read a wrong step index, fails here."""
    from pmsm_compiler.testing.fuzz import compare_rate_coding

    network, c, x = ann(name, tmp), compiled(name, mode, tmp), images(12, 100)
    neurons = quantizer_node_neurons(network, c.info)
    ideal = run_rate_coded_ann(network, neurons, x, T)
    stats = {}
    assert not compare_rate_coding(ideal, run_reference(c, x, T, keep_levels=True), c.info, neurons, len(x), stats), \
        stats


def test_accuracy_at_every_t_as_pmsm_run_reports_it(tmp):
    """run_dataset (pmsm-run's loop: batches of 5, 5 and 2, integer counts per t) reports the
    accuracy of the reference's predictions at every t."""
    from pmsm_compiler.data import Dataset
    from pmsm_compiler.runtime import run_dataset

    c, x = compiled("resnet_tiny", "exact", tmp), images(12, 100)
    labels = load_bundled_sample().y[100:112].astype(np.int64)
    report = run_dataset(SNNSession(c.model), Dataset(x, labels), T, batch_size=5, mean=None, std=None,
                         progress=False)
    ref = run_reference(c, x, T)
    assert report["accuracy_by_t"] == [float(np.mean(p == labels)) for p in ref.predictions_by_t]
