"""bench/verify_floor.py on tiny models: one plain session built and run on the verification's
samples, at the model's own batch when it declares one."""

from __future__ import annotations

import json

import onnx
import pytest

from bench_scripts import load_bench_script
from tiny_models import chain_model


def test_verify_floor_small(tmp_path):
    bench = load_bench_script("verify_floor")
    dynamic, fixed = tmp_path / "dynamic.onnx", tmp_path / "fixed.onnx"
    onnx.save(chain_model(2), dynamic)
    model = chain_model(2)
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_value = 3
    onnx.save(model, fixed)
    out = tmp_path / "floor.json"
    assert bench.main([str(dynamic), str(fixed), "--samples", "8", "--batch", "4", "--repeats", "2",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["dynamic.onnx", "fixed.onnx"]
    assert [r["batch"] for r in rows] == [4, 3]  # a fixed batch dimension wins
    assert all(r["build_s"] > 0 and r["run_s"] > 0 and r["samples"] == 8 for r in rows)


def test_verify_floor_refuses_a_missing_model(tmp_path):
    bench = load_bench_script("verify_floor")
    with pytest.raises(SystemExit) as exc:
        bench.main([str(tmp_path / "nope.onnx")])
    assert exc.value.code == 2
