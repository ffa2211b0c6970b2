"""bench/position_sensitivity.py: it finds Log's position-dependent rounding (which the runtime
refuses in a pass) and none in Exp's, and its verdict follows the runtime's tables."""

from __future__ import annotations

import json

from bench_scripts import load_bench_script


def test_position_sensitivity_finds_log_and_agrees_with_the_tables(tmp_path):
    bench = load_bench_script("position_sensitivity")
    out = tmp_path / "pos.json"
    assert bench.main(["--ops", "Log,Exp", "--threads", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert results["Log"]["aligned"], "Log no longer rounds by position: POSITION_SENSITIVE_OPS may shrink"
    assert results["Exp"] == {"aligned": [], "misaligned": []}


def test_position_sensitivity_fails_where_the_tables_would_be_wrong(tmp_path, monkeypatch):
    bench = load_bench_script("position_sensitivity")
    monkeypatch.setattr(bench, "POSITION_SENSITIVE_OPS", set())  # Log then counts as independent
    assert bench.main(["--ops", "Log", "--threads", "2"]) == 1
