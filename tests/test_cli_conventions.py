"""One set of CLI conventions over every tool (pmsm_compiler.cli.options): --json, -v/-q, the exit
codes in --help, the session flags wherever a session runs, --plot as a folder, progress bars only
on a terminal, the compile mode spelled --mode or --exact, and the old spellings kept working."""

from __future__ import annotations

import importlib
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from pmsm_compiler.cli.options import DEBUG, NORMAL, QUIET, VERBOSE, show_progress
from pmsm_compiler.models import shipped_model_path

COMMANDS = ["compile", "run", "demo", "entropy", "train", "export"]
SESSION_COMMANDS = ("compile", "run", "demo")  # every command that runs onnxruntime sessions
PQA = str(shipped_model_path("resnet20_pqa_cifar10.onnx"))
QCFS = str(shipped_model_path("resnet20_qcfs_cifar10.onnx"))


def _main(name):
    return importlib.import_module(f"pmsm_compiler.cli.{name}").main


def _invoke(name, args):
    return CliRunner().invoke(_main(name), [str(a) for a in args])


def _one_error_line(result, needle):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_help_states_the_shared_options_and_exit_codes(name):
    result = _invoke(name, ["--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # click wraps the epilog
    for option in ("--json", "-v, --verbose", "-q, --quiet", "--version"):
        assert option in text, option
    assert ("Exit codes: 0 success; 1 verification failed (the SNN does not reproduce the ANN; no model written); "
            "2 bad input or unsupported model (one line on stderr, starting with 'error:'); 130 interrupted") in text
    session_flags = ("--providers", "--threads", "--opt-level")
    if name in SESSION_COMMANDS:
        assert all(flag in text for flag in session_flags)


@pytest.mark.parametrize("name", ["compile", "demo"])
def test_both_commands_that_compile_take_both_mode_spellings(name):
    text = _invoke(name, ["--help"]).output
    assert "--mode [folded|exact]" in text and "--exact" in text


@pytest.mark.parametrize("name", COMMANDS)
def test_quiet_and_verbose_exclude_each_other(name):
    result = _invoke(name, ["-q", "-v"])
    assert result.exit_code == 2 and "-q and -v exclude each other" in result.output


def test_verbosity_levels_and_progress_default(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert (QUIET, NORMAL, VERBOSE, DEBUG) == (0, 1, 2, 3)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert show_progress(None) is False  # a log file, a pipe, CI
    assert show_progress(True) is True
    monkeypatch.setattr("sys.stderr", Tty())
    assert show_progress(None) is True
    assert show_progress(None, QUIET) is False and show_progress(False) is False


def test_compile_json_and_report_are_one_option(tmp_path):
    reports = {}
    for flag in ("--json", "--report"):
        out = tmp_path / f"{flag[2:]}.json"
        result = _invoke("compile", [PQA, "-o", tmp_path / f"{flag[2:]}.snn.onnx", "--samples", 2, flag, out, "-q"])
        assert result.exit_code == 0, result.output
        assert len(result.output.splitlines()) == 1 and result.output.startswith("wrote ")  # -q: the summary line
        reports[flag] = json.loads(out.read_text())
    assert reports["--json"].keys() == reports["--report"].keys()
    assert reports["--json"]["layers"] == reports["--report"]["layers"]


def test_compile_modes_and_verbose(tmp_path):
    out = tmp_path / "m.snn.onnx"
    result = _invoke("compile", [PQA, "-o", out, "--samples", 2, "--mode", "exact", "-v"])
    assert result.exit_code == 0, result.output
    assert "(exact mode," in result.output and "passes: check_inference_mode " in result.output
    result = _invoke("compile", [PQA, "-o", out, "--samples", 2, "--exact", "--mode", "exact", "-q"])
    assert result.exit_code == 0, result.output
    _one_error_line(_invoke("compile", [PQA, "-o", out, "--exact", "--mode", "folded"]),
                    "--exact contradicts --mode folded")


def test_entropy_plot_is_a_folder_and_a_png_path_still_a_file(tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "figures" / "new"
    result = _invoke("entropy", ["--plot", folder, "-q"])
    assert result.exit_code == 0, result.output
    assert (folder / "entropy_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # -q: the selected point and the file written, nothing of the table
    assert result.output.splitlines()[0].startswith("best:") and "alpha \\ beta" not in result.output
    result = _invoke("entropy", ["--plot", tmp_path / "e.png", "-v"])
    assert result.exit_code == 0 and (tmp_path / "e.png").is_file()
    assert "limits: ratio" in result.output and "alpha \\ beta" in result.output


def test_run_verbose_says_what_ran_the_neurons(tmp_path):
    snn = tmp_path / "m.snn.onnx"
    assert _invoke("compile", [PQA, "-o", snn, "--samples", 2, "-q"]).exit_code == 0
    result = _invoke("run", [snn, "-T", 1, "--limit", 8, "--kernels", "off", "-v", "--threads", 1])
    assert result.exit_code == 0, result.output
    assert "fused kernels: not used (--kernels off)" in result.output
    result = _invoke("run", [snn, "-T", 1, "--limit", 8, "-q", "--json", tmp_path / "r.json"])
    assert result.exit_code == 0 and len(result.output.splitlines()) == 1 and result.output.startswith("T=1: ")
    assert json.loads((tmp_path / "r.json").read_text())["tool"] == "pmsm-run"


def test_demo_single_t_exact_flag_session_flags_and_quiet(tmp_path):
    from pmsm_compiler.data import load_dataset

    data = load_dataset(None)
    np.savez(tmp_path / "few.npz", x=data.x[:16], y=data.y[:16])
    out = tmp_path / "demo.json"
    result = _invoke("demo", ["--model", PQA, "--qcfs-model", QCFS, "--data", tmp_path / "few.npz", "-T", 2,
                              "--exact", "--threads", 1, "--opt-level", "all", "--providers", "cpu",
                              "--json", out, "-q"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("done in ")  # -q: the summary line
    reports = json.loads(out.read_text())
    assert reports["PMSM (PQA → AIF)"]["mode"] == "exact" and reports["PMSM (PQA → AIF)"]["timesteps"] == 2


def test_demo_refuses_an_unwritable_json_before_the_run(tmp_path):
    _one_error_line(_invoke("demo", ["--json", tmp_path / "missing" / "demo.json"]), "does not exist")


def test_export_takes_the_clip_activation_train_has(tmp_path):
    pytest.importorskip("torch")
    out, report = tmp_path / "clip.onnx", tmp_path / "clip.json"
    result = _invoke("export", ["--model", "resnet_tiny", "--act", "clip", "--exporter", "legacy", "--pqa-as", "plain",
                                "-o", out, "--json", report, "-v"])
    assert result.exit_code == 0, result.output
    assert "ops: " in result.output and "Clip" in result.output
    data = json.loads(report.read_text())
    assert data["act"] == "clip" and data["ops"]["Clip"] == 7 and out.is_file()


def test_train_quiet_prints_only_its_summary_and_json_writes_it(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", x=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
                 y=rng.integers(0, 10, 16).astype(np.int64))
    out = tmp_path / "summary.json"
    result = _invoke("train", ["--data", folder, "--out", tmp_path / "run", "--model", "resnet_tiny", "--epochs", 1,
                               "--max-steps", 1, "--batch-size", 16, "--threads", 1, "--no-export", "--json", out,
                               "-q"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epochs_done"] == 1
    assert json.loads(out.read_text())["config"]["model"] == "resnet_tiny"
    assert "command:" in (tmp_path / "run" / "train.log").read_text()  # the log still gets every line


def test_compile_verifies_with_the_session_flags(tmp_path):
    """pmsm-compile's verification sessions take --providers/--threads as run's and demo's do."""
    out = tmp_path / "m.snn.onnx"
    result = _invoke("compile", [PQA, "-o", out, "--exact", "--threads", 1, "--providers", "cpu",
                                 "--opt-level", "disable", "--samples", 4, "-q"])
    assert result.exit_code == 0, result.output
    assert out.exists()
    bad = _invoke("compile", [PQA, "-o", tmp_path / "n.snn.onnx", "--providers", "nosuch", "-q"])
    assert bad.exit_code == 2 and not (tmp_path / "n.snn.onnx").exists()


def test_help_and_argument_checks_do_not_import_onnx(tmp_path):
    """onnx pulls in ml_dtypes (about a second on a small machine): no tool's --help needs it."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from pmsm_compiler.cli import compile, demo, entropy, export, run, train\n"
            "heavy = [m for m in ('onnx', 'onnxruntime', 'torch', 'onnx_graphsurgeon') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    # cwd outside the checkout: the installed package, not the source folder
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
