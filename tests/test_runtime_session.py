"""SNNSession (runtime/session.py): bit-exact T = 1, spikes against a numpy AIF/IF simulation,
binary QCFS spikes, no state leaking between batches, batch sizes 1 and 7.

Models get random λ's in [2, 10] and random BatchNorm statistics (``randomize_for_check``) so that
the quantizers are non-trivial. The numpy simulation drives ``pmsm_compiler.ops.neurons.AIFNeuron``
/ ``IFNeuron`` with each neuron layer's input current taken from onnxruntime (the AIF inputs are
exposed as extra outputs), and checks — every step, exactly — the spikes, the membranes and the
spike counts that onnxruntime and SNNSession report. For a hand-built two-layer model the
second layer's current is also recomputed in float64 numpy from the first layer's spikes
(PSP = θ·k, Eq. 3–4), which checks the wiring independently of onnxruntime.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from pmsm_compiler.training.activations import PQA
from pmsm_compiler.compiler import compile_model
from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD, load_bundled_sample, normalize
from pmsm_compiler.training.export import export_onnx
from pmsm_compiler.loading import load_model
from pmsm_compiler.onnx_utils import with_outputs
from pmsm_compiler.ops.neurons import AIFNeuron, IFNeuron
from pmsm_compiler.runtime import SNNSession, split_static_prologue
from pmsm_compiler.sessions import make_session
from pmsm_compiler.snn_format import SNNInfo, State
from pmsm_compiler.training.verify_export import randomize_for_check
from pmsm_compiler.training.zoo import build_model
from pmsm_compiler.verify import initial_state_feeds

OPT_LEVELS = ["all", "basic"]


@functools.lru_cache(maxsize=None)
def images(n: int, offset: int = 0) -> np.ndarray:
    ds = load_bundled_sample()
    return normalize(ds.x[offset:offset + n], CIFAR10_MEAN, CIFAR10_STD)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("runtime_session")


_CACHE: dict = {}


def exported(tmp, name: str, act: str = "pqa", seed: int = 1):
    """(ANN ModelProto, loaded) for a zoo model with random λ and BatchNorm statistics."""
    key = (name, act, seed)
    if key not in _CACHE:
        torch.manual_seed(seed)
        net = build_model(name, act=act)
        randomize_for_check(net, torch.from_numpy(images(32, 500)), seed=seed)
        path = str(tmp / f"{name}_{act}_{seed}.onnx")
        export_onnx(net, path)
        _CACHE[key] = load_model(path)
    return _CACHE[key]


def compiled(tmp, name: str, mode: str = "exact", act: str = "pqa"):
    key = ("compiled", name, mode, act)
    if key not in _CACHE:
        _CACHE[key] = compile_model(exported(tmp, name, act), mode=mode)
    return _CACHE[key]


class TwoLayer(nn.Module):
    """Conv → PQA → Conv → PQA → GlobalAveragePool → Gemm."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.q1 = PQA(lam=3.3)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.q2 = PQA(lam=5.7)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        return self.fc(self.pool(self.q2(self.conv2(self.q1(self.conv1(x))))).flatten(1))


