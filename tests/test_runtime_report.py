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
from pmsm_compiler.snn_format import DataInput, NeuronLayer, SNNInfo, Wrapper


def two_layer_info(reverse_columns: bool = False) -> SNNInfo:
    # layer A: 100 neurons, fan-out 9; layer B: 50 neurons, fan-out 2.5; the ANN does 1000 MACs
    a = NeuronLayer("A", neuron="AIF", neurons=100, fan_out=9.0, count_index=1 if reverse_columns else 0)
    b = NeuronLayer("B", neuron="AIF", neurons=50, fan_out=2.5, count_index=0 if reverse_columns else 1)
    return SNNInfo(mode="exact", ann_macs=1000, layers=[a, b])


# spikes summed over N = 4 samples, [T = 2, layers]: A emits 40 then 60, B emits 20 then 10
COUNTS = np.array([[40, 20], [60, 10]], np.int64)


def check_hand_example(r):
    assert r["schema_version"] == 3 and r["tool"] == "pmsm-run" and r["mode"] == "exact"
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
    r = summarize(two_layer_info(reverse_columns=True), swapped, 4, 2, counters_sum_by_t_layer=COUNTERS[:, ::-1].copy(),
                  counter_names=NAMES)
    check_hand_counters(r)


# Every counting rule summed over the N = 4 samples, [T = 2, layers, counters] in the order NAMES.
# A (100 neurons: 400 neuron-steps per step): spikes as COUNTS, events 30 then 40, positive 35 then
# 50, negative 5 then 10, at the lower cap 5 then 10, at the upper cap 2 then 4, at 0 370 then 360.
# B (50 neurons, binary: 200 neuron-steps per step): 20 then 10 spikes, all positive events.
NAMES = ["spikes", "events", "positive", "negative", "at_lower_cap", "at_upper_cap", "at_zero"]
COUNTERS = np.array([[[40, 30, 35, 5, 5, 2, 370], [20, 20, 20, 0, 180, 20, 180]],
                     [[60, 40, 50, 10, 10, 4, 360], [10, 10, 10, 0, 190, 10, 190]]], np.int64)


def check_hand_counters(r):
    a, b = r["layers"]
    # A: events per image 30/4 = 7.5 and 40/4 = 10 → 17.5; per neuron-step 70 / 800 = 0.0875
    assert a["events_by_t"] == [7.5, 10.0] and a["events"] == 17.5 and a["events_total"] == 70
    assert a["event_rate"] == 70 / 800
    assert a["positive_spikes"] == 85 / 4 and a["negative_spikes"] == 15 / 4  # 21.25 + 3.75 = 25 = spikes
    assert a["positive_spikes"] + a["negative_spikes"] == a["spikes"]
    # fractions of A's 800 neuron-steps: lower cap 15, upper cap 6, at 0 730
    assert (a["lower_cap_fraction"], a["upper_cap_fraction"], a["zero_fraction"]) == (15 / 800, 6 / 800, 730 / 800)
    assert a["event_sops"] == pytest.approx(17.5 * 9)  # 157.5
    assert a["counters_total"] == {"spikes": 100, "events": 70, "positive": 85, "negative": 15, "at_lower_cap": 15,
                                   "at_upper_cap": 6, "at_zero": 730}
    # B: 5 + 2.5 = 7.5 events per image, 30 / 400 per neuron-step; 370 of 400 at 0 (= its lower cap)
    assert b["events_by_t"] == [5.0, 2.5] and b["events"] == 7.5 and b["event_rate"] == 30 / 400
    assert (b["positive_spikes"], b["negative_spikes"]) == (7.5, 0.0)
    assert (b["lower_cap_fraction"], b["upper_cap_fraction"], b["zero_fraction"]) == (370 / 400, 30 / 400, 370 / 400)
    assert b["event_sops"] == pytest.approx(7.5 * 2.5)  # 18.75
    # all layers: events 12.5 per image at each step; fractions of 1200 neuron-steps
    assert r["events_per_image_by_t"] == [12.5, 12.5] and r["events_per_image"] == 25.0 and r["events_total"] == 100
    assert (r["positive_spikes_per_image"], r["negative_spikes_per_image"]) == (28.75, 3.75)
    assert r["lower_cap_fraction"] == 385 / 1200 and r["upper_cap_fraction"] == 36 / 1200
    assert r["zero_fraction"] == 1100 / 1200
    assert r["counters_total"]["events"] == 100 and r["counters_total"]["spikes"] == r["spikes_total"] == 130
    assert r["counters_per_image_by_t"]["at_zero"] == [550 / 4, 550 / 4]
    assert set(r["counting_rules"]) == set(NAMES) and "packet" in r["counting_rules"]["events"]
    e = r["energy"]
    assert e["event_sops"] == pytest.approx(176.25)  # 157.5 + 18.75
    assert e["snn_event_sop_energy_pj"] == pytest.approx(176.25 * 0.9)  # 158.625 pJ
    assert e["ann_to_snn_event_sop_energy_ratio"] == pytest.approx(4600 / 158.625)
    assert e["per_image_uj"] == pytest.approx({"spikes": 219.375e-6, "events": 158.625e-6, "ann": 4600e-6})
    # by t, cumulative: spikes rule step 1 = (10·9 + 5·2.5)·0.9 = 92.25 pJ, then 219.375 pJ;
    # events rule step 1 = (7.5·9 + 5·2.5)·0.9 = 72 pJ, then 158.625 pJ
    assert e["per_image_uj_by_t"]["spikes"] == pytest.approx([92.25e-6, 219.375e-6])
    assert e["per_image_uj_by_t"]["events"] == pytest.approx([72e-6, 158.625e-6])
    assert e["power_mw"] == pytest.approx(1.4625e-5, rel=1e-12)  # Eq. 11 unchanged: spikes only
    assert "events" in e["note"] and "packet" in e["note"]["events"]


