"""bench/big_model.py on a small MLP: the model built with its weights in an external data file,
pmsm-compile and the runtime run on it as whole processes, the SNN written with external data."""

from __future__ import annotations

import json
import os

import pytest

from bench_scripts import load_bench_script


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts the bytes read in /proc/self/io (Linux)")
def test_big_model_small(tmp_path):
    bench = load_bench_script("big_model")
    out = tmp_path / "big.json"
    assert bench.main(["--width", "256", "--layers", "2", "--samples", "8", "--timesteps", "2", "--dir",
                       str(tmp_path / "m"), "--external-data", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["weights_bytes"] == (2 * 256 * 256 + 10 * 256) * 4
    assert result["data_file_bytes"] >= result["weights_bytes"]
    c = result["compile"]
    assert c["verification_passed"] is True and c["output_data"] is True
    assert c["snn_data_bytes"] >= result["weights_bytes"] and c["snn_file_bytes"] < 16_000
    assert c["read_bytes"] >= result["data_file_bytes"]  # the weights, and the imports' files
    # folded mode: the policy's top-1 agreement (0.98), at most one of the 64 inputs
    assert result["run"]["t1_agreement_with_ann"] >= 63 / 64 and result["run"]["spikes_per_sample_step"] > 0
    assert os.path.exists(tmp_path / "m" / "mlp.snn.onnx.data")
