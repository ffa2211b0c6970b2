"""Brevitas quantization-aware models exported with its QCDQ exporter compile, lossless at T = 1.

The model (built and exported in the test): an 8-bit signed QuantIdentity on the input, a
QuantConv2d with BatchNorm and a QuantReLU, a QuantConv2d with a signed QuantIdentity, average
pooling and a QuantLinear; bit widths 2, 4 and 8, weights scaled per tensor and per output
channel (``weight_scaling_per_output_channel``). ``export_onnx_qcdq`` writes every quantizer as
``QuantizeLinear → Clip(integer range) → DequantizeLinear`` (no Clip at 8 bits), weights as float
constants behind such a chain, and a QuantReLU as ``Relu → QuantizeLinear → Clip → DQ``.

Checked, besides ``tests/producers.py``: each activation quantizer becomes a neuron with the
levels of its bit width (QuantReLU 0..2^b − 1, signed QuantIdentity −2^(b−1)..2^(b−1) − 1); the
QuantReLU's Relu, implied by the quantizer's range, is dropped (no temporal wrapper); the BN after
the first convolution stays a node in exact mode and is folded into the convolution in folded mode.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxoptimizer")  # the QCDQ exporter needs it
qnn = pytest.importorskip("brevitas.nn")
export_onnx_qcdq = pytest.importorskip("brevitas.export").export_onnx_qcdq

from producers import activation_quantizers, assert_levels_follow_quantizers, check_both_modes  # noqa: E402

X = np.random.default_rng(2).standard_normal((32, 3, 8, 8)).astype(np.float32)


class Net(torch.nn.Module):
    def __init__(self, bits, per_channel):
        super().__init__()
        w = dict(weight_bit_width=bits, weight_scaling_per_output_channel=per_channel)
        self.inp = qnn.QuantIdentity(bit_width=8)
        self.c1 = qnn.QuantConv2d(3, 8, 3, padding=1, bias=True, **w)
        self.bn = torch.nn.BatchNorm2d(8)
        self.relu = qnn.QuantReLU(bit_width=bits)
        self.c2 = qnn.QuantConv2d(8, 8, 3, padding=1, bias=False, **w)
        self.signed = qnn.QuantIdentity(bit_width=bits)
        self.fc = qnn.QuantLinear(8 * 4 * 4, 10, bias=True, **w)

    def forward(self, x):
        x = self.relu(self.bn(self.c1(self.inp(x))))
        x = self.signed(self.c2(x))
        return self.fc(torch.nn.functional.avg_pool2d(x, 2).flatten(1))


def export(tmp_path, bits, per_channel) -> str:
    torch.manual_seed(0)
    net = Net(bits, per_channel)
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.3, 0.3)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.train()
        for _ in range(3):  # a few training-mode steps: the activation scales' statistics
            net(torch.randn(16, 3, 8, 8))
    path = str(tmp_path / f"brevitas_{bits}_{int(per_channel)}.onnx")
    export_onnx_qcdq(net.eval(), torch.randn(1, 3, 8, 8), export_path=path, opset_version=17)
    return path


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_brevitas_qcdq_compiles_lossless(bits, per_channel, tmp_path):
    path = export(tmp_path, bits, per_channel)
    model = onnx.load(path)
    levels = sorted((lo, hi) for _s, _zp, lo, hi in activation_quantizers(model).values())
    half = 2 ** (bits - 1)
    assert sorted(levels) == sorted([(-128, 127), (0, 2 ** bits - 1), (-half, half - 1)])
    weight_scales = [n for n in model.graph.node if n.op_type == "QuantizeLinear"
                     and any(i.name == n.input[1] and np.prod(i.dims) > 1 for i in model.graph.initializer)]
    assert bool(weight_scales) == per_channel
    results = check_both_modes(path, X)
    for mode, (compiled, _report, _result) in results.items():
        assert_levels_follow_quantizers(model, compiled)
        assert compiled.info["wrappers"] == []  # the QuantReLU's Relu is implied by its quantizer
        assert any("drop_implied_clamps: 1 Relu/Clip node(s) removed" in n for n in compiled.info["notes"])
        bn = [n for n in compiled.model.graph.node if n.op_type == "BatchNormalization"]
        assert len(bn) == (1 if mode == "exact" else 0)


def test_qonnx_export_is_refused_with_the_way_out(tmp_path):
    """Brevitas' other exporter writes QONNX ``Quant`` nodes (arbitrary bit widths as float ops),
    which the compiler does not read: the error names them and the QCDQ exporter."""
    from brevitas.export import export_qonnx

    from pmsm_compiler.errors import UnsupportedModelError
    from pmsm_compiler.loading import load_model

    torch.manual_seed(0)
    path = str(tmp_path / "qonnx.onnx")
    export_qonnx(Net(4, False).eval(), torch.randn(1, 3, 8, 8), export_path=path)
    with pytest.raises(UnsupportedModelError, match=r"qonnx\.custom_op\.general::Quant \(node '[^']+', #\d+\).*"
                       r"export with brevitas\.export\.export_onnx_qcdq"):
        load_model(path)
