"""runtime/report.py and runtime/runner.py arithmetic: spikes, SOPs, energy, accuracy, int64 counts.

Every expected number below is computed by hand in the comments, not by the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pmsm_compiler.data import Dataset
from pmsm_compiler.runtime import BatchResult, run_dataset, summarize
from pmsm_compiler.runtime import report as rep


def two_layer_info(reverse_columns: bool = False) -> dict:
    # layer A: 100 neurons, fan-out 9; layer B: 50 neurons, fan-out 2.5; the ANN does 1000 MACs
    a = {"name": "A", "neuron": "AIF", "neurons": 100, "fan_out": 9.0, "count_index": 1 if reverse_columns else 0}
    b = {"name": "B", "neuron": "AIF", "neurons": 50, "fan_out": 2.5, "count_index": 0 if reverse_columns else 1}
    return {"mode": "exact", "ann_macs": 1000, "layers": [a, b]}


# spikes summed over N = 4 samples, [T = 2, layers]: A emits 40 then 60, B emits 20 then 10
COUNTS = np.array([[40, 20], [60, 10]], np.int64)


def check_hand_example(r):
    assert r["schema_version"] == 1 and r["tool"] == "pmsm-run" and r["mode"] == "exact"
    assert r["timesteps"] == 2 and r["samples"] == 4
    a, b = r["layers"]
    # per image at each step: A 40/4 = 10, 60/4 = 15; B 20/4 = 5, 10/4 = 2.5
    assert a["name"] == "A" and a["spikes_by_t"] == [10.0, 15.0] and a["spikes"] == 25.0
    assert b["name"] == "B" and b["spikes_by_t"] == [5.0, 2.5] and b["spikes"] == 7.5
    assert a["spikes_total"] == 100 and b["spikes_total"] == 30
    # firing rate = spikes per neuron per step: A 25 / (100·2) = 0.125; B 7.5 / (50·2) = 0.075
    assert a["firing_rate"] == pytest.approx(0.125) and b["firing_rate"] == pytest.approx(0.075)
    # SOPs = spikes × fan-out: A 25·9 = 225; B 7.5·2.5 = 18.75; total 243.75
    assert a["sops"] == pytest.approx(225.0) and b["sops"] == pytest.approx(18.75)
    assert a["fan_out"] == 9.0 and b["fan_out"] == 2.5
    # all layers per image: step 1 10 + 5 = 15, step 2 15 + 2.5 = 17.5; total 32.5
    assert r["spikes_per_image_by_t"] == [15.0, 17.5]
    assert r["spikes_per_image"] == 32.5 and r["spikes_total"] == 130
    e = r["energy"]
    assert e["sops"] == pytest.approx(243.75)
    assert e["snn_sop_energy_pj"] == pytest.approx(243.75 * 0.9)  # 219.375 pJ
    assert e["spikes_pj"] == pytest.approx(32.5 * 0.9)  # 29.25 pJ
    # Eq. 11: P = 29.25e-12 J / (2 · 1e-3 s) = 1.4625e-8 W = 1.4625e-5 mW
    assert e["power_mw"] == pytest.approx(1.4625e-5, rel=1e-12)
    assert e["ann_mac_energy_pj"] == pytest.approx(4600.0)  # 1000 · 4.6 pJ
    assert e["ann_to_snn_sop_energy_ratio"] == pytest.approx(4600.0 / 219.375)
    assert (e["e_spike_pj"], e["e_ac_pj"], e["e_mac_pj"], e["timestep_ms"]) == (0.9, 0.9, 4.6, 1.0)
    assert "first layer" in e["note"]["sops"] and "spikes only" in e["note"]["spikes"]


def test_hand_computed_example():
    r = summarize(two_layer_info(), COUNTS, samples=4, timesteps=2, correct_by_t=np.array([3, 4]),
                  ann_correct=3, t1_agree=4, labels_present=True, model="m.snn.onnx")
    check_hand_example(r)
    assert r["model"] == "m.snn.onnx"
    assert r["accuracy_by_t"] == [0.75, 1.0]  # 3/4, 4/4
    assert r["ann_accuracy"] == 0.75 and r["t1_prediction_agreement"] == 1.0
    assert json.loads(json.dumps(r)) == r  # plain JSON types only


def test_count_index_selects_the_column():
    swapped = COUNTS[:, ::-1].copy()  # column 0 is now B, column 1 is A
    check_hand_example(summarize(two_layer_info(reverse_columns=True), swapped, 4, 2))


def test_nulls_without_labels_or_ann():
    r = summarize(two_layer_info(), COUNTS, 4, 2, correct_by_t=None, ann_correct=None, t1_agree=None)
    assert r["accuracy_by_t"] is None and r["ann_accuracy"] is None and r["t1_prediction_agreement"] is None
    assert r["labels"] is False
    # --ann without labels: agreement yes, accuracy no
    r = summarize(two_layer_info(), COUNTS, 4, 2, ann_correct=2, t1_agree=3, labels_present=False)
    assert r["ann_accuracy"] is None and r["t1_prediction_agreement"] == 0.75


def test_paper_table3_power():
    # QCFS VGG-16, CIFAR-10 (equations.md §6): 3.08e5 spikes per image at T = 1 → 0.277 mW
    info = {"mode": "exact", "ann_macs": None, "layers": [{"name": "all", "neurons": None, "fan_out": None}]}
    r = summarize(info, np.array([[308_000]], np.int64), samples=1, timesteps=1)
    assert round(r["energy"]["power_mw"], 3) == 0.277
    # 6.44e5 spikes per image over T = 2 (here 10 images) → 0.290 mW
    r = summarize(info, np.array([[3_220_000], [3_220_000]], np.int64), samples=10, timesteps=2)
    assert r["spikes_per_image"] == 644_000
    assert round(r["energy"]["power_mw"], 3) == 0.290
    # unknown fan-out: no SOPs, said so in the note
    assert r["energy"]["sops"] is None and r["energy"]["snn_sop_energy_pj"] is None
    assert "fan-out unknown" in r["energy"]["note"]["sops"]


def test_counts_stay_exact_above_2_24():
    big = 2 ** 24 + 1  # not representable in float32
    huge = 2 ** 40 + 3
    info = two_layer_info()
    r = summarize(info, np.array([[big, huge], [big, 1]], np.int64), samples=1, timesteps=2)
    assert r["layers"][0]["spikes_total"] == 2 * big and r["layers"][1]["spikes_total"] == huge + 1
    assert r["spikes_total"] == 2 * big + huge + 1
    assert r["layers"][0]["spikes_by_t"] == [float(big), float(big)]
    assert float(np.float32(big)) != big  # the reason for int64
    with pytest.raises(TypeError):
        summarize(info, np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), 1, 2)
    with pytest.raises(ValueError):
        summarize(info, np.zeros((3, 2), np.int64), 1, 2)


class FakeSession:
    """Stands in for SNNSession: every sample emits `per_sample` spikes per layer per step and
    predicts class t-1 at step t."""

    def __init__(self, per_sample: int, layers: int = 2):
        self.info = {"mode": "exact", "ann_macs": 10, "inputs": [{"name": "input", "shape": ["batch", 3, 4, 4]}],
                     "layers": [{"name": f"L{i}", "neuron": "AIF", "neurons": 8, "fan_out": 1.0, "count_index": i}
                                for i in range(layers)]}
        self.layers = self.info["layers"]
        self.input_name = "input"
        self.input_shape = ["batch", 3, 4, 4]
        self.input_dtype = np.dtype(np.float32)
        self.output_names = ["logits"]
        self.prologue = None
        self.step = self
        self.per_sample = per_sample

    def get_inputs(self):
        return []

    def get_outputs(self):
        return []

    def run_batch(self, x, timesteps):
        n = len(x)
        spikes = np.full((timesteps, n, len(self.layers)), self.per_sample, np.int64)
        preds = np.repeat(np.arange(timesteps, dtype=np.int64)[:, None], n, axis=1)
        return BatchResult(np.zeros((n, 10), np.float32), preds, spikes)


def test_runner_accumulates_int64_and_accuracy_by_t():
    big = 2 ** 24 + 1
    x = np.zeros((7, 4, 4, 3), np.uint8)
    y = np.array([0, 0, 0, 1, 1, 2, 2], np.int64)
    ds = Dataset(x, y, name="fake")
    r = run_dataset(FakeSession(big), ds, timesteps=3, batch_size=3, mean=(0, 0, 0), std=(1, 1, 1), progress=False)
    # 7 samples × big spikes per layer per step, summed in int64 over 3 batches
    assert r["layers"][0]["spikes_total"] == 3 * 7 * big and r["spikes_total"] == 2 * 3 * 7 * big
    assert r["spikes_per_image_by_t"] == [2.0 * big] * 3
    # prediction at step t is t-1: 3 zeros, 2 ones, 2 twos
    assert r["accuracy_by_t"] == [3 / 7, 2 / 7, 2 / 7]
    assert r["samples"] == 7 and r["ann_accuracy"] is None and r["t1_prediction_agreement"] is None
    r = run_dataset(FakeSession(1), ds, timesteps=1, batch_size=2, mean=(0, 0, 0), std=(1, 1, 1), progress=False,
                    limit=4)
    assert r["samples"] == 4 and r["accuracy_by_t"] == [0.75]


def test_runner_rejects_wrong_image_size():
    from pmsm_compiler.errors import InputError

    ds = Dataset(np.zeros((2, 5, 5, 3), np.uint8), None, name="small")
    with pytest.raises(InputError, match="shape"):
        run_dataset(FakeSession(1), ds, 1, 2, (0, 0, 0), (1, 1, 1), progress=False)


def test_format_tables_and_plot(tmp_path):
    r = summarize(two_layer_info(), COUNTS, 4, 2, correct_by_t=np.array([3, 4]), ann_correct=3, t1_agree=4)
    text = rep.format_tables(r)
    for needle in ("accuracy by timestep", "ANN accuracy: 75.00%", "T=1 prediction agreement ANN vs SNN: 100.00%",
                   "firing rate", "SOPs/image", "paper Eq. 11", "SOP convention", "ANN: MACs"):
        assert needle in text, needle
    paths = rep.plot(r, tmp_path / "plots")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["accuracy_vs_t.png", "spikes_per_layer.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    no_labels = summarize(two_layer_info(), COUNTS, 4, 2)
    assert "no labels" in rep.format_tables(no_labels)
    assert [p.rsplit("/", 1)[-1] for p in rep.plot(no_labels, tmp_path / "p2")] == ["spikes_per_layer.png"]
