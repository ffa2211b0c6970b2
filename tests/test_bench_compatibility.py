"""bench/compatibility.py and bench/ptq_resnet20.py run end to end on the bundled images (no
../shared): tiny budgets, every number of their JSON present, and the claims they tabulate hold
where they are exact: in exact mode the SNN's T = 1 predictions and levels are the quantized
ANN's, on every image."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("brevitas")

from bench_scripts import load_bench_script  # noqa: E402


def _check_exact_rows(result, modes):
    assert set(result["modes"]) == set(modes)
    for mode, m in result["modes"].items():
        v = m["verification"]
        assert v["samples"] == result["test_images"] and v["level_agreement"] is not None
        assert len(m["accuracy_by_t"]) == len(m["spikes_per_image_by_t"]) and m["spikes_per_image_by_t"][0] > 0
        assert 0 <= m["ann_accuracy"] <= 1 and m["neurons"] > 0
        if mode == "exact":
            assert v["passed"] and v["level_agreement"] == 1.0 and v["max_abs_diff"] == 0
            assert m["t1_prediction_agreement"] == 1.0 and m["accuracy_by_t"][0] == m["ann_accuracy"]


def test_compatibility_table_on_the_bundled_images(tmp_path, capsys):
    out = tmp_path / "compat.json"
    producers = "ort-u8-per-tensor,pt2e-xnnpack,brevitas-4bit"
    assert load_bench_script("compatibility").main(
        ["--data", "bundled", "--train-images", "128", "--epochs", "1", "--test-images", "48", "--calibration", "32",
         "--max-t", "2", "--producers", producers, "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["command"].startswith("python bench/compatibility.py --data bundled")
    assert list(summary["results"]) == producers.split(",")
    for result in summary["results"].values():
        _check_exact_rows(result, ("exact", "folded"))
    brevitas = summary["results"]["brevitas-4bit"]["modes"]["exact"]["layers"]
    assert sorted({(l["s_min"], l["s_max"]) for l in brevitas}) == [(-128, 127), (0, 15)]
    table = capsys.readouterr().out
    assert table.count("| exact |") == 3 and table.count("| folded |") == 3


def test_ptq_resnet20_on_a_random_relu_resnet(tmp_path, capsys):
    from pmsm_compiler.cli.export import main as export_main

    float_model = str(tmp_path / "float.onnx")
    export_main(["--act", "relu", "-o", float_model], standalone_mode=False)
    out = tmp_path / "ptq.json"
    assert load_bench_script("ptq_resnet20").main(
        ["--float-model", float_model, "--data", "bundled", "--calibration", "32", "--test-images", "24",
         "--max-t", "2", "--modes", "exact", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["quantizer"]["weights"] == "int8 per channel" and summary["calibration_images"] == 32
    assert 0 <= summary["float_accuracy"] <= 1 and 0 <= summary["deployed_ann_accuracy"] <= 1
    _check_exact_rows(summary, ("exact",))
    layers = summary["modes"]["exact"]["layers"]
    assert sum((l["s_min"], l["s_max"]) == (0, 255) for l in layers) >= 19  # uint8 after every ReLU
    assert "| exact |" in capsys.readouterr().out


def test_ptq_resnet20_reads_a_pmsm_train_checkpoint(tmp_path):
    """--float-model may be a pmsm-train checkpoint of a ReLU model: exported with pmsm-export,
    normalization recorded, the same function as the network in the checkpoint."""
    import numpy as np
    import torch

    from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD
    from pmsm_compiler.sessions import make_session
    from pmsm_compiler.training.zoo import build_model

    torch.manual_seed(0)
    net = build_model("resnet20", act="relu").eval()
    config = {"model": "resnet20", "act": "relu", "levels": 8, "lam": 8.0, "alpha": -0.25, "beta": 1.0,
              "num_classes": 10, "dataset": "cifar10"}
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": net.state_dict(), "config": config, "epoch": 1, "history": [{"test_acc": 0.1}]}, checkpoint)
    bench = load_bench_script("ptq_resnet20")
    path = bench.float_onnx(str(checkpoint), str(tmp_path))
    mean, std = bench.normalization(path)
    assert np.allclose(mean, CIFAR10_MEAN) and np.allclose(std, CIFAR10_STD)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(make_session(path).run(None, {"input": x})[0], expected, rtol=1e-4, atol=1e-4)