def test_hand_computed_counters():
    r = summarize(two_layer_info(), COUNTS, 4, 2, correct_by_t=np.array([3, 4]), counters_sum_by_t_layer=COUNTERS,
                  counter_names=NAMES)
    check_hand_example(r)  # the spikes rule is unchanged
    check_hand_counters(r)
    assert json.loads(json.dumps(r)) == r
    # the counter order is read from the names, not assumed
    order = [6, 5, 4, 3, 2, 1, 0]
    check_hand_counters(summarize(two_layer_info(), COUNTS, 4, 2, counters_sum_by_t_layer=COUNTERS[:, :, order],
                                  counter_names=[NAMES[i] for i in order]))


def test_without_counters_the_new_entries_are_null():
    r = summarize(two_layer_info(), COUNTS, 4, 2)
    for key in ("counting_rules", "events_per_image_by_t", "events_per_image", "events_total", "lower_cap_fraction",
                "upper_cap_fraction", "zero_fraction", "counters_total", "counters_per_image_by_t"):
        assert r[key] is None, key
    assert all(r["layers"][0][key] is None for key in ("events", "events_by_t", "event_sops", "zero_fraction"))
    e = r["energy"]
    assert e["per_image_uj"]["events"] is None and e["per_image_uj_by_t"]["events"] is None
    assert e["per_image_uj"]["spikes"] == pytest.approx(219.375e-6) and e["event_sops"] is None
    assert "recompile" in e["note"]["events"]
    assert "not counted" in rep.format_tables(r)


def test_counters_are_checked():
    with pytest.raises(ValueError, match="spikes column differs"):
        bad = COUNTERS.copy()
        bad[0, 0, 0] += 1
        summarize(two_layer_info(), COUNTS, 4, 2, counters_sum_by_t_layer=bad, counter_names=NAMES)
    with pytest.raises(ValueError, match="missing"):
        summarize(two_layer_info(), COUNTS, 4, 2, counters_sum_by_t_layer=COUNTERS[:, :, :6],
                  counter_names=NAMES[:6])
    with pytest.raises(ValueError, match="shape"):
        summarize(two_layer_info(), COUNTS, 4, 2, counters_sum_by_t_layer=COUNTERS[:1], counter_names=NAMES)
    with pytest.raises(TypeError):
        summarize(two_layer_info(), COUNTS, 4, 2, counters_sum_by_t_layer=COUNTERS.astype(np.float64),
                  counter_names=NAMES)


# ------------------------------------------------------------------------------------------------
# equal accuracy, on synthetic accuracy curves (100 samples: accuracies are exact hundredths)
# ------------------------------------------------------------------------------------------------

def curve_report(correct, spikes_per_step=10, ann_correct=None):
    """A one-layer report (fan-out 2, 1000 neurons) whose accuracy at t is correct[t-1] / 100 and
    which fires ``spikes_per_step`` spikes and half as many events per image every step."""
    T = len(correct)
    info = SNNInfo(mode="folded", ann_macs=1000, layers=[NeuronLayer("L", neurons=1000, fan_out=2.0)])
    spikes = np.full((T, 1), 100 * spikes_per_step, np.int64)
    events = spikes // 2
    counters = np.zeros((T, 1, len(NAMES)), np.int64)
    counters[:, :, 0], counters[:, :, 1], counters[:, :, 2] = spikes, events, spikes
    counters[:, :, 6] = 100 * 1000 - events
    return summarize(info, spikes, 100, T, correct_by_t=np.array(correct), ann_correct=ann_correct,
                     t1_agree=ann_correct, counters_sum_by_t_layer=counters, counter_names=NAMES)


