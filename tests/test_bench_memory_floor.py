"""bench/memory_floor.py on a tiny model: pmsm-compile's peak and the floor's three rows, each from a
process of its own."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

from bench_scripts import load_bench_script
from tiny_models import chain_model

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peaks are read from /proc")


def test_memory_floor_small(tmp_path, capsys):
    bench = load_bench_script("memory_floor")
    path = tmp_path / "chain.onnx"
    onnx.save(chain_model(2), path)
    out = tmp_path / "floor.json"
    assert bench.main([str(path), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["budget"] == 3.0
    (row,) = result["results"]
    assert row["file_bytes"] == path.stat().st_size and row["snn_bytes"] > 0
    assert set(row["peaks"]) == {"compile", "imports", "ann", "ann+snn"}
    # the interpreter and its libraries weigh tens of MiB; a session and a run add to them
    assert all(peak > 10 * 2**20 for peak in row["peaks"].values())
    assert row["peaks"]["ann+snn"] > row["peaks"]["imports"] and row["peaks"]["ann"] > row["peaks"]["imports"]
    table = capsys.readouterr().out
    assert "budget 3x" in table and "chain.onnx" in table and "pmsm-compile" in table


def test_memory_floor_refuses_a_missing_model_and_a_model_that_does_not_compile(tmp_path):
    bench = load_bench_script("memory_floor")
    with pytest.raises(SystemExit) as exc:
        bench.main([str(tmp_path / "nope.onnx")])
    assert exc.value.code == 2
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(SystemExit) as exc:
        bench.main([str(broken)])
    assert "pmsm-compile" in str(exc.value.code) and "broken.onnx" in str(exc.value.code)
