"""Models quantized by ``onnxruntime.quantization.quantize_static`` (QDQ format) compile, lossless at T = 1.

A small float CNN (Conv-BN-ReLU, a residual Add, ReLU6, MaxPool, a Gemm with a signed output, a
Gemm head; exported by torch's legacy exporter) is quantized in the test with a few calibration
batches, in the configurations a user picks: per-tensor and per-channel weights, int8 and uint8
activations and weights, symmetric and asymmetric activations (``ActivationSymmetric`` False gives
non-zero zero points: uint8 zp > 0 for signed tensors, int8 zp = −128 after a ReLU). Each compiles
in both modes with the checks of ``tests/producers.py``, and each activation quantizer becomes a
neuron with the levels its scale, zero point and integer range define (uint8 after a ReLU: levels
0..255; symmetric uint8: zp 128, levels −128..127).

onnxruntime drops a ReLU whose quantizer's range implies it when it writes the model; with
symmetric activations it keeps the ReLU between two Q/DQ pairs, where the quantizer after it does
not imply it (its level of 0 is 0, not −128): drop_implied_clamps keeps it, and it becomes a
temporal wrapper.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")

from producers import activation_quantizers, assert_levels_follow_quantizers, check_both_modes  # noqa: E402

from pmsm_compiler.errors import UnsupportedModelError  # noqa: E402
from pmsm_compiler.loading import load_model  # noqa: E402

QuantType = quantization.QuantType
QDQ = quantization.QuantFormat.QDQ
CONFIGS = {
    "u8-act-per-tensor-asymmetric": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                         per_channel=False),
    "s8-act-per-channel-asymmetric": dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                          per_channel=True),
    "s8-act-per-channel-symmetric": dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                         per_channel=True, extra_options={"ActivationSymmetric": True}),
    "u8-act-symmetric-u8-weights": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8,
                                        per_channel=False,
                                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": False}),
    # 16-bit activations: the quantizer moves the model to opset 21 (standard 16-bit Q/DQ)
    "s16-act-per-channel-asymmetric": dict(activation_type=QuantType.QInt16, weight_type=QuantType.QInt8,
                                           per_channel=True),
}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        y = torch.nn.functional.relu6(self.b2(self.c2(x)) + x)
        y = torch.nn.functional.max_pool2d(y, 2)
        return self.fc2(self.fc1(y.flatten(1)))  # fc1's output is signed


@functools.lru_cache(maxsize=None)
def float_model(tmp: str) -> str:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for bn in (net.b1, net.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    path = f"{tmp}/float.onnx"
    torch.onnx.export(net.eval(), (torch.randn(1, 3, 8, 8),), path, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return path


class Calibration(quantization.CalibrationDataReader):
    def __init__(self, batches=4, seed=1):
        rng = np.random.default_rng(seed)
        self.data = iter([{"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)} for _ in range(batches)])

    def get_next(self):
        return next(self.data, None)


def quantize(tmp, name) -> str:
    path = f"{tmp}/{name}.onnx"
    quantization.quantize_static(float_model(tmp), path, Calibration(), quant_format=QDQ, **CONFIGS[name])
    return path


X = np.random.default_rng(2).standard_normal((32, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    """One folder for the module: the float model is exported once."""
    return str(tmp_path_factory.mktemp("onnxruntime_producer"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_quantize_static_qdq_compiles_lossless(name, tmp):
    path = quantize(tmp, name)
    model = onnx.load(path)
    config = CONFIGS[name]
    inits = {t.name: t for t in model.graph.initializer}
    per_axis = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits
                and np.prod(inits[n.input[1]].dims) > 1 and inits[n.input[0]].data_type != onnx.TensorProto.INT32]
    assert len(per_axis) == (4 if config["per_channel"] else 0)  # weights (not int32 biases) of 2 Conv, 2 Gemm
    results = check_both_modes(path, X)
    for mode, (compiled, _report, _result) in results.items():
        layers = assert_levels_follow_quantizers(model, compiled)
        symmetric = config.get("extra_options", {}).get("ActivationSymmetric", False)
        if symmetric:  # zero points 0 (int8) or 128 (uint8): every quantizer signed, −128..127
            assert all((l["s_min"], l["s_max"]) == (-128, 127) for l in layers)
            # the ReLU and the ReLU6 stay between two Q/DQ pairs: temporal wrappers
            assert sorted(w["op"] for w in compiled.info["wrappers"] if w["op"] != "MaxPool") == ["Clip", "Relu"]
            kept = [n for n in compiled.info["notes"] if "kept: the quantizer's level of its min 0 is 0 > k_min = -128" in n]
            assert len(kept) == 2
        else:
            # after a ReLU or ReLU6 (Clip; MaxPool and Flatten of its output): levels 0..255 (0..65535)
            # whatever the integer type; signed tensors get a zero point inside the range, levels on both
            # sides of 0
            top = 65535 if "16" in name else 255
            after_relu = [l for l in layers if any(op in l["name"] for op in ("Relu", "Clip", "MaxPool", "Flatten"))]
            assert after_relu and all((l["s_min"], l["s_max"]) == (0, top) for l in after_relu)
            signed = [l for l in layers if l["name"] not in {a["name"] for a in after_relu}]
            assert signed and all(l["s_min"] < 0 < l["s_max"] and l["s_max"] - l["s_min"] == top for l in signed)
            assert not any(w["op"] in ("Relu", "Clip") for w in compiled.info["wrappers"])
    zero_points = {zp for _s, zp, _lo, _hi in activation_quantizers(model).values()}
    if not config.get("extra_options"):
        assert len(zero_points) > 2  # asymmetric: zero points other than 0 and the range's bottom


def test_int4_weights_compile_from_opset_21(tmp):
    """Below opset 21 onnxruntime writes int4 weights with its contrib com.microsoft::DequantizeLinear,
    refused with the way out; the float model converted to opset 21 gets standard Q/DQ and compiles."""
    config = dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt4, per_channel=False)
    contrib = f"{tmp}/int4_opset17.onnx"
    quantization.quantize_static(float_model(tmp), contrib, Calibration(), quant_format=QDQ, **config)
    with pytest.raises(UnsupportedModelError, match=r"com\.microsoft::DequantizeLinear \(node '[^']+', #\d+\).*"
                       r"convert the float model to opset 21 before quantizing"):
        load_model(contrib)
    float21 = f"{tmp}/float21.onnx"
    onnx.save(onnx.version_converter.convert_version(onnx.load(float_model(tmp)), 21), float21)
    path = f"{tmp}/int4_opset21.onnx"
    quantization.quantize_static(float21, path, Calibration(), quant_format=QDQ, **config)
    model = onnx.load(path)
    assert any(t.data_type == onnx.TensorProto.INT4 for t in model.graph.initializer)
    for compiled, _report, _result in check_both_modes(path, X).values():
        assert_levels_follow_quantizers(model, compiled)


def test_qoperator_and_dynamic_quantization_are_refused_with_the_way_out(tmp):
    qoperator = f"{tmp}/qoperator.onnx"
    quantization.quantize_static(float_model(tmp), qoperator, Calibration(),
                                 quant_format=quantization.QuantFormat.QOperator)
    with pytest.raises(UnsupportedModelError, match=r"QLinearConv \(node '/c1/Conv_quant', #\d+\).*QOperator format .*"
                       r"quant_format=QuantFormat\.QDQ"):
        load_model(qoperator)
    dynamic = f"{tmp}/dynamic.onnx"
    quantization.quantize_dynamic(float_model(tmp), dynamic)
    with pytest.raises(UnsupportedModelError, match=r"DynamicQuantizeLinear \(node '[^']+', #\d+\).*dynamic "
                       r"quantization .* quantize statically with calibration data"):
        load_model(dynamic)
