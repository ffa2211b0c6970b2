"""Hostile inputs: the corpus (tests/hostile_corpus.py) through the real command-line tools, and the
hostile-looking inputs that are valid and must work (duplicate node names, uint8 images, both
ends of the opset range), and interrupts.

Every refusal: the case's exit code, exactly one line on stderr that starts with ``error:`` and
matches the case's regex, no traceback, no warning on stdout (nor a Python warning raised), and
no output file (model, report, JSON) written. In-process through click's CliRunner; the cases
marked ``process`` also in a real process, where C++ loggers (onnxruntime) would show too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hostile_corpus import (CASES, SIDE, Artifacts, _two_inputs, base_model, kernel_contradicts_weight,
                            plain_model, save, write_black_images_npz)
from onnx import TensorProto

from pmsm_compiler.cli.compile import main as compile_main
from pmsm_compiler.cli.run import main as run_main
from pmsm_compiler.compiler import compile_model
from pmsm_compiler.errors import InputError
from pmsm_compiler.loading import load_model, unique_node_names
from pmsm_compiler.snn_format import DataInput, SNNInfo, read_snn_info

MAINS = {"compile": compile_main, "run": run_main}
LAUNCHERS = {"compile": "compile_main", "run": "run_main"}
WARNING_LINE = re.compile(r"(?i)warn|\[[WEC]\]|traceback|error")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Artifacts:
    d = tmp_path_factory.mktemp("hostile_artifacts")

    def compiled(model, name):
        path = save(model, d / f"{name}.onnx")
        snn = d / f"{name}.snn.onnx"
        onnx.save(compile_model(load_model(path, static_inputs=False), mode="exact").model, snn)
        return path, snn

    ann, snn = compiled(base_model(), "ann")
    _, u8_snn = compiled(base_model(in_type=TensorProto.UINT8), "u8")
    _, two = compiled(_two_inputs(), "two_inputs")
    bad = base_model()
    bad.metadata_props.add(key="pmsm.export", value='{"normalization": {"mean": "x"}}')
    _, bad_norm = compiled(bad, "bad_norm")
    _, broken = compiled(kernel_contradicts_weight(), "broken")
    return Artifacts(d, ann, snn, u8_snn, two, bad_norm, broken)


def _snapshot(*folders):
    return {str(f): sorted(os.path.relpath(os.path.join(root, n), f) for root, dirs, files in os.walk(f)
                           for n in dirs + files) for f in folders}


def _prepare(case, artifacts, tmp_path):
    if case.skip:
        pytest.skip(case.skip)
    d = tmp_path / "work"
    d.mkdir()
    args = [str(a) for a in case.make(d, artifacts)]
    outputs = []
    if case.tool == "compile" and case.outputs:
        outputs = [d / "out.snn.onnx", d / "report.json"]
        args += ["-o", str(outputs[0]), "--report", str(outputs[1])]
    elif case.tool == "run":
        if case.outputs:
            outputs = [d / "report.json"]
            args += ["--json", str(outputs[0])]
        args.append("--no-progress")
    return d, args, outputs


def _check_refusal(case, exit_code, stdout, stderr):
    assert exit_code == case.exit_code, (exit_code, stdout, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and stderr.endswith("\n"), stderr
    assert re.search(case.message, lines[0]), (case.message, lines[0])
    assert "Traceback" not in stdout + stderr
    assert not [line for line in stdout.splitlines() if WARNING_LINE.search(line)], stdout


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused(case, artifacts, tmp_path):
    d, args, outputs = _prepare(case, artifacts, tmp_path)
    before = _snapshot(d, artifacts.folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(MAINS[case.tool], args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    _check_refusal(case, result.exit_code, result.stdout, result.stderr)
    assert not [str(w.message) for w in caught]
    assert _snapshot(d, artifacts.folder) == before
    assert not [o for o in outputs if o.exists()]


def _launch(tool, args, cwd, **kw):
    """The tool as its console script runs it (pmsm_compiler.cli's launcher), in a real process."""
    code = f"from pmsm_compiler.cli import {LAUNCHERS[tool]}; {LAUNCHERS[tool]}()"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("case", [c for c in CASES if c.process], ids=[c.name for c in CASES if c.process])
def test_refused_in_a_real_process(case, artifacts, tmp_path):
    d, args, outputs = _prepare(case, artifacts, tmp_path)
    before = _snapshot(d, artifacts.folder)
    proc = _launch(case.tool, args, cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=180)
    _check_refusal(case, proc.returncode, stdout, stderr)
    assert _snapshot(d, artifacts.folder) == before
    assert not [o for o in outputs if o.exists()]


def test_corpus_covers_issue_15_item_5():
    """Every hostile input of issue 15, item 5 has its case (the corpus may only grow)."""
    names = {c.name for c in CASES}
    assert {"huge_input_dims", "constant_of_shape_2_34", "sparse_initializer_2_40", "opset_99", "two_inputs",
            "pqa_L_0", "pqa_lambda_inf", "timesteps_1e9", "pqa_alpha_L_fraction", "pmsm_domain_version",
            "output_twice", "labels_out_of_range", "npz_header_declares_4_GiB", "npz_zip_bomb"} <= names
    assert len(names) == len(CASES) >= 80


# ---------------------------------------------------------------------------------------------
# valid inputs that look hostile: they must work
# ---------------------------------------------------------------------------------------------

def _ok(main, args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    assert not [line for line in result.stdout.splitlines() if WARNING_LINE.search(line)], result.stdout
    assert not [str(w.message) for w in caught]
    return result


@pytest.mark.parametrize("name", ["same", ""])
def test_repeated_or_empty_node_names_compile_and_run(tmp_path, name):
    model = base_model()
    for node in model.graph.node:
        node.name = name
    path = save(model, tmp_path / "m.onnx")
    report = tmp_path / "r.json"
    _ok(compile_main, [path, "-o", tmp_path / "m.snn.onnx", "--report", report, "--exact", "--samples", "8"])
    import json

    layers = [layer["name"] for layer in json.loads(report.read_text())["layers"]]
    assert len(layers) == len(set(layers)) == 1
    _ok(run_main, [tmp_path / "m.snn.onnx", "-T", "2", "--limit", "16", "--ann", path, "--no-progress", "-q"])


def test_repeated_node_names_get_deterministic_unique_names():
    model = base_model()
    for node, name in zip(model.graph.node, ["a", "a", "a_1", "", "a"]):
        node.name = name
    assert unique_node_names(model) == 2
    assert [n.name for n in model.graph.node] == ["a", "a_2", "a_1", "", "a_3"]
    assert unique_node_names(model) == 0


def test_repeated_node_names_leave_stdout_clean_in_a_real_process(tmp_path):
    model = base_model()
    for node in model.graph.node:
        node.name = "same"
    path = save(model, tmp_path / "m.onnx")
    proc = _launch("compile", [str(path), "-q", "--samples", "4"], cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0 and stderr == "", stderr
    assert stdout.splitlines()[-1].startswith("wrote ") and len(stdout.splitlines()) == 1, stdout


def test_graphsurgeon_and_onnxruntime_logs_are_silenced(capsys):
    from onnx_graphsurgeon.logger import G_LOGGER

    from pmsm_compiler.errors import quiet_third_party_logs

    old = G_LOGGER.severity
    try:
        quiet_third_party_logs()
        G_LOGGER.warning("Found distinct Nodes that share the same name")
        G_LOGGER.error("an error")
        assert capsys.readouterr().out == ""
    finally:
        G_LOGGER.severity = old


def test_uint8_image_input_compiles_and_runs_raw(tmp_path):
    import json

    ann = save(base_model(in_type=TensorProto.UINT8), tmp_path / "u8.onnx")
    snn, report, run_json = tmp_path / "u8.snn.onnx", tmp_path / "r.json", tmp_path / "run.json"
    _ok(compile_main, [ann, "-o", snn, "--report", report, "--exact", "-q"])
    verification = json.loads(report.read_text())["verification"]
    assert verification["passed"] and verification["data"].startswith("random uniform uint8")
    assert verification["max_abs_diff"] == 0.0
    _ok(compile_main, [ann, "-o", snn, "--exact", "--calibration-data", "bundled", "--samples", "32", "-q"])
    assert read_snn_info(onnx.load(str(snn)))["inputs"][0]["dtype"] == "uint8"
    _ok(run_main, [snn, "-T", "1", "--limit", "64", "--ann", ann, "--json", run_json, "--no-progress", "-q"])
    rep = json.loads(run_json.read_text())
    assert rep["t1_prediction_agreement"] == 1.0 and rep["normalization"] == {"choice": "raw", "mean": None,
                                                                              "std": None}
    # fed raw: the SNN's T=1 predictions are the ANN's on the untouched NCHW pixels
    import onnxruntime as ort

    from pmsm_compiler.data import load_bundled_sample
    from pmsm_compiler.runtime import SNNSession

    x = np.ascontiguousarray(load_bundled_sample().x[:64].transpose(0, 3, 1, 2))
    expected = ort.InferenceSession(str(ann)).run(None, {"x": x})[0].argmax(1)
    np.testing.assert_array_equal(SNNSession(str(snn)).run_batch(x, 1).predictions_by_t[0], expected)


@pytest.mark.parametrize("opset", [15, 28])
def test_both_ends_of_the_opset_range_compile_and_run(tmp_path, opset):
    from pmsm_compiler.limits import supported_opsets

    assert supported_opsets() == (15, 28)
    for i, model in enumerate([base_model(opset=opset), plain_model(opset=opset)]):
        path = save(model, tmp_path / f"m{i}.onnx")
        _ok(compile_main, [path, "-o", tmp_path / f"m{i}.snn.onnx", "--exact", "--samples", "8", "-q"])
        _ok(run_main, [tmp_path / f"m{i}.snn.onnx", "-T", "2", "--limit", "16", "--no-progress", "-q"])


def test_opset_below_the_range_is_converted_on_loading(tmp_path):
    """Refused before, with the command to convert it; now converted on loading (checked in
    onnxruntime, ``pmsm_compiler.opset_upgrade``) into the SNN the converted model compiles to."""
    from onnx import version_converter

    old = save(plain_model(opset=13), tmp_path / "old.onnx")
    result = CliRunner().invoke(compile_main, [str(old), "-o", str(tmp_path / "old.snn.onnx"), "--exact",
                                               "--samples", "8"])
    assert result.exit_code == 0, result.output
    assert "converted from opset 13 to 15" in result.output.splitlines()[0]
    converted = version_converter.convert_version(onnx.load(str(old)), 15)
    converted.ir_version = max(converted.ir_version, 8)
    new = save(converted, tmp_path / "new.onnx")
    _ok(compile_main, [new, "-o", tmp_path / "new.snn.onnx", "--exact", "--samples", "8", "-q"])
    a, b = onnx.load(str(tmp_path / "old.snn.onnx")), onnx.load(str(tmp_path / "new.snn.onnx"))
    assert a.graph == b.graph and a.functions == b.functions


def test_random_inputs_follow_the_input_type():
    from pmsm_compiler.verify import random_inputs

    def info(dtype, shape=("N", 3, 5, 7)):
        return SNNInfo(inputs=[DataInput("x", list(shape), dtype)])

    # float32 (and models compiled before the dtype was recorded): the same stream as before
    expected = np.random.default_rng(3).standard_normal((17, 3, 5, 7)).astype(np.float32)
    for dtype in (None, "float"):
        np.testing.assert_array_equal(random_inputs(info(dtype), 17, 3), expected)
    u8 = random_inputs(info("uint8"), 64, 0)
    assert u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255
    i8 = random_inputs(info("int8"), 64, 0)
    assert i8.dtype == np.int8 and i8.min() == -128 and i8.max() == 127
    assert random_inputs(info("bool"), 8, 0).dtype == np.bool_
    f16 = random_inputs(info("float16"), 64, 0)
    assert f16.dtype == np.float16 and abs(float(f16.astype(np.float32).std()) - 1) < 0.05
    with pytest.raises(InputError, match="element type bfloat16"):
        random_inputs(info("bfloat16"), 4, 0)
    with pytest.raises(InputError, match=r"1,000,000,000 samples need .* over the limit"):
        random_inputs(info("float", ("N", 3, 32, 32)), 10**9, 0)


def test_timestep_limit_is_inclusive():
    from pmsm_compiler.limits import MAX_TIMESTEPS, check_timesteps

    assert check_timesteps(MAX_TIMESTEPS) == MAX_TIMESTEPS
    with pytest.raises(InputError, match="over the limit"):
        check_timesteps(MAX_TIMESTEPS + 1)


def test_small_compressed_npz_of_zeros_still_loads(tmp_path):
    """The expansion limit applies only to members over 64 MiB: small synthetic data sets load."""
    from pmsm_compiler.data import load_npz

    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((500, SIDE, SIDE, 3), np.uint8), y=np.zeros(500, np.int64))
    assert load_npz(path).x.shape == (500, SIDE, SIDE, 3)
    # the zip-bomb case's archive with fewer images: 20,000 black images are 58.6 MiB, under 64 MiB
    np.testing.assert_array_equal(load_npz(write_black_images_npz(tmp_path / "black.npz", 20_000)).x[-1], 0)


# ---------------------------------------------------------------------------------------------
# interrupts: "error: interrupted", exit 130, at any point (imports included)
# ---------------------------------------------------------------------------------------------

def _pythonpath(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_interrupt_during_the_imports(tmp_path):
    (tmp_path / "slow_cli.py").write_text(textwrap.dedent("""
        import os, signal, time
        os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C came while onnx and onnxruntime load
        time.sleep(30)

        def main():
            raise SystemExit(0)
    """))
    proc = subprocess.run([sys.executable, "-c", "from pmsm_compiler.cli import launch; launch('slow_cli')"],
                          cwd=tmp_path, env=_pythonpath(tmp_path), capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", "error: interrupted\n")


def test_interrupt_during_an_atomic_write_cleans_up(tmp_path):
    (tmp_path / "writer_cli.py").write_text(textwrap.dedent("""
        import os, signal
        import click
        from pmsm_compiler.errors import cli_errors
        from pmsm_compiler.loading import save_bytes_atomic

        @click.command()
        @cli_errors
        def main():
            real_fsync = os.fsync
            def fsync(fd):  # the interrupt arrives mid-write, after the data, before the rename
                os.kill(os.getpid(), signal.SIGINT)
                real_fsync(fd)
            os.fsync = fsync
            save_bytes_atomic(b"new", "out.bin")
    """))
    (tmp_path / "out.bin").write_bytes(b"old")
    proc = subprocess.run([sys.executable, "-c", "from pmsm_compiler.cli import launch; launch('writer_cli')"],
                          cwd=tmp_path, env=_pythonpath(tmp_path), capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", "error: interrupted\n")
    assert (tmp_path / "out.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.bin")) == []


@pytest.mark.parametrize("delay", [0.3, 2.5])
def test_interrupt_of_pmsm_run(artifacts, tmp_path, delay):
    """SIGINT early (onnx, onnxruntime loading) or late (at work, T = 2,000): the same one line."""
    out = tmp_path / "run.json"
    proc = _launch("run", [str(artifacts.snn), "-T", "2000", "--json", str(out), "--no-progress"], cwd=tmp_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stdout, stderr) == (130, "", "error: interrupted\n")
    assert list(tmp_path.iterdir()) == []
