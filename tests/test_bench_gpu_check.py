"""bench/gpu_check.py, the prepared GPU check, runs end to end on the CPU provider (no GPU here):
every figure present, exact mode lossless at T = 1 with its sessions on the given provider, and an
unavailable provider refused in one line with exit 2."""

from __future__ import annotations

import json

from bench_scripts import load_bench_script


def test_gpu_check_on_the_cpu_provider(tmp_path, capsys):
    gpu = load_bench_script("gpu_check")
    out = tmp_path / "gpu.json"
    assert gpu.main(["--providers", "cpu", "--images", "32", "--batch-size", "16", "--timesteps", "2",
                     "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["model"], r["mode"]) for r in rows} == {(m, mode) for m in gpu.MODELS for mode in ("folded", "exact")}
    for r in rows:
        assert r["providers"] == ["CPUExecutionProvider"] and r["device"] == "cpu"
        assert r["ann_run_s"] > 0 and r["snn_step_s"] > 0 and r["images"] == 32 and r["batch"] == 16
        if r["mode"] == "exact" and "pqa" in r["model"]:
            assert r["verification"]["passed"] and r["verification"]["level_agreement"] == 1.0
            assert r["t1_prediction_agreement"] == 1.0 and r["accuracy_t1"] == r["ann_accuracy"]
    assert "step" in capsys.readouterr().out


def test_gpu_check_refuses_a_missing_provider(capsys):
    gpu = load_bench_script("gpu_check")
    assert gpu.main(["--providers", "NoSuchExecutionProvider", "--images", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: execution provider(s) not available: NoSuchExecutionProvider") and err.count("\n") == 1
