"""bench/verify_side_by_side.py on the shipped ResNet-20: every way timed, their outputs identical."""

from __future__ import annotations

import json

import pytest

from bench_scripts import load_bench_script


def test_verify_side_by_side_small(tmp_path):
    bench = load_bench_script("verify_side_by_side")
    out = tmp_path / "sbs.json"
    assert bench.main(["--samples", "8", "--repeats", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "resnet20_pqa_cifar10.onnx" and row["identical"] is True and row["samples"] == 8
    all_cores = row["snn_threads"] > row["threads_each_side_by_side"]  # the ANN's results fit: 2+ cores
    assert set(row["ms_per_sample_pair"]) == {"one after the other", "side by side"} | (
        {"side by side, the SNN on all cores"} if all_cores else set())
    assert all(v > 0 for v in row["ms_per_sample_pair"].values()) and all(v > 0 for v in row["ratios"].values())


def test_verify_side_by_side_refuses_a_missing_model(tmp_path):
    bench = load_bench_script("verify_side_by_side")
    with pytest.raises(SystemExit) as exc:
        bench.main([str(tmp_path / "nope.onnx")])
    assert exc.value.code == 2
