"""bench/relu_floor.py runs end to end on a tiny zoo model: every configuration timed side by side,
ratios the ones the medians give, and per-op profiles that account for the traced kernel time."""

from __future__ import annotations

import json

import pytest

from bench_scripts import load_bench_script

pytest.importorskip("torch")


def test_relu_floor_small(tmp_path):
    bench = load_bench_script("relu_floor")
    out = tmp_path / "floor.json"
    assert bench.main(["--models", "resnet_tiny", "--batches", "2,1", "--repeats", "2", "--warmup", "0",
                       "--steps", "2", "--profile-runs", "2", "--reference", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    entry = result["models"]["resnet_tiny"]
    assert [b["times"]["batch"] for b in entry["batches"]] == [2, 1]
    for b in entry["batches"]:
        rows = {r["config"]: r for r in b["times"]["rows"]}
        # batches this small run their steps layer by layer, with the same steps one by one beside them
        assert set(rows) == {"ReLU ANN", "PQA ANN", "SNN folded, per step (T=2)", "SNN folded, T=1",
                             "SNN exact, per step (T=2)", "SNN exact, T=1", "SNN folded, per step, no rewrite",
                             "SNN exact, per step, no rewrite", "SNN folded, per step, step by step",
                             "SNN exact, per step, step by step"}
        for mode in ("folded", "exact"):
            r = b["times"]["step_rewrites"][mode]
            assert r["fused_layers"] == entry["layers"] and r["absorbed_ops"] > 0
        relu = rows["ReLU ANN"]["ms"]
        for row in rows.values():
            assert row["min_ms"] <= row["ms"] <= row["max_ms"]
            assert row["ratio_to_relu"] == pytest.approx(row["ms"] / relu)
        assert b["target"]["ratio"] == rows["SNN folded, per step (T=2)"]["ratio_to_relu"]
        assert b["target"]["met"] == (b["target"]["ratio"] <= 1.10)
        profiles = b["profiles"]
        assert set(profiles) == {"ReLU ANN", "SNN folded, middle step, step by step", "SNN exact, middle step, step by step",
                                 "SNN folded, middle step, step by step, no rewrite",
                                 "SNN exact, middle step, step by step, no rewrite",
                                 "SNN folded, layer by layer, per step (2 a pass)",
                                 "SNN exact, layer by layer, per step (2 a pass)"}
        for label, prof in profiles.items():
            assert prof["runs"] == 2 and prof["kernel_us"] > 0
            assert sum(op["share"] for op in prof["ops"]) == pytest.approx(1.0)
            assert sum(op["us"] for op in prof["ops"]) == pytest.approx(prof["kernel_us"])
        assert "Conv" in {op["op"] for op in profiles["ReLU ANN"]["ops"]}
        for label in ("SNN folded, middle step, step by step", "SNN folded, layer by layer, per step (2 a pass)"):
            snn_ops = {op["op"] for op in profiles[label]["ops"]}
            assert "Conv" in snn_ops and snn_ops & {"AIFCounters", "AIF"}, label
    assert "folded step / ReLU run" in bench.format_report(result)


@pytest.mark.parametrize("args", [["--batches", "0"], ["--batches", "a"], ["--steps", "1"], ["--repeats", "0"]])
def test_relu_floor_refuses_bad_options(args):
    bench = load_bench_script("relu_floor")
    with pytest.raises(SystemExit) as exc:
        bench.main(args)
    assert exc.value.code == 2