class InputSkip(nn.Module):
    """A state-dependent node (Add) reads the network input directly: x + PSP(conv(x))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.q1 = PQA(lam=4.1)
        self.q2 = PQA(lam=6.3)
        self.conv2 = nn.Conv2d(3, 5, 3, padding=1)
        self.fc = nn.Linear(5, 10)

    def forward(self, x):
        y = self.q2(self.q1(self.conv(x)) + x)
        return self.fc(self.conv2(y).mean((2, 3)))


def _small(tmp, cls, name):
    key = ("small", name)
    if key not in _CACHE:
        torch.manual_seed(3)
        net = cls().eval()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.mul_(3.0)
        path = str(tmp / f"{name}.onnx")
        export_onnx(net, path, input_shape=(1, 3, 8, 8))
        _CACHE[key] = (net, load_model(path))
    return _CACHE[key]


def small_inputs(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 3, 8, 8)) * 2).astype(np.float32)


def ann_output(ann: onnx.ModelProto, x: np.ndarray, opt_level: str = "all") -> np.ndarray:
    sess = make_session(ann, opt_level)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# ------------------------------------------------------------------------------------------------
# T = 1: bit for bit equal to the ANN
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet_tiny", "vgg_tiny"])
@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("opt_level", OPT_LEVELS)
def test_t1_bit_identical_to_ann(tmp, name, split, opt_level):
    c = compiled(tmp, name, "exact")
    if split:
        pro, _ = split_static_prologue(c.model, c.info)
        assert pro is not None, "the first convolution should be split off as the static prologue"
    noise = np.random.default_rng(5).standard_normal((8, 3, 32, 32)).astype(np.float32)
    x = np.concatenate([images(24), noise])  # real images and random normal inputs
    session = SNNSession(c.model, opt_level=opt_level, split_static=split)
    assert (session.prologue is not None) == split
    result = session.run_batch(x, 1)
    reference = ann_output(exported(tmp, name), x, opt_level)
    assert result.mean_outputs.dtype == np.float32
    assert np.array_equal(result.mean_outputs, reference)
    assert np.array_equal(result.predictions_by_t[0], reference.argmax(1))
    assert result.spikes.dtype == np.int64 and result.spikes.shape == (1, len(x), len(c.info["layers"]))


def test_split_and_unsplit_agree_for_t_gt_1(tmp):
    c = compiled(tmp, "resnet_tiny", "exact")
    x = images(16)
    a = SNNSession(c.model, split_static=True).run_batch(x, 4, keep_outputs=True)
    b = SNNSession(c.model, split_static=False).run_batch(x, 4, keep_outputs=True)
    assert np.array_equal(a.outputs_by_t, b.outputs_by_t)
    assert np.array_equal(a.spikes, b.spikes)
    assert np.array_equal(a.predictions_by_t, b.predictions_by_t)


@pytest.mark.parametrize("mode", ["exact", "folded"])
def test_execution_order_changes_no_result(tmp, mode):
    import onnxruntime as ort

    c = compiled(tmp, "resnet_tiny", mode)
    x = images(16)
    fast = SNNSession(c.model)
    plain = SNNSession(c.model, priority_order=False)
    for first, last in ((True, False), (False, False), (False, True)):
        assert fast.session_for(first, last).get_session_options().execution_order == \
            ort.ExecutionOrder.PRIORITY_BASED
        assert plain.session_for(first, last).get_session_options().execution_order == ort.ExecutionOrder.DEFAULT
    a = fast.run_batch(x, 4, keep_outputs=True)
    b = plain.run_batch(x, 4, keep_outputs=True)
    assert np.array_equal(a.outputs_by_t, b.outputs_by_t)
    assert np.array_equal(a.spikes, b.spikes)


# ------------------------------------------------------------------------------------------------
# spikes against a numpy simulation of the neurons, T = 1..4
# ------------------------------------------------------------------------------------------------

def _neuron_nodes(model: onnx.ModelProto, info: dict):
    """Per layer: the neuron node's input current tensor name."""
    by_spikes = {n.output[0]: n for n in model.graph.node if n.op_type in ("AIF", "IF") and n.domain == "pmsm"}
    return [by_spikes[layer["spike_tensor"]].input[0] for layer in info["layers"]]


