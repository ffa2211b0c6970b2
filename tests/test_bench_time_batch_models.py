"""bench/time_batch_models.py runs end to end: three models as users bring them, each layer by
layer at batch 1 and equal to its step-by-step run."""

from __future__ import annotations

import json

import pytest

from bench_scripts import load_bench_script

pytest.importorskip("torch")


def test_time_batch_models(tmp_path, library):
    bench = load_bench_script("time_batch_models")
    out = tmp_path / "models.json"
    assert bench.main(["--steps", "2", "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["shipped, dynamic batch", "shipped, --input-shape input:1x3x32x32",
                                          "legacy exporter, quantizers as plain ops"]
    for r in rows:
        assert r["equal"] and r["steps_per_run"] == 2 and r["reason"] is None, r