def test_first_t_reaching():
    acc = [0.5, 0.7, 0.7, 0.6, 0.9]
    assert rep.first_t_reaching(acc, 0.7) == 2  # ties: the smallest t
    assert rep.first_t_reaching(acc, 0.65) == 2 and rep.first_t_reaching(acc, 0.5) == 1
    assert rep.first_t_reaching(acc, 0.9) == 5 and rep.first_t_reaching(acc, 0.9, max_t=4) is None
    assert rep.first_t_reaching(acc, 0.91) is None and rep.first_t_reaching(None, 0.1) is None


def test_equal_accuracy_default_target_is_the_best_both_reach():
    p = curve_report([80, 85, 85, 84], spikes_per_step=40)  # best 0.85, first at t = 2 (tie with t = 3)
    q = curve_report([30, 60, 82, 86], spikes_per_step=10)  # best 0.86 at t = 4
    eq = rep.equal_accuracy({"P": p, "Q": q})
    assert eq["target"] == 0.85 and eq["max_t"] == 4 and "both models reach within T ≤ 4" in eq["target_rule"]
    mp, mq = eq["models"]["P"], eq["models"]["Q"]
    assert (mp["reached"], mp["t"], mp["accuracy"], mp["best_accuracy"], mp["best_t"]) == (True, 2, 0.85, 0.85, 2)
    assert (mq["reached"], mq["t"], mq["accuracy"], mq["best_accuracy"], mq["best_t"]) == (True, 4, 0.86, 0.86, 4)
    # P: 40 spikes, 20 events per image per step; 2 steps × fan-out 2 × 0.9 pJ → 144 pJ and 72 pJ
    assert mp["spikes_per_image"] == 80 and mp["events_per_image"] == 40
    assert mp["energy_per_image_uj"] == pytest.approx({"spikes": 144e-6, "events": 72e-6})
    # Q: 10 and 5 per step, 4 steps → 72 pJ and 36 pJ
    assert mq["energy_per_image_uj"] == pytest.approx({"spikes": 72e-6, "events": 36e-6})
    # the T window: within T ≤ 3 the best Q reaches is 0.82, so the target drops to it
    eq3 = rep.equal_accuracy({"P": p, "Q": q}, max_t=3)
    assert eq3["target"] == 0.82 and eq3["models"]["P"]["t"] == 2 and eq3["models"]["Q"]["t"] == 3
    # a window longer than the runs is cut to the runs
    assert rep.equal_accuracy({"P": p, "Q": q}, max_t=32)["max_t"] == 4


def test_equal_accuracy_target_never_reached_and_above_both():
    p = curve_report([80, 85, 85, 84])
    q = curve_report([30, 60, 82, 86])
    eq = rep.equal_accuracy({"P": p, "Q": q}, target=0.855)  # only Q gets there
    assert eq["target_rule"] == "given"
    assert eq["models"]["P"] == {"reached": False, "best_accuracy": 0.85, "best_t": 2, "t": None, "accuracy": None,
                                 "spikes_per_image": None, "events_per_image": None,
                                 "energy_per_image_uj": {"spikes": None, "events": None}}
    assert eq["models"]["Q"]["reached"] and eq["models"]["Q"]["t"] == 4
    both = rep.equal_accuracy({"P": p, "Q": q}, target=0.9)
    assert not any(m["reached"] for m in both["models"].values())
    lines = rep.format_equal_accuracy(both)
    assert "P: not reached within T=4 (best 85.00% at T=2)" in lines[1]
    assert "Q: not reached within T=4 (best 86.00% at T=4)" in lines[2]
    reached = "\n".join(rep.format_equal_accuracy(eq))
    assert "Q: T=4 (86.00%)" in reached and "µJ (events rule)" in reached
    # an identical curve ties: the same T
    same = rep.equal_accuracy({"A": p, "B": curve_report([80, 85, 85, 84], spikes_per_step=1)})
    assert same["models"]["A"]["t"] == same["models"]["B"]["t"] == 2
    assert rep.equal_accuracy({"P": p, "none": summarize(two_layer_info(), COUNTS, 4, 2)}) is None  # no labels