def simulate(c, x: np.ndarray, timesteps: int, opt_level: str = "all"):
    """Run the compiled step model with currents/spikes exposed, drive numpy neurons with the
    currents, and assert (every step, exactly) spikes, membranes and counts. Returns per-step
    dicts of the exposed tensors and the numpy counts [T, N, layers]."""
    info = c.info
    layers = info["layers"]
    currents = _neuron_nodes(c.model, info)
    spikes = [layer["spike_tensor"] for layer in layers]
    sess = make_session(with_outputs(c.model, currents + spikes), opt_level)
    names = [o.name for o in sess.get_outputs()]
    feeds = initial_state_feeds(info, sess)
    input_name = info["inputs"][0]["name"]
    neurons = [AIFNeuron(l["s_min"], l["s_max"]) if l["neuron"] == "AIF" else IFNeuron() for l in layers]
    counts = np.zeros((timesteps, len(x), len(layers)), np.int64)
    steps = []
    for t in range(1, timesteps + 1):
        run_feeds = {input_name: x, **feeds}
        if info.get("time_input"):
            run_feeds[info["time_input"]] = np.array([t], np.float32)
        out = dict(zip(names, sess.run(None, run_feeds)))
        for j, (layer, neuron) in enumerate(zip(layers, neurons)):
            current = out[currents[j]]
            assert current.dtype == np.float32
            k = neuron.step(current)
            assert np.array_equal(k, out[spikes[j]]), f"step {t}, layer {layer['name']}: spikes differ"
            assert np.array_equal(neuron.u, out[layer["state_out"]]), f"step {t}, {layer['name']}: membrane"
            assert k.min() >= layer["s_min"] and k.max() <= layer["s_max"]
            counts[t - 1, :, j] = np.abs(k.astype(np.int64)).reshape(len(x), -1).sum(1)
        assert np.array_equal(counts[t - 1], out[info["spike_counts_output"]])
        feeds = {s["input"]: out[s["output"]] for s in info["states"]}
        steps.append(out)
    return steps, counts


@pytest.mark.parametrize("name,mode", [("resnet_tiny", "exact"), ("vgg_tiny", "exact"), ("resnet_tiny", "folded")])
def test_spikes_match_numpy_neurons(tmp, name, mode):
    c = compiled(tmp, name, mode)
    x = images(6, 100)
    steps, counts = simulate(c, x, 4)
    assert counts.sum() > 0
    result = SNNSession(c.model).run_batch(x, 4)
    for T in range(1, 5):  # a run for T steps reports the first T steps of the simulation
        assert np.array_equal(SNNSession(c.model).run_batch(x, T).spikes, counts[:T])
    assert np.array_equal(result.spikes, counts)
    # multi-spikes and negative spikes really occur, so the counts test more than binary spikes
    ks = [out[l["spike_tensor"]] for out in steps for l in c.info["layers"]]
    assert max(k.max() for k in ks) > 1 and min(k.min() for k in ks) < 0


def test_two_layer_model_against_numpy(tmp):
    net, ann = _small(tmp, TwoLayer, "two_layer")
    c = compile_model(ann, mode="exact")
    info = c.info
    assert [l["neuron"] for l in info["layers"]] == ["AIF", "AIF"]
    x = small_inputs(5, seed=2)
    steps, counts = simulate(c, x, 4)
    result = SNNSession(c.model).run_batch(x, 4)
    assert np.array_equal(result.spikes, counts)
    assert result.spikes.max() > 0
    # independent float64 check of the wiring: current of layer 2 = (conv2(θ1·k1) + b2) / θ_in2
    l1, l2 = info["layers"]
    cur2 = _neuron_nodes(c.model, info)[1]
    w = net.conv2.weight.detach().double()
    b = net.conv2.bias.detach().double()
    for out in steps:
        psp = torch.from_numpy(out[l1["spike_tensor"]].astype(np.float64)) * l1["theta_out"]
        z = torch.nn.functional.conv2d(psp, w, b, padding=1).numpy()
        np.testing.assert_allclose(out[cur2], z / l2["theta_in"], rtol=1e-5, atol=1e-5)
    # and the first layer's current is the static conv1(x)/θ_in1 at every step
    z1 = torch.nn.functional.conv2d(torch.from_numpy(x).double(), net.conv1.weight.detach().double(),
                                    net.conv1.bias.detach().double(), padding=1).numpy()
    cur1 = _neuron_nodes(c.model, info)[0]
    for out in steps:
        np.testing.assert_allclose(out[cur1], z1 / l1["theta_in"], rtol=1e-5, atol=1e-5)
    # T = 1 equals the ANN bit for bit
    assert np.array_equal(SNNSession(c.model).run_batch(x, 1).mean_outputs, ann_output(ann, x))


# ------------------------------------------------------------------------------------------------
# QCFS: binary spikes
# ------------------------------------------------------------------------------------------------

