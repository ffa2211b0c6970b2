"""pmsm-compile end to end: exported zoo models, the --report JSON, exit codes, malformed inputs.

Exit codes: 0 compiled and verified; 1 verification failed (no model written); 2 bad input or
unsupported model (exactly one line on stderr, starting with "error:", no traceback, no output).
Models: resnet_tiny with random λ in [2, 10] and randomized BatchNorm statistics, exported as
``pmsm::PQA`` nodes (dynamo) and as plain ops by both exporters (dynamo, legacy); resnet_tiny
with QCFS (legacy, plain ops).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.cli.compile import REPORT_SCHEMA_VERSION, main
from pmsm_compiler.snn_format import SNN_METADATA_KEY, read_snn_info

torch = pytest.importorskip("torch")

REPORT_KEYS = {"schema_version", "tool", "compiler_version", "input", "output", "output_data", "mode", "compile_seconds",
               "total_seconds", "phase_seconds", "ann_macs", "time_input", "verification", "layers", "wrappers", "notes",
               "peak_memory_bytes"}
VERIFICATION_KEYS = {"passed", "skipped", "failures", "mode", "opt_level", "samples", "data", "policy",
                     "level_agreement", "top1_agreement", "max_abs_diff", "lossy_layers_excluded", "batch",
                     "tail_max_abs_diff", "tail_bound", "top1_ties"}
LAYER_KEYS = {"name", "neurons", "theta", "s_min", "s_max", "fan_out"}
SAMPLES = "16"


def _randomize(net, seed):
    from pmsm_compiler.training.activations import quantized_activations

    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    for _, m in quantized_activations(net):
        m.lam.data.fill_(float(rng.uniform(2, 10)))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_((torch.rand(c, generator=gen) - 0.5) * 0.6)
    return net


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.zoo import build_model

    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    pqa = _randomize(build_model("resnet_tiny", act="pqa"), 1)
    qcfs = _randomize(build_model("resnet_tiny", act="qcfs"), 2)
    paths = {}
    for key, net, exporter, pqa_as in [("node", pqa, "dynamo", "node"), ("dynamo_plain", pqa, "dynamo", "plain"),
                                       ("legacy_plain", pqa, "legacy", "plain"), ("qcfs", qcfs, "legacy", "plain")]:
        d = root / key
        d.mkdir()
        paths[key] = d / f"{key}.onnx"
        export_onnx(net, str(paths[key]), exporter=exporter, pqa_as=pqa_as)
    return paths


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def listing(directory):
    return sorted(os.listdir(directory))


def no_temp_files(directory):
    return not [f for f in os.listdir(directory) if f.endswith(".tmp")]


def run_ok(model, tmp_path, *flags):
    out, report = tmp_path / "out.snn.onnx", tmp_path / "report.json"
    result = invoke(model, "-o", out, "--report", report, "--samples", SAMPLES, "-q", *flags)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert out.is_file() and no_temp_files(tmp_path) and no_temp_files(model.parent)
    return json.loads(report.read_text()), onnx.load(str(out))


def check_schema(report, mode):
    assert REPORT_KEYS <= set(report)
    assert report["schema_version"] == REPORT_SCHEMA_VERSION == 1
    assert report["tool"] == "pmsm-compile" and report["mode"] == mode
    phases = report["phase_seconds"]
    assert set(phases) == {"load", "compile", "verify"} | ({"save"} if report["output"] else set())
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases[p] for p in ("load", "compile", "verify")) <= report["total_seconds"] + 0.01
    # bytes, not getrusage's KiB: a process that ran onnxruntime has held more than 20 MiB
    peak = report["peak_memory_bytes"]
    assert peak is None if sys.platform == "win32" else isinstance(peak, int) and 20 << 20 < peak < 1 << 40, peak
    v = report["verification"]
    assert VERIFICATION_KEYS <= set(v)
    assert isinstance(v["passed"], bool) and isinstance(v["max_abs_diff"], float)
    assert v["level_agreement"] is None or 0.0 <= v["level_agreement"] <= 1.0
    assert v["top1_agreement"] is None or 0.0 <= v["top1_agreement"] <= 1.0
    assert report["layers"]
    for layer in report["layers"]:
        assert LAYER_KEYS <= set(layer)
        assert isinstance(layer["name"], str) and layer["neurons"] > 0 and layer["theta"] > 0
        assert isinstance(layer["s_min"], int) and isinstance(layer["s_max"], int)
        assert layer["fan_out"] is None or layer["fan_out"] >= 0


# ------------------------------------------------------------------------------------------
# successful compiles
# ------------------------------------------------------------------------------------------

def test_exact_node_form_zero_mismatches(models, tmp_path):
    report, snn = run_ok(models["node"], tmp_path, "--exact")
    check_schema(report, "exact")
    v = report["verification"]
    assert v["passed"] is True and v["failures"] == [] and v["policy"] == {"exact": True, "output_rtol": 1e-4}
    assert v["level_agreement"] == 1.0 and v["max_abs_diff"] == 0.0 and v["top1_agreement"] == 1.0
    assert v["samples"] == int(SAMPLES)
    assert len(report["layers"]) == 7
    assert all(l["mismatches"] == 0 and l["level_agreement"] == 1.0 for l in report["layers"])
    assert all((l["neuron"], l["s_min"], l["s_max"]) == ("AIF", -2, 8) for l in report["layers"])
    assert len({l["theta"] for l in report["layers"]}) == 7  # one random λ per layer
    assert report["output"] == str((tmp_path / "out.snn.onnx").resolve())
    info = read_snn_info(snn)
    assert info is not None and info["mode"] == "exact" and info["format"] == "pmsm-snn"
    assert SNN_METADATA_KEY == "pmsm.snn" and any(p.key == "pmsm.snn" for p in snn.metadata_props)
    assert [l["name"] for l in info["layers"]] == [l["name"] for l in report["layers"]]


def test_folded_mode_passes(models, tmp_path):
    report, snn = run_ok(models["node"], tmp_path)
    check_schema(report, "folded")
    v = report["verification"]
    assert v["passed"] is True and v["policy"] == {"max_level_mismatch": 0.01, "min_top1_agreement": 0.98,
                                                 "output_rtol": 1e-4}
    assert v["level_agreement"] >= 0.99 and v["top1_agreement"] >= 0.98
    assert read_snn_info(snn)["mode"] == "folded"


@pytest.mark.parametrize("key", ["dynamo_plain", "legacy_plain"])
def test_plain_export_both_exporters_exact(models, tmp_path, key):
    report, _ = run_ok(models[key], tmp_path, "--exact")
    check_schema(report, "exact")
    v = report["verification"]
    assert v["passed"] is True and v["level_agreement"] == 1.0 and v["max_abs_diff"] == 0.0
    assert len(report["layers"]) == 7 and all(l["mismatches"] == 0 for l in report["layers"])
    assert all(l["source"].startswith("plain ops") for l in report["layers"])


def test_qcfs_compiles_to_if_neurons(models, tmp_path):
    report, snn = run_ok(models["qcfs"], tmp_path)
    check_schema(report, "folded")
    assert {(l["kind"], l["neuron"], l["s_min"], l["s_max"]) for l in report["layers"]} == {("QCFS", "IF", 0, 1)}
    assert report["verification"]["lossy_layers_excluded"] is True
    assert report["verification"]["level_agreement"] is None  # no lossless layer to hold to the policy
    assert {n.op_type for n in snn.graph.node if n.domain == "pmsm"} == {"IF", "SpikeCounters"}


def test_default_output_path_and_summary(models, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(models["legacy_plain"].read_bytes())
    result = invoke(model, "--samples", "4")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "m.snn.onnx").is_file()
    assert "verification passed" in result.stdout.splitlines()[-1]
    assert listing(tmp_path) == ["m.onnx", "m.snn.onnx"]


# ------------------------------------------------------------------------------------------
# verification failure: exit 1, no model written
# ------------------------------------------------------------------------------------------

def test_forced_verification_failure_writes_no_model(models, tmp_path):
    out, report = tmp_path / "out.snn.onnx", tmp_path / "report.json"
    result = invoke(models["node"], "-o", out, "--report", report, "--samples", "4", "-q",
                    "--max-level-mismatch", "-1")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: verification failed") and "no model written" in lines[0]
    # folded mode on random inputs: the line says what to try
    assert "--calibration-data" in lines[0] and "--exact" in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists() and listing(tmp_path) == ["report.json"]  # the report says why
    with_data = invoke(models["node"], "-o", out, "--samples", "4", "-q", "--max-level-mismatch", "-1",
                       "--calibration-data", "bundled")
    assert with_data.exit_code == 1 and "--exact" in with_data.stderr and "--calibration-data" not in with_data.stderr
    data = json.loads(report.read_text())
    assert data["verification"]["passed"] is False and data["output"] is None
    assert data["verification"]["failures"]


def test_monkeypatched_verify_failure_exit_1(models, tmp_path, monkeypatch):
    import pmsm_compiler.verify as verify_module

    real = verify_module.verify

    def failing(*args, **kwargs):
        result = real(*args, **kwargs)
        return {**result, "passed": False, "failures": ["forced by the test"]}

    monkeypatch.setattr(verify_module, "verify", failing)
    out = tmp_path / "out.snn.onnx"
    result = invoke(models["legacy_plain"], "-o", out, "--exact", "--samples", "4", "-q")
    assert result.exit_code == 1 and "forced by the test" in result.stderr
    assert not out.exists() and listing(tmp_path) == []


# ------------------------------------------------------------------------------------------
# malformed inputs: exit 2, one line "error: ...", no traceback, no output file
# ------------------------------------------------------------------------------------------

def _save(model, path):
    path.write_bytes(model.SerializeToString())


def _graph_model(nodes, inits, x_dims=("N", 3, 8, 8), y_dims=("N", 4, 8, 8), opsets=(("", 20),), **kw):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_dims))
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], **kw)
    model.ir_version = 10
    return model


def _w(name="W", shape=(4, 3, 3, 3)):
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), name)


def _conv(inp="x", out="c", w="W"):
    return helper.make_node("Conv", [inp, w], [out], name="conv", pads=[1, 1, 1, 1])


def _plain_pqa(inp="c", out="y"):
    consts = [numpy_helper.from_array(np.asarray(v, np.float32), n)
              for n, v in [("s", 0.5), ("half", 0.5), ("lo", -2.0), ("hi", 8.0)]]
    nodes = [helper.make_node("Div", [inp, "s"], ["u"], name="div"),
             helper.make_node("Add", ["u", "half"], ["sh"], name="add"),
             helper.make_node("Floor", ["sh"], ["fl"], name="floor"),
             helper.make_node("Clip", ["fl", "lo", "hi"], ["k"], name="clip"),
             helper.make_node("Mul", ["k", "s"], [out], name="mul")]
    return nodes, consts


def make_nonexistent(d):
    return d / "missing.onnx"


def make_directory(d):
    (d / "model.onnx").mkdir()
    return d / "model.onnx"


def make_empty(d):
    (d / "empty.onnx").write_bytes(b"")
    return d / "empty.onnx"


def make_truncated(d, source):
    data = source.read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    return d / "truncated.onnx"


def make_png(d):
    (d / "image.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return d / "image.onnx"


def make_lstm(d):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, "N", 4])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 16, 3)).astype(np.float32), "Wl"),
             numpy_helper.from_array(rng.standard_normal((1, 16, 4)).astype(np.float32), "Rl")]
    graph = helper.make_graph([helper.make_node("LSTM", ["x", "Wl", "Rl"], ["y"], name="lstm", hidden_size=4)],
                              "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    _save(model, d / "lstm.onnx")
    return d / "lstm.onnx"


def make_custom_op(d):
    nodes, consts = _plain_pqa("m")
    model = _graph_model([_conv(), helper.make_node("Mystery", ["c"], ["m"], name="mystery", domain="acme"),
                          *nodes], [_w(), *consts], opsets=(("", 20), ("acme", 1)))
    _save(model, d / "custom.onnx")
    return d / "custom.onnx"


def make_missing_weights(d):
    nodes, consts = _plain_pqa()
    model = _graph_model([_conv(), *nodes], consts)  # W is never defined
    _save(model, d / "noweights.onnx")
    return d / "noweights.onnx"


def make_dynamic_spatial(d):
    nodes, consts = _plain_pqa()
    model = _graph_model([_conv(), *nodes], [_w(), *consts], x_dims=("N", 3, "H", "W"), y_dims=("N", 4, "H", "W"))
    _save(model, d / "dynamic.onnx")
    return d / "dynamic.onnx"


def make_external_outside(d):
    sub = d / "model_dir"
    sub.mkdir()
    secret = np.random.default_rng(0).standard_normal(4 * 3 * 3 * 3).astype(np.float32)
    (d / "secret.bin").write_bytes(secret.tobytes())
    nodes, consts = _plain_pqa()
    w = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 3, 3, 3])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", str(secret.nbytes))):
        w.external_data.add(key=key, value=value)
    _save(_graph_model([_conv(), *nodes], [w, *consts]), sub / "ext.onnx")
    return sub / "ext.onnx"


def make_no_quantizer(d):
    model = _graph_model([_conv(), helper.make_node("Relu", ["c"], ["y"], name="relu")], [_w()])
    _save(model, d / "relu.onnx")
    return d / "relu.onnx"


MALFORMED = {
    "nonexistent": (make_nonexistent, ["missing.onnx"]),
    "directory": (make_directory, ["director"]),
    "empty": (make_empty, ["empty"]),
    "truncated": (make_truncated, ["truncated.onnx"]),
    "png": (make_png, ["PNG"]),
    "lstm": (make_lstm, ["unsupported op", "LSTM"]),
    "custom_op": (make_custom_op, ["unsupported op", "acme::Mystery"]),
    "missing_weights": (make_missing_weights, ["missing weights", "'W'"]),
    "dynamic_spatial": (make_dynamic_spatial, ["dynamic dimension", "'H'", "'W'"]),
    "external_outside": (make_external_outside, ["external data", "../secret.bin", ".."]),
    "no_quantizer": (make_no_quantizer, ["no quantized activation", "found"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_exit_2(models, tmp_path, case):
    build, expected = MALFORMED[case]
    d = tmp_path / "work"
    d.mkdir()
    path = build(d, models["legacy_plain"]) if build is make_truncated else build(d)
    model_dir = path.parent if path.parent.exists() else d
    before = {p: listing(p) for p in {d, model_dir}}
    result = invoke(path, "--report", d / "report.json", "--samples", "4")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    for text in expected:
        assert text.lower() in lines[0].lower(), (text, lines[0])
    # nothing written: no model, no report, no temp file
    assert {p: listing(p) for p in before} == before


def test_output_directory_missing_exit_2(models, tmp_path):
    result = invoke(models["legacy_plain"], "-o", tmp_path / "nope" / "out.onnx", "--samples", "4")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write the compiled model") and "does not exist" in lines[0]
    assert listing(tmp_path) == []


def test_output_same_as_input_exit_2(models, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(models["legacy_plain"].read_bytes())
    result = invoke(model, "-o", model)
    assert result.exit_code == 2 and result.stderr.startswith("error: the output path must differ")
    assert model.read_bytes() == models["legacy_plain"].read_bytes()


def test_existing_output_replaced_atomically(models, tmp_path):
    out = tmp_path / "out.snn.onnx"
    out.write_bytes(b"old")
    report, snn = run_ok(models["legacy_plain"], tmp_path, "--exact")
    assert read_snn_info(snn)["mode"] == "exact"
    assert listing(tmp_path) == ["out.snn.onnx", "report.json"]
    # a failing run leaves the previous output as it was
    result = invoke(models["legacy_plain"], "-o", out, "--samples", "4", "--max-level-mismatch", "-1", "-q")
    assert result.exit_code == 1 and read_snn_info(onnx.load(str(out)))["mode"] == "exact"
    assert listing(tmp_path) == ["out.snn.onnx", "report.json"]


def test_real_process_one_line_no_traceback(tmp_path):
    """Outside CliRunner: the installed entry point's behaviour in a real process."""
    png = make_png(tmp_path)
    # cwd outside the checkout: the installed package, not the source folder, must be imported
    proc = subprocess.run([sys.executable, "-m", "pmsm_compiler.cli.compile", str(png)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert listing(tmp_path) == ["image.onnx"]


def test_input_shape_fixes_dynamic_height_and_width(tmp_path):
    """A model exported with dynamic H and W compiles once --input-shape fixes them (the batch may
    stay dynamic with a name), and the SNN then has that shape."""
    import sys as _sys

    _sys.path.insert(0, os.path.dirname(__file__))
    from hostile_corpus import base_model

    path = tmp_path / "dyn.onnx"
    onnx.save(base_model(dims=("N", 3, "H", "W")), path)
    for text, batch in (("x:Nx3x32x32", "N"), ("1,3,32,32", 1), ("x:[2,3,32,32]", 2)):
        out = tmp_path / f"dyn_{batch}.snn.onnx"
        r = CliRunner().invoke(main, [str(path), "-o", str(out), "--samples", "4", "--input-shape", text, "-q"])
        assert r.exit_code == 0, r.output
        assert read_snn_info(onnx.load(out))["inputs"][0]["shape"] == [batch, 3, 32, 32]


def test_input_shape_fixes_the_batch_of_the_shipped_vit(tmp_path):
    """The shipped ViT (dynamo export: the class token's ``expand(B, -1, -1)`` reads
    ``Shape(input, end=1)``) compiles with a fixed batch, exactly equal to its ANN at T = 1. The
    folded shape took all of the input's dims and the compiled model failed the checker."""
    from pmsm_compiler.models import shipped_model_path

    out, report = tmp_path / "vit2.snn.onnx", tmp_path / "vit2.json"
    r = CliRunner().invoke(main, [str(shipped_model_path("vit_cifar_pqa_cifar10.onnx")), "-o", str(out), "--mode", "exact",
                                  "--samples", "8", "--input-shape", "input:2x3x32x32", "--json", str(report), "-q"])
    assert r.exit_code == 0, r.output
    assert read_snn_info(onnx.load(out))["inputs"][0]["shape"] == [2, 3, 32, 32]
    verification = json.loads(report.read_text())["verification"]
    assert verification["passed"] and verification["batch"] == 2 and verification["max_abs_diff"] == 0.0


@pytest.mark.parametrize("where", ["run_first_step", "session_for"], ids=["its run", "its session, built beside"])
def test_onnxruntime_refusing_the_snn_in_the_verification_is_one_line(models, tmp_path, monkeypatch, where):
    """An onnxruntime failure on the compiled SNN during the verification (a compiler bug, e.g.
    fuzzer seed 61973 before its fix) is one `error:` line and exit 2, and writes nothing: in its
    run, and in its session, which pmsm-compile builds in a thread of its own beside the ANN's."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    from pmsm_compiler.runtime import SNNSession

    def refuse(self, *args, **kwargs):
        raise state.InvalidArgument(f"[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Invalid model. Node input 'x' "
                                    f"is not a graph input ({where})")

    monkeypatch.setattr(SNNSession, where, refuse)
    out = tmp_path / "out.snn.onnx"
    result = invoke(models["node"], "-o", out, "--samples", "4", "-q")
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: onnxruntime cannot run the T = 1 verification of ")
    assert "Invalid model" in lines[0] and f"({where})" in lines[0] and "Traceback" not in result.output
    assert listing(tmp_path) == []


def test_a_model_file_changed_during_the_compile_is_one_line_exit_2(models, tmp_path, monkeypatch):
    """The verification reads the weights from the model file: written to meanwhile (the same bytes
    again, a later modification time), the compile is refused in one line naming the file."""
    import shutil

    from pmsm_compiler import verify as verify_module

    model = tmp_path / "in" / "m.onnx"
    model.parent.mkdir()
    shutil.copy(models["node"], model)
    verify = verify_module.verify

    def touch_then_verify(*args, **kwargs):
        model.write_bytes(model.read_bytes())
        os.utime(model, ns=(os.stat(model).st_mtime_ns + 10**9,) * 2)
        return verify(*args, **kwargs)

    monkeypatch.setattr(verify_module, "verify", touch_then_verify)
    out = tmp_path / "out.snn.onnx"
    result = invoke(model, "-o", out, "--samples", "4", "-q")
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{model} changed on disk" in lines[0]
    assert listing(tmp_path) == ["in"] and listing(model.parent) == ["m.onnx"]