def test_ann_equal_accuracy():
    r = curve_report([60, 70, 75, 80], spikes_per_step=10, ann_correct=75)
    eq = rep.ann_equal_accuracy(r)  # default target: the ANN's 0.75, reached at t = 3
    assert eq["target"] == 0.75 and eq["target_rule"] == "the ANN's accuracy" and eq["max_t"] == 4
    assert eq["snn"]["t"] == 3 and eq["snn"]["energy_per_image_uj"] == pytest.approx({"spikes": 54e-6, "events": 27e-6})
    assert eq["ann"] == {"accuracy": 0.75, "energy_per_image_uj": pytest.approx(4600e-6)}
    given = rep.ann_equal_accuracy(r, target=0.65)
    assert given["target_rule"] == "given" and given["snn"]["t"] == 2
    above = rep.ann_equal_accuracy(r, target=0.81)
    assert not above["snn"]["reached"] and above["snn"]["best_t"] == 4
    assert "does not reach it within T=4 (best 80.00% at T=4)" in "\n".join(rep.format_ann_equal_accuracy(above))
    no_ann = curve_report([60, 70])
    assert rep.ann_equal_accuracy(no_ann) is None and rep.ann_equal_accuracy(no_ann, 0.6)["snn"]["t"] == 1
    assert rep.ann_equal_accuracy(summarize(two_layer_info(), COUNTS, 4, 2)) is None  # no labels


def test_nulls_without_labels_or_ann():
    r = summarize(two_layer_info(), COUNTS, 4, 2, correct_by_t=None, ann_correct=None, t1_agree=None)
    assert r["accuracy_by_t"] is None and r["ann_accuracy"] is None and r["t1_prediction_agreement"] is None
    assert r["labels"] is False
    # --ann without labels: agreement yes, accuracy no
    r = summarize(two_layer_info(), COUNTS, 4, 2, ann_correct=2, t1_agree=3, labels_present=False)
    assert r["ann_accuracy"] is None and r["t1_prediction_agreement"] == 0.75


