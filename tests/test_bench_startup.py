"""bench/startup.py times the tools as fresh processes and reports against the 0.5 s target."""

from __future__ import annotations

import json

from bench_scripts import load_bench_script


def test_startup_bench_one_round(tmp_path):
    bench = load_bench_script("startup")
    out = tmp_path / "startup.json"
    assert bench.main(["--rounds", "1", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    rows = {r["command"]: r for r in summary["rows"]}
    assert {"pmsm-run --help", "pmsm-compile --help", "pmsm-run, 1 image, T = 1"} <= rows.keys()
    assert all(r["median_s"] > 0 and r["rounds"] == 1 for r in rows.values())
    first = rows["pmsm-run, 1 image, T = 1"]["median_s"]
    assert summary["first_step_within_target"] == (first < summary["target_first_step_s"])
    assert summary["ml_dtypes"] and summary["onnx"]