def test_qcfs_binary_spikes(tmp):
    c = compiled(tmp, "resnet_tiny", "exact", act="qcfs")
    assert all(l["neuron"] == "IF" for l in c.info["layers"])
    x = images(6, 200)
    steps, counts = simulate(c, x, 4)  # numpy IFNeuron, exact
    for out in steps:
        for layer in c.info["layers"]:
            k = out[layer["spike_tensor"]]
            assert np.isin(k, (0.0, 1.0)).all(), f"{layer['name']}: non-binary spikes"
    result = SNNSession(c.model).run_batch(x, 4)
    assert np.array_equal(result.spikes, counts)
    neurons = np.array([l["neurons"] for l in c.info["layers"]])
    assert (result.spikes >= 0).all() and (result.spikes <= neurons[None, None, :]).all()
    assert result.spikes.sum() > 0


# ------------------------------------------------------------------------------------------------
# state handling
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", [True, False])
def test_no_state_leak_between_batches(tmp, split):
    c = compiled(tmp, "resnet_tiny", "exact")
    a, b = images(7, 300), images(5, 400)
    session = SNNSession(c.model, split_static=split)
    session.run_batch(a, 5)
    after_a = session.run_batch(b, 3, keep_outputs=True)
    alone = SNNSession(c.model, split_static=split).run_batch(b, 3, keep_outputs=True)
    assert np.array_equal(after_a.outputs_by_t, alone.outputs_by_t)
    assert np.array_equal(after_a.spikes, alone.spikes)
    assert np.array_equal(after_a.mean_outputs, alone.mean_outputs)
    again = session.run_batch(b, 3, keep_outputs=True)  # the same batch twice: same result
    assert np.array_equal(again.outputs_by_t, alone.outputs_by_t)


@pytest.mark.parametrize("name,mode", [("resnet_tiny", "exact"), ("resnet_tiny", "folded"), ("vgg_tiny", "folded")])
def test_in_place_states_change_no_result(tmp, name, mode):
    c = compiled(tmp, name, mode)
    x = images(9, 700)
    # step by step: a time-batched run keeps each membrane in one buffer anyway
    shared = SNNSession(c.model, time_batch=1)
    plain = SNNSession(c.model, in_place=False, time_batch=1)
    # every membrane and MaxPool sum of these models is updated in place: the test compares
    # something, and the ping-pong path still exists
    assert shared.in_place_states == {s["input"] for s in c.info["states"]}
    assert plain.in_place_states == set()
    for timesteps in (1, 2, 5):
        a = shared.run_batch(x, timesteps, keep_outputs=True)
        b = plain.run_batch(x, timesteps, keep_outputs=True)
        assert np.array_equal(a.outputs_by_t, b.outputs_by_t)
        assert np.array_equal(a.spikes, b.spikes)
    _, counts = simulate(c, x, 5)
    assert np.array_equal(shared.run_batch(x, 5).spikes, counts)


@pytest.mark.parametrize("name,mode,act", [("resnet_tiny", "exact", "pqa"), ("resnet_tiny", "folded", "pqa"),
                                           ("vgg_tiny", "folded", "pqa"), ("resnet_tiny", "folded", "qcfs")])
def test_fused_kernels_change_no_result(tmp, name, mode, act):
    from pmsm_compiler import kernels

    if not kernels.status()["available"]:
        pytest.skip(f"fused kernels unavailable: {kernels.status()['reason']}")
    c = compiled(tmp, name, mode, act=act)
    fused = SNNSession(c.model, kernels="on")  # small batches: T >= 2 layer by layer where the model allows
    stepwise = SNNSession(c.model, kernels="on", time_batch=1)
    stock = SNNSession(c.model, kernels="off")
    assert fused.fused_layers == len(c.info["layers"]) and stock.fused_layers == 0
    assert fused.kernel_report() == {"used": True, "layers_fused": len(c.info["layers"]), "reason": None,
                                     "unfused": []}
    assert stock.kernel_report()["used"] is False
    x = images(7, 800)
    for batch in (x, x[:1]):  # batch 1 runs on the calling thread, 7 on the thread pool
        for timesteps in (1, 2, 5):
            b = stock.run_batch(batch, timesteps, keep_outputs=True)
            for session in (fused, stepwise):
                a = session.run_batch(batch, timesteps, keep_outputs=True)
                assert np.array_equal(a.outputs_by_t, b.outputs_by_t)
                assert np.array_equal(a.spikes, b.spikes)
    if mode == "exact":  # and so the fused exact SNN at T = 1 is the ANN, bit for bit
        assert np.array_equal(fused.run_batch(x, 1).mean_outputs, ann_output(exported(tmp, name, act), x))


