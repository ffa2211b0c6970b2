"""Models below the supported opsets are converted on loading and the conversion is checked
(``pmsm_compiler.opset_upgrade``).

onnxruntime's ``quantize_static`` keeps the float model's opset: a model exported at opset 11 or 13
gives a QDQ model at that opset, which the loader refused ("supported: opsets 15 to 28; convert
it"). It now converts it with onnx's version converter on the weight-free skeleton, checks in
onnxruntime that the converted graph computes what the original does, bit for bit, and compiles
it: exact mode bit-identical at T = 1 (``tests/producers.py``).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler import opset_upgrade, weights
from pmsm_compiler.errors import UnsupportedModelError
from pmsm_compiler.loading import load_model
from pmsm_compiler.metadata import get_metadata

torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")

from producers import check_both_modes  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        y = torch.nn.functional.relu6(self.c2(x) + x)
        return self.fc(torch.nn.functional.max_pool2d(y, 2).flatten(1))


class Calibration(quantization.CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(1)
        self.data = iter([{"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.data, None)


def qdq_model(tmp_path, opset: int) -> str:
    torch.manual_seed(0)
    float_path, path = str(tmp_path / f"float{opset}.onnx"), str(tmp_path / f"qdq{opset}.onnx")
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 8, 8),), float_path, dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    quantization.quantize_static(float_path, path, Calibration(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=opset >= 13)
    assert [o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx")] == [opset]
    return path


@pytest.mark.parametrize("opset", [11, 13])
def test_a_quantize_static_model_at_an_older_opset_compiles_lossless(tmp_path, opset):
    path = qdq_model(tmp_path, opset)
    model = load_model(path)
    assert opset_upgrade.default_opset(model) == 15 and model.ir_version >= opset_upgrade.MIN_IR_VERSION
    record = get_metadata(model, opset_upgrade.METADATA_KEY)
    assert record == {"from": opset, "to": 15, "identical": True, "max_abs_diff": 0.0, "probe_samples": 2}
    x = np.random.default_rng(2).standard_normal((32, 3, 8, 8)).astype(np.float32)
    for compiled, _, _ in check_both_modes(path, x).values():  # exact: bit-identical to the converted ANN
        assert any(f"converted from opset {opset} to 15" in n for n in compiled.info.notes)


def test_the_converter_sees_no_weights_and_the_model_keeps_its_own(tmp_path, monkeypatch):
    """The version converter gets the skeleton (no large raw_data), and the loaded model's large
    initializers are the file's bytes, under the converted graph."""
    path = qdq_model(tmp_path, 13)
    seen = []
    convert = onnx.version_converter.convert_version
    monkeypatch.setattr(onnx.version_converter, "convert_version",
                        lambda m, v: seen.append(max((len(t.raw_data) for t in m.graph.initializer), default=0))
                        or convert(m, v))
    model = load_model(path)
    assert seen and seen[0] < weights.STRIP_BYTES
    original = {t.name: t.raw_data for t in onnx.load(path).graph.initializer if weights.strippable(t)}
    loaded = {t.name: t.raw_data for t in model.graph.initializer if t.name in original}
    assert original and loaded == original
    assert not {v.name for v in model.graph.input} & set(original)  # not left as graph inputs


def _tiny(opset: int, scale: float = 2.0) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "g", [x], [y],
                              [numpy_helper.from_array(np.array(scale, np.float32), "s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_a_conversion_that_fails_is_refused_in_one_line(tmp_path, monkeypatch):
    onnx.save(_tiny(13), tmp_path / "m.onnx")

    def fail(model, version):
        raise RuntimeError("No adapter for op X\nmore lines")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    with pytest.raises(UnsupportedModelError, match=r"opset 13; supported from 15; onnx's version converter could "
                                                    r"not convert it \(No adapter for op X more lines\): re-export") as exc:
        load_model(tmp_path / "m.onnx", static_inputs=False)
    assert "\n" not in str(exc.value)


def test_a_conversion_that_changes_the_outputs_is_refused(tmp_path, monkeypatch):
    """The check compares the original graph and the converted one in onnxruntime: a converter that
    changed a constant is caught."""
    onnx.save(_tiny(13), tmp_path / "m.onnx")
    convert = onnx.version_converter.convert_version

    def wrong(model, version):
        out = convert(model, version)
        out.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(2.5, np.float32), "s"))
        return out

    monkeypatch.setattr(onnx.version_converter, "convert_version", wrong)
    with pytest.raises(UnsupportedModelError, match=r"changed what the model computes \(opset 13 → 15: max \|diff\|"):
        load_model(tmp_path / "m.onnx", static_inputs=False)


def test_a_supported_opset_is_left_as_it_is(tmp_path):
    onnx.save(_tiny(17), tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx", static_inputs=False)
    assert opset_upgrade.default_opset(model) == 17 and get_metadata(model, opset_upgrade.METADATA_KEY) is None


def test_an_older_model_with_external_data_is_converted_and_checked(tmp_path):
    """The weights in a data file beside the model: the converter sees their references, the check
    the weights the loader read."""
    path = qdq_model(tmp_path, 13)
    external = tmp_path / "ext" / "model.onnx"
    external.parent.mkdir()
    onnx.save(onnx.load(path), external, save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=256)
    assert any(t.data_location == TensorProto.EXTERNAL for t in onnx.load(external, load_external_data=False)
               .graph.initializer)
    model = load_model(external)
    assert get_metadata(model, opset_upgrade.METADATA_KEY)["identical"]
    inline = load_model(path)
    assert {t.name: t.raw_data for t in model.graph.initializer} == {t.name: t.raw_data for t in inline.graph.initializer}


def test_a_conversion_within_the_tolerance_is_taken_and_recorded(tmp_path, monkeypatch):
    """A converted graph whose outputs differ from the original's by less than
    ``MAX_RELATIVE_DIFF`` of the largest is taken; the metadata and the compile note say by how much."""
    onnx.save(_tiny(13), tmp_path / "m.onnx")
    convert = onnx.version_converter.convert_version
    nudged = np.nextafter(np.float32(2.0), np.float32(3.0))  # one float32 unit: 1.2e-7 relative

    def close(model, version):
        out = convert(model, version)
        out.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(nudged, np.float32), "s"))
        return out

    monkeypatch.setattr(onnx.version_converter, "convert_version", close)
    model = load_model(tmp_path / "m.onnx", static_inputs=False)
    record = get_metadata(model, opset_upgrade.METADATA_KEY)
    assert not record["identical"] and 0 < record["max_abs_diff"] < 1e-5
    assert "its outputs within" in opset_upgrade.note(model)
