"""pmsm-run end to end: compile resnet_tiny (exact), run it on the bundled sample, check tables,
JSON report and plots; every bad input exits 2 with one line and no traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pmsm_compiler.cli.compile import main as compile_main
from pmsm_compiler.cli.run import main as run_main, parse_providers
from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD, load_bundled_sample, normalize
from pmsm_compiler.limits import DEFAULT_TIME_PASS_BYTES
from pmsm_compiler.runtime.time_batched import default_time_batch_bytes
from pmsm_compiler.training.export import export_onnx
from pmsm_compiler.training.zoo import build_model
from pmsm_compiler.training.verify_export import randomize_for_check


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("run_cli")
    torch.manual_seed(0)
    net = build_model("resnet_tiny", act="pqa")
    calib = normalize(load_bundled_sample().x[900:932], CIFAR10_MEAN, CIFAR10_STD)
    randomize_for_check(net, torch.from_numpy(calib), seed=2)
    ann = d / "ann.onnx"
    export_onnx(net, str(ann))
    snn = d / "ann.snn.onnx"
    r = CliRunner().invoke(compile_main, [str(ann), "--exact", "-o", str(snn), "-q"])
    assert r.exit_code == 0, r.output
    return d, ann, snn


def test_run_with_ann_json_and_plots(models, tmp_path):
    _, ann, snn = models
    out = tmp_path / "out.json"
    plots = tmp_path / "plots"
    r = CliRunner().invoke(run_main, [str(snn), "--timesteps", "2", "--limit", "64", "--batch-size", "32",
                                      "--ann", str(ann), "--json", str(out), "--plot", str(plots), "--no-progress"])
    assert r.exit_code == 0, r.output
    for needle in ("accuracy by timestep", "ANN accuracy", "T=1 prediction agreement", "per layer",
                   "firing rate", "SOPs/image", "paper Eq. 11", "SOP convention"):
        assert needle in r.output, needle
    rep = json.loads(out.read_text())
    types = {"schema_version": int, "tool": str, "model": str, "mode": str, "timesteps": int, "samples": int,
             "accuracy_by_t": list, "ann_accuracy": float, "t1_prediction_agreement": float,
             "spikes_per_image_by_t": list, "spikes_per_image": float, "energy": dict, "layers": list}
    for key, typ in types.items():
        assert isinstance(rep[key], typ), (key, rep[key])
    assert rep["schema_version"] == 3 and rep["tool"] == "pmsm-run" and rep["mode"] == "exact"
    assert isinstance(rep["peak_memory_bytes"], int) and 20 << 20 < rep["peak_memory_bytes"] < 1 << 40
    assert rep["timesteps"] == 2 and rep["samples"] == 64
    assert len(rep["accuracy_by_t"]) == 2 and all(isinstance(a, float) for a in rep["accuracy_by_t"])
    assert len(rep["spikes_per_image_by_t"]) == 2
    assert rep["t1_prediction_agreement"] == 1.0
    assert rep["accuracy_by_t"][0] == rep["ann_accuracy"]
    assert rep["spikes_per_image"] == pytest.approx(sum(rep["spikes_per_image_by_t"]))
    assert rep["spikes_per_image"] > 0
    e = rep["energy"]
    for key in ("spikes_pj", "power_mw", "sops", "snn_sop_energy_pj", "ann_mac_energy_pj"):
        assert isinstance(e[key], float) and e[key] > 0, key
    assert (e["e_spike_pj"], e["e_ac_pj"], e["e_mac_pj"], e["timestep_ms"]) == (0.9, 0.9, 4.6, 1.0)
    assert isinstance(e["note"], dict) and set(e["note"]) >= {"spikes", "sops"}
    assert e["spikes_pj"] == pytest.approx(rep["spikes_per_image"] * 0.9)
    assert e["power_mw"] == pytest.approx(rep["spikes_per_image"] * 0.9e-12 / 2e-3 * 1e3)
    assert e["sops"] == pytest.approx(sum(l["sops"] for l in rep["layers"]))
    assert len(rep["layers"]) == 7
    for layer in rep["layers"]:
        assert isinstance(layer["name"], str) and layer["neuron"] == "AIF" and isinstance(layer["neurons"], int)
        assert len(layer["spikes_by_t"]) == 2 and isinstance(layer["spikes"], float)
        assert isinstance(layer["firing_rate"], float) and isinstance(layer["fan_out"], float)
        assert layer["sops"] == pytest.approx(layer["spikes"] * layer["fan_out"])
        assert layer["firing_rate"] == pytest.approx(layer["spikes"] / (layer["neurons"] * 2))
    # the counting rules: per layer and in total, consistent with the spikes and the neurons
    for layer in rep["layers"]:
        c = layer["counters_total"]
        assert c["spikes"] == layer["spikes_total"] and c["positive"] + c["negative"] == c["spikes"]
        assert c["events"] + c["at_zero"] == layer["neurons"] * 2 * 64  # neurons × T × samples
        assert 0 < c["events"] <= c["spikes"] and layer["events"] == c["events"] / 64
        assert layer["event_sops"] == pytest.approx(layer["events"] * layer["fan_out"])
        assert layer["zero_fraction"] == c["at_zero"] / (layer["neurons"] * 128)
    assert rep["events_per_image"] == pytest.approx(sum(rep["events_per_image_by_t"]))
    assert rep["counters_total"]["spikes"] == rep["spikes_total"]
    assert e["event_sops"] == pytest.approx(sum(l["event_sops"] for l in rep["layers"]))
    assert e["per_image_uj"]["events"] == pytest.approx(e["event_sops"] * 0.9e-6)
    assert e["per_image_uj"]["spikes"] == pytest.approx(e["sops"] * 0.9e-6)
    assert e["per_image_uj_by_t"]["events"][-1] == pytest.approx(e["per_image_uj"]["events"])
    assert 0 < e["per_image_uj"]["events"] < e["per_image_uj"]["spikes"]  # multi-spikes: fewer events than spikes
    # --ann without --target-accuracy: compared at the ANN's accuracy, which exact mode has at T = 1
    eq = rep["equal_accuracy"]
    assert eq["target"] == rep["ann_accuracy"] and eq["target_rule"] == "the ANN's accuracy"
    assert eq["snn"]["t"] == 1 and eq["snn"]["energy_per_image_uj"]["events"] == e["per_image_uj_by_t"]["events"][0]
    assert eq["ann"]["energy_per_image_uj"] == pytest.approx(e["ann_mac_energy_pj"] * 1e-6)
    for needle in ("counting rules per layer", "events/image", "at lower cap", "SNN, events rule",
                   "at equal accuracy (target", "SNN reaches it at T=1"):
        assert needle in r.output, needle
    summary = r.output.splitlines()[-1]
    assert "events/image" in summary and "mW (Eq. 11); reaches " in summary and "at T=1" in summary
    for name in ("accuracy_vs_t.png", "spikes_per_layer.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from pmsm_compiler import kernels

    fk = rep["fused_kernels"]
    assert set(fk) == {"used", "layers_fused", "reason", "unfused"} and fk["unfused"] == []
    assert fk["used"] == kernels.status()["available"] and fk["layers_fused"] == (7 if fk["used"] else 0)


def test_kernels_off_and_steps_one_by_one_give_the_same_report(models, tmp_path):
    from pmsm_compiler import kernels

    _, _, snn = models
    reports = []
    for label, args in (("auto", ["--batch-size", "8"]), ("off", ["--kernels", "off"]), ("one", ["--time-batch", "1"]),
                        ("big", ["--limit", "512", "--batch-size", "512"])):
        out = tmp_path / f"{label}.json"
        r = CliRunner().invoke(run_main, [str(snn), "-T", "3", "--limit", "32", *args, "--json", str(out), "-q"])
        assert r.exit_code == 0, r.output
        reports.append(json.loads(out.read_text()))
    auto, off, one, big = reports
    assert off["fused_kernels"] == {"used": False, "layers_fused": 0, "reason": "--kernels off", "unfused": []}
    for key in ("accuracy_by_t", "spikes_per_image_by_t", "energy", "layers"):
        assert auto[key] == off[key] == one[key], key
    assert big["samples"] == 512 and auto["samples"] == 32
    if kernels.status()["available"]:  # 8 samples, T = 3: the three steps in one pass
        assert auto["time_batched"] == {"steps_per_run": 3, "reason": None}
        # over this machine's step budget (twice its L2), or over half the pass budget
        budgets = (f"over the {default_time_batch_bytes():,} of a layer-by-layer step",
                   f"over half the {DEFAULT_TIME_PASS_BYTES:,} of a layer-by-layer pass")
        reason = big["time_batched"]["reason"]
        assert reason.startswith("one step of 512 samples holds ") and reason.endswith(budgets), reason
    assert off["time_batched"]["steps_per_run"] == 1 and "fused neuron kernels" in off["time_batched"]["reason"]
    assert one["time_batched"] == {"steps_per_run": 1, "reason": "time_batch = 1"}


def test_time_batch_must_be_positive(models):
    _, _, snn = models
    r = CliRunner().invoke(run_main, [str(snn), "-T", "2", "--time-batch", "0"])
    assert r.exit_code != 0 and r.output.strip().splitlines()[-1] == "error: --time-batch must be >= 1, got 0"


@pytest.mark.parametrize("target,expected", [("1.0", 1.0), ("0%", 0.0), ("0.05", 0.05), ("5%", 0.05)])
def test_target_accuracy(models, tmp_path, target, expected):
    _, _, snn = models
    out = tmp_path / "t.json"
    r = CliRunner().invoke(run_main, [str(snn), "-T", "3", "--limit", "32", "--target-accuracy", target,
                                      "--json", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    eq = rep["equal_accuracy"]
    assert eq["target"] == pytest.approx(expected) and eq["target_rule"] == "given" and eq["ann"]["accuracy"] is None
    acc = rep["accuracy_by_t"]
    t = next((i for i, a in enumerate(acc, 1) if a >= eq["target"]), None)
    assert eq["snn"]["t"] == t and eq["snn"]["reached"] == (t is not None)
    if t is None:  # 100 %: not reached, said so
        assert "does not reach it within T=3" in r.output and eq["snn"]["energy_per_image_uj"]["spikes"] is None
    else:
        assert f"SNN reaches it at T={t}" in r.output


@pytest.mark.parametrize("target", ["1.5", "-0.1", "150%", "abc", "nan"])
def test_bad_target_accuracy(models, target):
    _, _, snn = models
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--limit", "4", "--target-accuracy", target]),
                    "--target-accuracy")


def test_target_accuracy_needs_labels(models, tmp_path):
    _, _, snn = models
    data = tmp_path / "unlabeled.npy"
    np.save(data, np.zeros((4, 32, 32, 3), np.uint8))
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--data", str(data),
                                                  "--target-accuracy", "0.5"]), "needs labels")


def test_kernels_on_without_kernels_is_a_clean_error(models, monkeypatch):
    from pmsm_compiler import kernels

    _, _, snn = models
    monkeypatch.setattr(kernels, "_STATE", {})
    monkeypatch.setenv("PMSM_KERNELS", "off")
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--limit", "4", "--kernels", "on"]),
                    "fused neuron kernels unavailable")


def test_run_without_ann_quiet(models):
    _, _, snn = models
    r = CliRunner().invoke(run_main, [str(snn), "-T", "1", "--limit", "8", "-q"])
    assert r.exit_code == 0, r.output
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("T=1: accuracy")


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_ann_as_model_is_refused(models):
    _, ann, _ = models
    _one_line_error(CliRunner().invoke(run_main, [str(ann), "--timesteps", "1", "--limit", "4"]), "not a compiled SNN")


def test_snn_as_ann_is_refused(models):
    _, _, snn = models
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--limit", "4", "--ann", str(snn)]),
                    "compiled SNN")


@pytest.mark.parametrize("t", ["0", "-3"])
def test_timesteps_below_1(models, t):
    _, _, snn = models
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "--timesteps", t]), "--timesteps")


def test_wrong_image_size(models, tmp_path):
    _, _, snn = models
    data = tmp_path / "small.npz"
    np.savez(data, x=np.zeros((4, 16, 16, 3), np.uint8), y=np.zeros(4, np.uint8))
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--data", str(data)]), "shape")


def test_corrupt_npz(models, tmp_path):
    _, _, snn = models
    data = tmp_path / "corrupt.npz"
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4, np.uint8))
    data.write_bytes(good.read_bytes()[:200])  # a truncated zip archive
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--data", str(data)]), str(data))
    missing = tmp_path / "missing.npz"
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--data", str(missing)]))


def test_unknown_provider(models):
    _, _, snn = models
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--providers", "FooExecutionProvider"]),
                    "FooExecutionProvider")


def test_unwritable_outputs(models, tmp_path):
    _, _, snn = models
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--json", str(tmp_path / "no" / "r.json")]),
                    "does not exist")
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--json", str(tmp_path)]), "directory")
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_error(CliRunner().invoke(run_main, [str(snn), "-T", "1", "--plot", str(afile)]), "not a directory")


def test_parse_providers():
    assert parse_providers(()) is None
    assert parse_providers(["cpu"]) == ["CPUExecutionProvider"]
    assert parse_providers(["CUDAExecutionProvider,cpu", "Foo"]) == ["CUDAExecutionProvider",
                                                                    "CPUExecutionProvider", "Foo"]