def test_kernels_on_fails_cleanly_when_unavailable(tmp, monkeypatch):
    from pmsm_compiler import kernels
    from pmsm_compiler.errors import InputError

    monkeypatch.setattr(kernels, "_STATE", {})
    monkeypatch.setenv("PMSM_KERNELS", "off")
    c = compiled(tmp, "resnet_tiny", "exact")
    with pytest.raises(InputError, match="fused neuron kernels unavailable: disabled by PMSM_KERNELS"):
        SNNSession(c.model, kernels="on")
    auto = SNNSession(c.model)  # auto falls back to the function bodies
    assert auto.kernels is None and auto.kernel_report()["reason"] == "disabled by PMSM_KERNELS"
    with pytest.raises(InputError, match="kernels must be auto, on or off"):
        SNNSession(c.model, kernels="yes")


def _state_graph(body: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(
        '<ir_version: 9, opset_import: ["": 20]>\n'
        f"g (float[2] i, float[2] u) => (float[2] y, float[2] u_next)\n{{\n{body}\n}}")


def test_states_safe_in_place_refuses_hazards():
    from pmsm_compiler.runtime.session import states_safe_in_place

    info = SNNInfo(states=[State("u", "u_next", 0.5, "membrane")])
    # the neuron pattern: u is read only upstream of the node that writes u_next
    neuron = _state_graph("m = Add (u, i)\n y = Floor (m)\n u_next = Sub (m, y)")
    assert states_safe_in_place(neuron, info) == {"u"}
    # a reader that is not upstream of the writer could run after the write
    late_reader = _state_graph("m = Add (u, i)\n u_next = Floor (m)\n y = Sub (u_next, u)")
    assert states_safe_in_place(late_reader, info) == set()
    # the writer itself reads the state
    writer_reads = _state_graph("u_next = Add (u, i)\n y = Floor (u_next)")
    assert states_safe_in_place(writer_reads, info) == set()


@pytest.mark.parametrize("name", ["resnet_tiny", "vgg_tiny"])
def test_batch_sizes_1_and_7(tmp, name):
    c = compiled(tmp, name, "exact")
    x = images(7, 600)
    session = SNNSession(c.model)
    seven = session.run_batch(x, 3)
    assert seven.spikes.shape == (3, 7, len(c.info["layers"]))
    assert seven.predictions_by_t.shape == (3, 7) and seven.predictions_by_t.dtype == np.int64
    ones = [session.run_batch(x[i:i + 1], 3) for i in range(7)]
    assert all(r.spikes.shape == (3, 1, len(c.info["layers"])) for r in ones)
    # spike counts are per sample: a sample's counts do not depend on the batch it ran in
    assert np.array_equal(np.concatenate([r.spikes for r in ones], axis=1), seven.spikes)
    assert np.array_equal(np.concatenate([r.predictions_by_t for r in ones], axis=1), seven.predictions_by_t)
    np.testing.assert_allclose(np.concatenate([r.mean_outputs for r in ones]), seven.mean_outputs,
                               rtol=1e-5, atol=1e-5)
    # batch 1 at T = 1 is still bit-identical to the ANN on that batch
    assert np.array_equal(session.run_batch(x[:1], 1).mean_outputs, ann_output(exported(tmp, name), x[:1]))


def test_input_read_by_a_state_dependent_node(tmp):
    """Regression: the static-prologue split dropped the network input from the step graph when a
    state-dependent node (here an Add of a PSP and the input) reads it directly."""
    _, ann = _small(tmp, InputSkip, "input_skip")
    c = compile_model(ann, mode="exact")
    pro, step = split_static_prologue(c.model, c.info)
    assert pro is not None
    assert c.info["inputs"][0]["name"] in {i.name for i in step.graph.input}
    x = small_inputs(6, seed=4)
    split = SNNSession(c.model, split_static=True)
    plain = SNNSession(c.model, split_static=False)
    a, b = split.run_batch(x, 3, keep_outputs=True), plain.run_batch(x, 3, keep_outputs=True)
    assert np.array_equal(a.outputs_by_t, b.outputs_by_t) and np.array_equal(a.spikes, b.spikes)
    assert np.array_equal(split.run_batch(x, 1).mean_outputs, ann_output(ann, x))
    _, counts = simulate(c, x, 3)
    assert np.array_equal(a.spikes, counts)


def test_rejects_bad_inputs(tmp):
    from pmsm_compiler.errors import InputError

    c = compiled(tmp, "resnet_tiny", "exact")
    session = SNNSession(c.model)
    with pytest.raises(InputError, match="timesteps"):
        session.run_batch(images(2), 0)
    with pytest.raises(InputError, match="shape"):
        session.run_batch(np.zeros((2, 3, 16, 16), np.float32), 1)
    with pytest.raises(InputError, match="dtype"):
        session.run_batch(images(2).astype(np.float64), 1)
    with pytest.raises(InputError, match="not a compiled SNN"):
        SNNSession(exported(tmp, "resnet_tiny"))


@pytest.mark.parametrize("bn", [False, True])
def test_a_static_conv_read_by_a_residual_add_stays_in_the_step(bn):
    """x → Conv_a → PQA → Conv_b, + Conv_s(x) (a static residual): onnxruntime fuses the Add into
    Conv_s at level "all"; the split must not put a session boundary between them, or the step
    rounds differently from the ANN (exact mode: bit-identical at T = 1, as the unsplit step)."""
    from onnx import TensorProto, helper, numpy_helper

    from pmsm_compiler.ops import add_functions
    from pmsm_compiler.ops.quantizers import quantizer_functions

    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("Wa", (4, 3, 3, 3)), ("Wb", (4, 4, 3, 3)), ("Ws", (4, 3, 1, 1)))]
    inits.append(numpy_helper.from_array(np.array(3.0, np.float32), "lam"))
    nodes = [helper.make_node("Conv", ["x", "Wa"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
             helper.make_node("PQA", ["a", "lam"], ["q"], domain="pmsm", L=8, alpha=-0.25, beta=1.0, name="act"),
             helper.make_node("Conv", ["q", "Wb"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
             helper.make_node("Conv", ["x", "Ws"], ["s0" if bn else "s"], name="conv_s")]
    if bn:  # Conv → BatchNormalization → Add: onnxruntime fuses all three (exact mode keeps the BN)
        for name, value in (("g", 1.5), ("beta", 0.2), ("mean", 0.1), ("var", 0.7)):
            inits.append(numpy_helper.from_array(np.full(4, value, np.float32), name))
        nodes.append(helper.make_node("BatchNormalization", ["s0", "g", "beta", "mean", "var"], ["s"], name="bn_s"))
    nodes.append(helper.make_node("Add", ["b", "s"], ["y"], name="residual"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    ann = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    add_functions(ann, quantizer_functions())
    ann = onnx.shape_inference.infer_shapes(ann, strict_mode=True)
    c = compile_model(ann, mode="exact")
    prologue, step = split_static_prologue(c.model, c.info)
    assert prologue is not None  # conv_a still runs once per batch
    assert "conv_s" in {n.name for n in step.graph.node} and "conv_a" not in {n.name for n in step.graph.node}
    x = small_inputs(16)
    want = ann_output(ann, x)
    for split in (True, False):
        got = SNNSession(c.model, split_static=split).run_batch(x, 1, keep_outputs=True).outputs_by_t[0]
        assert np.array_equal(got, want), split