def test_paper_table3_power():
    # QCFS VGG-16, CIFAR-10 (equations.md §6): 3.08e5 spikes per image at T = 1 → 0.277 mW
    info = SNNInfo(mode="exact", ann_macs=None, layers=[NeuronLayer("all", neurons=None, fan_out=None)])
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
        self.info = SNNInfo(mode="exact", ann_macs=10, inputs=[DataInput("input", ["batch", 3, 4, 4])],
                            layers=[NeuronLayer(f"L{i}", neuron="AIF", neurons=8, fan_out=1.0, count_index=i)
                                    for i in range(layers)])
        self.layers = self.info.layers
        self.input_name = "input"
        self.input_shape = ["batch", 3, 4, 4]
        self.input_dtype = np.dtype(np.float32)
        self.input_type = "tensor(float)"
        self.output_names = ["logits"]
        self.prologue = None
        self.per_sample = per_sample

    def output_dims(self, name):
        return None  # classes unknown: labels are not checked against them

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
    counted = summarize(two_layer_info(), COUNTS, 4, 2, correct_by_t=np.array([3, 4]), ann_correct=3, t1_agree=4,
                        counters_sum_by_t_layer=COUNTERS, counter_names=NAMES)
    counted["equal_accuracy"] = rep.ann_equal_accuracy(counted)
    text = rep.format_tables(counted)
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("A ") and "%" in line)
    # A: 17.5 events, 21.25 positive and 3.75 negative spikes per image; 1.88 % / 0.75 % / 91.25 %; 157.5 event SOPs
    assert row.split() == ["A", "17.5", "21.25", "3.75", "1.88%", "0.75%", "91.25%", "157.5"]
    total = next(line for line in lines if line.startswith("total ") and "%" in line)
    assert total.split() == ["total", "25", "28.75", "3.75", "32.08%", "3.00%", "91.67%", "176.25"]
    assert "SNN, events rule: sum 1[k!=0] x fan-out x E_AC" in text and "0.0001586 µJ" in text
    assert "at equal accuracy (target 75.00%: the ANN's accuracy)" in text
    assert "SNN reaches it at T=1 (75.00%)" in text
    paths = rep.plot(r, tmp_path / "plots")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["accuracy_vs_t.png", "spikes_per_layer.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    no_labels = summarize(two_layer_info(), COUNTS, 4, 2)
    assert "no labels" in rep.format_tables(no_labels)
    assert [p.rsplit("/", 1)[-1] for p in rep.plot(no_labels, tmp_path / "p2")] == ["spikes_per_layer.png"]


def wrapped_info(dense=(40, 6), bookkeeping=(12, 4)) -> SNNInfo:
    # the two layers above, plus a MatMul of two activations (40 MACs per step, 12 bookkeeping ops from
    # t = 2 on) and a MaxPool (6 comparisons, 4 bookkeeping ops), and 100 MACs on the network input
    info = two_layer_info()
    info.static_macs = 100
    info.wrappers = [Wrapper("mm", "MatMul", False, dense_ops=dense[0], bookkeeping_ops=bookkeeping[0]),
                     Wrapper("pool", "MaxPool", True, dense_ops=dense[1], bookkeeping_ops=bookkeeping[1])]
    return info


def test_hand_computed_work():
    r = summarize(wrapped_info(), COUNTS, 4, 2, counters_sum_by_t_layer=COUNTERS, counter_names=NAMES)
    check_hand_example(r)  # nothing else changes
    mm, pool = r["wrappers"]
    assert (mm["name"], mm["op"], mm["homogeneous"], pool["homogeneous"]) == ("mm", "MatMul", False, True)
    assert (mm["dense_ops_per_step"], mm["bookkeeping_ops_per_step"]) == (40, 12)
    # over T = 2: the op at both steps, the bookkeeping at t = 2 only: 2·40 + 12 = 92; 2·6 + 4 = 16
    assert mm["dense_ops"] == 92 and pool["dense_ops"] == 16
    w = r["work"]
    assert w["dense_ops"] == 108 and w["dense_ops_step_1"] == 46 and w["dense_ops_per_later_step"] == 62
    assert w["static_macs"] == 100
    # spikes rule: 243.75 SOPs (above) of 243.75 + 108 + 100 = 451.75; events rule: 176.25 of 384.25
    assert w["sops"] == pytest.approx(243.75) and w["event_sops"] == pytest.approx(176.25)
    assert w["neuromorphic_share"]["spikes"] == pytest.approx(243.75 / 451.75)
    assert w["neuromorphic_share"]["events"] == pytest.approx(176.25 / 384.25)
    assert "recompile" not in w["note"] and json.loads(json.dumps(r)) == r
    # T = 3 (a silent third step): 3·40 + 2·12 = 144 and 3·6 + 2·4 = 26
    three = summarize(wrapped_info(), np.vstack([COUNTS, [[0, 0]]]), 4, 3)
    assert [row["dense_ops"] for row in three["wrappers"]] == [144, 26] and three["work"]["dense_ops"] == 170
    text = rep.format_tables(r)
    assert "dense operations per temporal wrapper" in text
    lines = text.splitlines()
    assert next(line for line in lines if line.startswith("mm ")).split() == ["mm", "MatMul", "40", "12", "92"]
    assert next(line for line in lines if line.startswith("total ") and "%" not in line and line.split()[-1] ==
                "108").split() == ["total", "46", "16", "108"]
    assert "neuromorphic share of the work: 53.96% (spikes rule), 45.87% (events rule)" in text


def test_work_of_a_model_compiled_before_the_counts():
    """A record without the dense counts or the static MACs: the counts and shares are null, the note
    says why; a model without wrappers has no dense wrapper work."""
    r = summarize(wrapped_info(dense=(None, 6), bookkeeping=(None, 4)), COUNTS, 4, 2)
    assert r["wrappers"][0]["dense_ops"] is None and r["wrappers"][1]["dense_ops"] == 16
    w = r["work"]
    assert w["dense_ops"] is None and w["neuromorphic_share"] == {"spikes": None, "events": None}
    assert "unknown for mm" in w["note"] and "recompile" in w["note"]
    assert "n/a" in rep.format_tables(r)
    plain = summarize(two_layer_info(), COUNTS, 4, 2)  # no wrappers, no static_macs recorded
    assert plain["wrappers"] == [] and plain["work"]["dense_ops"] == 0
    assert plain["work"]["neuromorphic_share"]["spikes"] is None and "static MACs unknown" in plain["work"]["note"]
    assert "dense operations per temporal wrapper" not in rep.format_tables(plain)


@pytest.mark.parametrize("timesteps", [0, -1, 10**9])
def test_summarize_checks_timesteps_as_every_tool_does(timesteps):
    from pmsm_compiler.errors import InputError

    with pytest.raises(InputError, match="timesteps"):
        summarize(two_layer_info(), COUNTS, samples=4, timesteps=timesteps)
