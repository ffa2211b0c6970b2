"""bench/spike_front.py and bench/requantize_probe.py on the bundled images (no ../shared): the
front's figures come from the runtime's counters, the lossless claim holds for the PQA model in
exact mode, the Pareto flags follow their definition, and the probe reproduces the trained
levels' accuracy and spike count for the model's own configuration."""

from __future__ import annotations

import json
import os

import pytest

from bench_scripts import load_bench_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PQA = os.path.join(ROOT, "models", "resnet20_pqa_cifar10.onnx")
QCFS = os.path.join(ROOT, "models", "resnet20_qcfs_cifar10.onnx")


def test_pareto_definition():
    front = load_bench_script("spike_front")
    pts = [{"accuracy": 0.9, "c": 10}, {"accuracy": 0.8, "c": 5}, {"accuracy": 0.8, "c": 6},
           {"accuracy": 0.85, "c": 20}, {"accuracy": 0.9, "c": 10.0}]
    # equal points do not dominate each other; higher cost at lower accuracy is dominated
    assert front.pareto(pts, "c") == [True, True, False, False, True]


def test_against_baseline_finds_the_first_t_and_its_energy():
    front = load_bench_script("spike_front")
    by_t = [0.40, 0.70, 0.86, 0.90]
    baseline = {"accuracy_by_t": by_t, "spikes_per_image_by_t": [10, 10, 10, 10],
                "events_per_image_by_t": [10, 10, 10, 10],
                "energy": {"per_image_uj_by_t": {"spikes": [1.0, 2.0, 3.0, 4.0], "events": [1.0, 2.0, 3.0, 4.0]}}}
    pts = [{"label": "a", "accuracy": 0.85, "t1_prediction_agreement": 1.0,
            "energy_per_image_uj": {"spikes": 1.5, "events": 0.75}},
           {"label": "b", "accuracy": 0.95, "t1_prediction_agreement": 1.0,
            "energy_per_image_uj": {"spikes": 1.0, "events": 1.0}},
           {"label": "lossy", "accuracy": 0.5, "t1_prediction_agreement": 0.6,
            "energy_per_image_uj": {"spikes": 1.0, "events": 1.0}}]
    rows = front.against_baseline(pts, baseline, "QCFS")
    assert len(rows) == 4  # header, rule, a, b: the lossy point is not compared
    assert rows[2] == "| a | 85.00 % | 1.5 / 0.8 | T = 3 (86.00 %) | 3.0 / 3.0 | 2.00× / 4.00× |"
    assert rows[3] == "| b | 95.00 % | 1.0 / 1.0 | not within T ≤ 4 (best 90.00 %) | – | – |"


def test_front_on_the_bundled_images(tmp_path, capsys):
    front = load_bench_script("spike_front")
    out, js, fig = tmp_path / "front.md", tmp_path / "front.json", tmp_path / "front.png"
    assert front.main(["--data", "bundled", "--limit", "40", "--batch-size", "20", "--model", f"dense={PQA}",
                       "--model", f"qcfs={QCFS}", "--out", str(out), "--json", str(js), "--figure", str(fig)]) == 0
    points = {p["label"]: p for p in json.loads(js.read_text())["points"]}
    dense, qcfs = points["dense"], points["qcfs"]
    assert dense["t1_prediction_agreement"] == 1.0 and dense["accuracy"] == dense["ann_accuracy"]
    assert dense["verification_passed"] is True
    for p in (dense, qcfs):
        assert p["events_per_image"] <= p["spikes_per_image"]
        assert p["spikes_per_neuron"] == pytest.approx(p["spikes_per_image"] / p["neurons"])
    assert qcfs["events_per_image"] == qcfs["spikes_per_image"]  # binary spikes: one per event
    assert dense["commands"] and dense["commands"][0].startswith("pmsm-train")
    text = out.read_text()
    assert "| dense | 120 |" in text and fig.stat().st_size > 0


def test_requantize_probe_counts_what_the_snn_fires(tmp_path):
    """On the model's own levels the probe (PyTorch, forward hooks) counts the spikes that the
    compiled SNN fires at T = 1 (onnxruntime, in-graph counters) on the same images."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from pmsm_compiler.training.activations import ActivationSpec
    from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD, load_dataset
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.zoo import build_model

    probe = load_bench_script("requantize_probe")
    front = load_bench_script("spike_front")
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, act=ActivationSpec("pqa", 8, 2.0, -0.25, 1.0))
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    export_onnx(model, str(tmp_path / "model.onnx"))
    data = load_dataset("bundled").subset(40)
    x = torch.from_numpy(np.ascontiguousarray(data.x))
    y = torch.from_numpy(data.y.astype(np.int64))
    probed = probe.probe(str(checkpoint), x, y, 8, -0.25, 1.0, CIFAR10_MEAN, CIFAR10_STD)
    fired = front.measure(str(tmp_path / "model.onnx"), data, 20)
    assert probed["levels"] == "-2..8" and probed["spikes_per_image"] > 1000
    assert fired["t1_prediction_agreement"] == 1.0
    # PyTorch and onnxruntime may round a rare tie differently: the counts agree to a few levels
    assert probed["spikes_per_image"] == pytest.approx(fired["spikes_per_image"], rel=1e-3)
    assert probed["spikes_per_neuron"] == pytest.approx(fired["spikes_per_neuron"], rel=1e-3)
    assert probed["accuracy"] == pytest.approx(fired["accuracy"], abs=1 / 40 + 1e-9)
    # a cut branch's first activation receives 0 and fires nothing
    cut = probe.probe(str(checkpoint), x, y, 8, -0.25, 1.0, CIFAR10_MEAN, CIFAR10_STD, ["layers.1"])
    assert probed["spikes_by_layer"]["layers.1.act1"] > 0 and cut["spikes_by_layer"]["layers.1.act1"] == 0
    assert cut["spikes_by_layer"]["layers.0.act1"] == probed["spikes_by_layer"]["layers.0.act1"]  # upstream: as is
