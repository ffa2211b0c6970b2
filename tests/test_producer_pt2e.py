"""PyTorch's PT2E quantization (``prepare_pt2e`` / ``convert_pt2e``) exported to ONNX compiles, lossless at T = 1.

In torch 2.13 PT2E is no longer in ``torch.ao.quantization`` (``quantize_pt2e`` and ``quantizer``
are gone); it lives in torchao (``torchao.quantization.pt2e``), with the X86 Inductor quantizer,
and torchao's copy of the XNNPACK quantizer (``torchao.testing.pt2e._xnnpack_quantizer``; its
home is ExecuTorch). The flow: ``torch.export`` → prepare → calibrate on a few batches →
convert → ``torch.onnx.export(dynamo=True)``, which writes ``quantized_decomposed`` ops as
QuantizeLinear / DequantizeLinear (weights as int8 constants behind a DequantizeLinear, per
tensor or per channel). docs/compatibility.md says why the FX flow does not export.

Configurations: XNNPACK symmetric per-tensor and per-channel weights (int8 activations with zero
points: −128 after a ReLU), and X86 Inductor (uint8 activations, quantized only in front of
convolutions and linears: the ReLU of the residual branch feeds an unquantized Add, so it stays a
temporal wrapper, and drop_implied_clamps keeps the first ReLU, whose output has a second reader).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
xnnpack = pytest.importorskip("torchao.testing.pt2e._xnnpack_quantizer")
x86 = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")

from producers import assert_levels_follow_quantizers, check_both_modes, constants  # noqa: E402

X = np.random.default_rng(2).standard_normal((32, 3, 8, 8)).astype(np.float32)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        y = torch.relu(self.c2(x)) + x
        return self.fc(y.mean((2, 3)))


def quantizer(name):
    if name == "x86-inductor":
        return x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    config = xnnpack.get_symmetric_quantization_config(is_per_channel=name.endswith("per-channel"))
    return xnnpack.XNNPACKQuantizer().set_global(config)


def export(tmp_path, name) -> str:
    torch.manual_seed(0)
    net = Net().eval()
    example = (torch.randn(1, 3, 8, 8),)
    prepared = pt2e.prepare_pt2e(torch.export.export(net, example).module(), quantizer(name))
    rng = torch.Generator().manual_seed(1)
    for _ in range(4):
        prepared(torch.randn(1, 3, 8, 8, generator=rng))
    converted = pytest.importorskip("torchao.quantization.pt2e").move_exported_model_to_eval(
        pt2e.convert_pt2e(prepared))
    path = str(tmp_path / f"{name}.onnx")
    torch.onnx.export(converted, example, path, dynamo=True, opset_version=18, input_names=["x"],
                      output_names=["y"], verbose=False)
    return path


@pytest.mark.parametrize("name", ["xnnpack-per-tensor", "xnnpack-per-channel", "x86-inductor"])
def test_pt2e_compiles_lossless(name, tmp_path):
    path = export(tmp_path, name)
    model = onnx.load(path)
    values = constants(model)
    per_axis = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and values[n.input[1]].size > 1]
    assert bool(per_axis) == (name != "xnnpack-per-tensor")  # X86 Inductor: per-channel weights
    for mode, (compiled, _report, _result) in check_both_modes(path, X).items():
        layers = assert_levels_follow_quantizers(model, compiled)
        wrappers = sorted(w["op"] for w in compiled.info["wrappers"])
        if name.startswith("xnnpack"):
            # int8, zero point −128 after each ReLU (levels 0..255): both ReLUs dropped
            assert sum((l["s_min"], l["s_max"]) == (0, 255) for l in layers) >= 2
            assert wrappers == []
        else:
            assert wrappers == ["Relu", "Relu"]
            assert any("its output 'relu' has other readers" in n for n in compiled.info["notes"])
