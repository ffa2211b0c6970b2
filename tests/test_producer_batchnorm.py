"""BatchNormalization kept as a node by the exporter compiles in both modes, and runs for T > 1.

torch's legacy exporter with ``do_constant_folding=False`` keeps every BatchNorm (after Gemm,
MatMul, Conv1d, and after an Add, where no exporter can fold it). In inference BN is affine,
BN(x) = a·x + b per channel, so on spike traffic it is applied at every step like a Conv with a
bias, and the time average of its outputs is BN of the time-averaged input. Exact mode keeps the
node; folded mode folds it into the Gemm / MatMul / Conv before it and turns the one after the
Add into a per-channel Mul + Add.

Models (built in the test): an MLP (Linear → BN1d), a MatMul with a weight parameter → BN1d, a
Conv1d net (Conv1d → BN1d, and Conv1d + shortcut → Add → BN1d), each with two kinds of quantizer:
the plain PQA formula s·clamp(floor(x/s + ½), lo, hi) as a user writes it, and
``torch.fake_quantize_per_tensor_affine`` (exported as QuantizeLinear / DequantizeLinear).

Checked: ``tests/producers.py`` (exact bit-identical at T = 1, folded within policy, T = 4 run);
the BN nodes exact mode keeps; what folded mode folds; at T = 4 the runtime equals the independent
step-by-step reference at every step; and, for a net whose only neurons are in front of the BN,
the SNN's T-step mean output is the ANN applied to the neurons' mean output (BN's bias applied at
every step, not once), to float rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from producers import check_both_modes  # noqa: E402

from pmsm_compiler.compiler import compile_model  # noqa: E402
from pmsm_compiler.loading import load_model  # noqa: E402
from pmsm_compiler.runtime import SNNSession  # noqa: E402
from pmsm_compiler.sessions import make_session  # noqa: E402
from pmsm_compiler.testing.reference import run_reference  # noqa: E402
from pmsm_compiler.verify import emitted_values, teacher_forced_tail  # noqa: E402

T = 4


class PlainPQA(nn.Module):
    """PQA written out as a user would (no custom op): s·clamp(floor(x/s + ½), −2, 8)."""

    def __init__(self, step=0.25):
        super().__init__()
        self.step = step

    def forward(self, x):
        return torch.clamp(torch.floor(x / self.step + 0.5), -2, 8) * self.step


class FakeQuant(nn.Module):
    def forward(self, x):
        return torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127)


QUANTIZERS = {"plain-pqa": PlainPQA, "fake-quant": FakeQuant}


class GemmBN(nn.Module):
    def __init__(self, act, second=True):
        super().__init__()
        self.q0, self.fc1, self.bn, self.fc2 = act(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.Linear(16, 10)
        self.act = act() if second else nn.Identity()

    def forward(self, x):
        return self.fc2(self.act(self.bn(self.fc1(self.q0(x)))))


class MatMulBN(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.q0, self.bn, self.act, self.fc = act(), nn.BatchNorm1d(16), act(), nn.Linear(16, 10)
        self.w = nn.Parameter(torch.randn(12, 16) * 0.3)

    def forward(self, x):
        return self.fc(self.act(self.bn(self.q0(x) @ self.w)))


class Conv1dAddBN(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.q0, self.c1, self.bn1, self.a1 = act(), nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8), act()
        self.c2, self.bn2, self.a2 = nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8), act()
        self.fc = nn.Linear(8 * 6, 10)

    def forward(self, x):
        h = self.a1(self.bn1(self.c1(self.q0(x))))
        return self.fc(self.a2(self.bn2(self.c2(h) + h)).flatten(1))  # BN after an Add


NETS = {"gemm-bn1d": (GemmBN, (12,), 1), "matmul-bn1d": (MatMulBN, (12,), 1),
        "conv1d-bn1d-add-bn1d": (Conv1dAddBN, (3, 6), 2)}


def export(net, shape, path) -> str:
    torch.manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    torch.onnx.export(net.eval(), (torch.randn(2, *shape),), path, dynamo=False, do_constant_folding=False,
                      opset_version=17, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return path


def inputs(shape, n=32):
    return np.random.default_rng(2).standard_normal((n, *shape)).astype(np.float32)


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
@pytest.mark.parametrize("net_name", list(NETS))
def test_batchnorm_nodes_compile_in_both_modes(net_name, quantizer, tmp_path):
    cls, shape, after_add = NETS[net_name]
    torch.manual_seed(0)
    path = export(cls(QUANTIZERS[quantizer]), shape, str(tmp_path / "ann.onnx"))
    model = onnx.load(path)
    bn_nodes = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bn_nodes) == (2 if net_name.startswith("conv1d") else 1)
    x = inputs(shape)
    for mode, (compiled, _report, result) in check_both_modes(path, x).items():
        ops = [n.op_type for n in compiled.model.graph.node]
        assert compiled.info["wrappers"] == []  # affine: no temporal wrapper
        if mode == "exact":
            assert ops.count("BatchNormalization") == len(bn_nodes)
        else:
            assert "BatchNormalization" not in ops
            unfolded = [n for n in compiled.info["notes"] if n.startswith("BatchNormalization")]
            if net_name.startswith("conv1d"):  # the BN after the Add becomes Mul + Add by channel
                assert len(unfolded) == 1 and "not preceded by Conv, Gemm or MatMul" in unfolded[0]
            else:
                assert unfolded == []
        reference = run_reference(compiled.model, x[:8], T)
        assert np.array_equal(result.outputs_by_t, reference.outputs_by_t)
        assert np.array_equal(result.spikes, reference.spikes)


@pytest.mark.parametrize("mode", ["exact", "folded"])
@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
def test_batchnorm_bias_is_applied_every_step(quantizer, mode, tmp_path):
    """x → quantizer (the only neurons) → Gemm → BN → Gemm → y: the layers after the neurons are
    affine, so mean_T(y) = ANN tail(mean_T(neuron output)), to float rounding. A bias applied once
    instead of at every step would be off by (1 − 1/T)·b."""
    torch.manual_seed(0)
    path = export(GemmBN(QUANTIZERS[quantizer], second=False), (12,), str(tmp_path / "ann.onnx"))
    ann = load_model(path)
    compiled = compile_model(ann, mode=mode)
    assert len(compiled.layers) == 1
    x = inputs((12,), 16) * 2
    result = SNNSession(compiled.model).run_batch(x, T)
    levels = run_reference(compiled.model, x, T, keep_levels=True).levels_by_t
    layer = compiled.layers[0]
    mean_emitted = np.mean([emitted_values(layer, step[0]).astype(np.float64) for step in levels], axis=0)
    tail = make_session(teacher_forced_tail(compiled.reference or ann, compiled.layers), "disable", qdq_fusion=False)
    feeds = {layer["ann_output"]: mean_emitted.astype(np.float32)}
    feeds.update({i.name: x for i in tail.get_inputs() if i.name == "x"})
    expected = tail.run(["y"], feeds)[0]
    assert not np.array_equal(levels[0][0], levels[1][0])  # the spikes do change over time
    scale = np.abs(expected).max()
    assert np.abs(result.mean_outputs - expected).max() <= 1e-5 * scale
