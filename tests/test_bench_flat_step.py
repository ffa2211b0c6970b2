"""bench/flat_step.py runs end to end on the bundled images (tiny budget): every figure present and
the ratio the one its per-step medians give."""

from __future__ import annotations

import json

import pytest

from bench_scripts import load_bench_script


def test_flat_step_small(tmp_path):
    bench = load_bench_script("flat_step")
    out = tmp_path / "flat.json"
    assert bench.main(["--images", "16", "--batch-size", "8", "--short", "1", "--long", "3", "--rounds", "1",
                       "--modes", "folded", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["mode"] == "folded" and row["short_t"] == 1 and row["long_t"] == 3
    assert row["per_step_ms_short"] > 0 and row["per_step_ms_long"] > 0
    assert row["ratio_long_over_short"] == pytest.approx(row["per_step_ms_long"] / row["per_step_ms_short"])


def test_flat_step_refuses_a_long_t_not_above_the_short_one():
    bench = load_bench_script("flat_step")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--short", "4", "--long", "4"])
    assert exc.value.code == 2
