"""bench/time_batch_sweep.py runs end to end on a tiny zoo model: one row per batch and steps per
pass, ratios to the ReLU run, and the bytes each pass held."""

from __future__ import annotations

import json

import pytest

from bench_scripts import load_bench_script

pytest.importorskip("torch")


def test_time_batch_sweep_small(tmp_path):
    bench = load_bench_script("time_batch_sweep")
    out = tmp_path / "sweep.json"
    assert bench.main(["--model", "resnet_tiny", "--batches", "1,3", "--per-pass", "1,2,8", "--steps", "4",
                       "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["batch"], r["per_pass"]) for r in rows] == [(1, 1), (1, 2), (1, 4), (3, 1), (3, 2), (3, 4)]
    for r in rows:
        assert r["ratio_to_relu"] == pytest.approx(r["step_ms"] / r["relu_ms"])
        assert r["pass_layer_bytes"] == r["per_pass"] * r["batch"] * rows[0]["pass_layer_bytes"]


@pytest.mark.parametrize("args", [["--batches", "0"], ["--per-pass", "x"], ["--steps", "1"], ["--repeats", "0"]])
def test_time_batch_sweep_refuses_bad_options(args):
    bench = load_bench_script("time_batch_sweep")
    with pytest.raises(SystemExit) as exc:
        bench.main(args)
    assert exc.value.code == 2


def test_time_batch_sweep_on_a_shipped_transformer(tmp_path):
    bench = load_bench_script("time_batch_sweep")
    out = tmp_path / "sweep.json"
    assert bench.main(["--shipped", "vit_cifar_pqa_cifar10.onnx", "--batches", "1", "--per-pass", "1,2", "--steps", "2",
                       "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["reference"] == "ANN" and result["time_batched_note"] is None  # its passes run layer by layer
    assert [(r["batch"], r["per_pass"]) for r in result["rows"]] == [(1, 1), (1, 2)]
