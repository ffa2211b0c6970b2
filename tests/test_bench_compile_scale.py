"""bench/compile_scale.py end to end on tiny models (exported beforehand, without torch): one
process per compile, its peak memory and phases, the table and the linearity fit."""

from __future__ import annotations

import json

import onnx
import pytest

from bench_scripts import load_bench_script
from tiny_models import chain_model


def test_configurations_compile_a_model_once_per_shape():
    bench = load_bench_script("compile_scale")
    args = bench.argparse.Namespace(models="resnet20,vit_s", depths=[3, 12], dim=384, widths=[384, 768], depth=12,
                                    heads=6)
    configs = bench.configurations(args)
    assert [c["label"] for c in configs] == ["resnet20", "vit_s", "vit d3 w384", "vit d12 w768"]
    assert configs[1]["sweeps"] == ["depth", "width"] and configs[0]["sweeps"] == []


def test_linear_fit_is_exact_on_a_line():
    bench = load_bench_script("compile_scale")
    fit = bench.linear_fit([10, 20, 40], [1.5, 2.5, 4.5])
    assert fit["fixed"] == pytest.approx(0.5) and fit["per_unit"] == pytest.approx(0.1)
    assert fit["worst_residual"] == pytest.approx(0.0, abs=1e-12)


def test_compile_scale_small(tmp_path):
    bench = load_bench_script("compile_scale")
    models = tmp_path / "models"
    models.mkdir()
    # the models the depth sweep asks for, written in its cache (what --export would have made)
    for depth in (1, 3):
        path = models / f"vit_depth{depth}_dim48_heads6.onnx"
        model = chain_model(depth, channels=16)
        onnx.save(model, path)
        facts = {"nodes": len(model.graph.node), "weight_bytes": sum(len(t.raw_data) for t in model.graph.initializer),
                 "file_bytes": path.stat().st_size}
        (models / f"{path.name}.json").write_text(json.dumps(facts))
    out = tmp_path / "scale.json"
    assert bench.main(["--models", "", "--depths", "1,3", "--dim", "48", "--widths", "", "--samples", "4",
                       "--models-dir", str(models), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["label"] for r in rows] == ["vit d1 w48", "vit d3 w48"] and rows[1]["nodes"] > rows[0]["nodes"]
    for r in rows:
        assert r["verification_passed"] is True
        assert set(r["phases"]) == {"load", "compile", "verify", "save", "startup"}
        assert 0 < sum(r["phases"].values()) <= r["wall_s"] * 1.01
        assert 50 * 2**20 < r["peak_bytes"] < 2**31  # one compile's process: Python, onnx, onnxruntime
        assert r["peak_over_file"] == pytest.approx(r["peak_bytes"] / r["file_bytes"])
    lin = result["linearity"]
    assert [p["label"] for p in lin["points"]] == ["vit d1 w48", "vit d3 w48"]
    assert lin["time_vs_nodes"]["worst_residual"] == pytest.approx(0.0, abs=1e-9)  # two points: on the line
