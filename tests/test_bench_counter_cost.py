"""bench/counter_cost.py on a tiny model: both variants run, give the same spikes, and the ratio
is printed and written."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from bench_scripts import load_bench_script  # noqa: E402

from pmsm_compiler.training.export import export_onnx  # noqa: E402
from pmsm_compiler.training.zoo import build_model  # noqa: E402


def test_counter_cost_runs_and_reports_the_ratio(tmp_path, capsys):
    torch.manual_seed(0)
    model = tmp_path / "tiny.onnx"
    export_onnx(build_model("resnet_tiny", act="pqa").eval(), str(model))
    out = tmp_path / "cost.json"
    script = load_bench_script("counter_cost")
    assert script.main(["--model", str(model), "--batch", "4", "--rounds", "2", "--warmup", "0", "--timesteps", "2",
                        "--kernels", "auto", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| T=1 (one step)" in text and "| per step, T=2" in text and "counters' cost:" in text
    r = json.loads(out.read_text())
    assert r["rounds"] == 2 and r["layers"] == 7
    assert r["kernels"]["layers_fused"] == r["kernels_without"]["layers_fused"]
    for what in ("t1", "step"):
        assert r[what]["with_ms"] > 0 and r[what]["without_ms"] > 0
        assert r[what]["ratio_of_medians"] == pytest.approx(r[what]["with_ms"] / r[what]["without_ms"])
