"""The ``pmsm-run`` report: accuracy by timestep, spikes, synaptic operations and energy.

Pure functions over numpy arrays (no onnxruntime); :func:`plot` imports matplotlib lazily.

Inputs (accumulated by ``runtime.runner.run_dataset``): ``S[t, l]`` = Σ over all N samples of the
spike count of layer l emitted AT step t (int64; a multi-spike AIF output s counts |s| spikes,
equations.md §6), for t = 1..T. With F_l the fan-out of layer l (mean synapses driven per spike,
from the compiler metadata) and M the ANN's multiply-accumulates per image (``ann_macs``):

    spikes_by_t[l][t]      = S[t, l] / N                      spikes per image of layer l at step t
    spikes[l]              = Σ_t S[t, l] / N                  per image, total over the T steps
    firing_rate[l]         = spikes[l] / (neurons_l · T)      spikes per neuron per step (can be > 1
                                                               for multi-spike AIF neurons)
    sops[l]                = spikes[l] · F_l                  synaptic operations per image
    spikes_per_image_by_t  = Σ_l spikes_by_t[l][t]
    spikes_per_image  (N̄)  = Σ_t spikes_per_image_by_t

Counting rules (models compiled with ``pmsm_spike_counters``; ``pmsm_compiler.ops.counters``):
``C[t, l, r]`` = Σ over the N samples of counter r of layer l at step t (int64), r one of spikes
Σ|k|, events Σ1[k≠0], positive Σk⁺, negative Σk⁻, at_lower_cap Σ1[k=s_min], at_upper_cap
Σ1[k=s_max], at_zero Σ1[k=0]. Its spikes column equals S (checked). With V_l = Σ_t (events +
at_zero)[t, l] = N·T·neurons_l, the neuron-steps counted:

    events_by_t[l][t]      = C[t, l, events] / N           packets per image of layer l at step t
    events[l]              = Σ_t events_by_t[l][t]
    event_sops[l]          = events[l] · F_l               one packet reaches every synapse of the neuron once
    positive/negative[l]   = Σ_t C[t, l, positive|negative] / N
    *_fraction[l]          = Σ_t C[t, l, at_*] / V_l        fraction of neuron-steps at the cap / at 0

Energy, two methods (constants below; E_AC = E_spike = 0.9 pJ, E_MAC = 4.6 pJ, the 45 nm values
used by SpikeZIP-TF and most SNN papers):

    paper, Eq. 11:  E = N̄ · E_spike                       spikes_pj
                    P = N̄ · E_spike / (T · Δt)             power_mw, Δt = 1 ms, P in mW
                    (units inferred by reproducing Table 3: N̄ = 3.08e5 spikes per image, T = 1
                    → 0.277 mW; 6.44e5 at T = 2 → 0.290 mW). It counts spikes only.
    SOP convention: E_SNN = Σ_l sops[l] · E_AC             snn_sop_energy_pj    (rule: spikes)
                    E_SNN = Σ_l event_sops[l] · E_AC       snn_event_sop_energy_pj  (rule: events)
                    E_ANN = M · E_MAC                      ann_mac_energy_pj
                    The first layer reads the real-valued image: its MACs are the same as the
                    ANN's and are NOT included in the SOPs (the common SNN convention).
                    ``energy.per_image_uj`` gives both rules and the ANN in µJ per image;
                    ``energy.per_image_uj_by_t[rule][t-1]`` the energy per image of a run of t
                    steps (Σ over steps 1..t), which is what equal-accuracy comparisons read.

Work (``work``, ``wrappers``): what a chip would have to compute per image, split into the
synaptic operations that spikes drive as accumulations (the SOPs above, neuromorphic) and the
dense operations. Dense are the temporal wrappers' (MatMul of two activations, Softmax, LayerNorm,
MaxPool, ...: every step, whatever the spikes; per sample and step ``Wrapper.dense_ops`` for the op
and ``Wrapper.bookkeeping_ops`` for the wrapper around it, from the compiler, formulas in
``pmsm_compiler.ops.temporal``) and the MACs of the layers that read the network input alone
(``static_macs``, once per image under rate coding). With D_w and B_w those counts of wrapper w:

    dense_ops[w]           = T·D_w + (T − 1)·B_w             (t = 1 is f alone: S_1 = x, F_0 = 0)
    dense_ops              = Σ_w dense_ops[w]
    neuromorphic_share     = sops / (sops + dense_ops + static_macs)      (events rule: event_sops)

One operation is one accumulate, one MAC or one elementwise op: counts, not energy. Not counted in
either: the neurons' own updates (integrate, fire, reset), biases, and scale and residual ops.

Accuracy: ``accuracy_by_t[t-1]`` = fraction of samples whose argmax of the network output
averaged over steps 1..t equals the label; ``t1_prediction_agreement`` = fraction of samples for
which the ANN's argmax equals the SNN's at T = 1 (exactly 1.0 for an exact-mode compile).

Equal accuracy (:func:`first_t_reaching`, :func:`equal_accuracy`, :func:`ann_equal_accuracy`): for a
target accuracy a, the smallest t ≤ T with accuracy_by_t[t−1] ≥ a (None when no t reaches it),
and the energy per image a run of that many steps spends, under both counting rules.
"""

from __future__ import annotations

import math
import os

import numpy as np

from pmsm_compiler.limits import check_timesteps
from pmsm_compiler.ops.counters import COUNTER_LABELS, COUNTERS
from pmsm_compiler.ops.temporal import wrapper_ops
from pmsm_compiler.snn_format import SNNInfo

SCHEMA_VERSION = 3
TOOL = "pmsm-run"
RULES = ("spikes", "events")  # the counting rules energy is given under
#: T range of the default equal-accuracy target: the best accuracy both models reach within it
EQUAL_ACCURACY_MAX_T = 32

E_SPIKE_PJ = 0.9  # energy per spike, paper Eq. 11 (= E_AC)
E_AC_PJ = 0.9  # energy per accumulate (synaptic operation), 45 nm
E_MAC_PJ = 4.6  # energy per multiply-accumulate, 45 nm
TIMESTEP_MS = 1.0  # Δt of one timestep, paper Eq. 11

NOTE_SPIKES = ("paper's Eq. 11: P = N*E_spike/(T*dt), N = spikes per image (|s| per multi-spike), "
               "E_spike = 0.9 pJ, dt = 1 ms; counts spikes only (no fan-out, no first-layer MACs); "
               "units (spikes per image, mW) inferred by reproducing the paper's Table 3")
NOTE_SOPS = ("common SNN convention: SOPs = sum over layers of spikes x fan-out, each an accumulate "
             "at E_AC = 0.9 pJ; the first layer's real-valued input MACs (same as the ANN's) are not "
             "included in the SOPs")
NOTE_ANN = "ANN: every multiply-accumulate of the weighted layers (ann_macs) at E_MAC = 4.6 pJ"
NOTE_WORK = ("per image, as counts (not energy): SOPs = accumulations driven by spikes (neuromorphic); dense = "
             "the temporal wrappers' operations every step (a MAC or an elementwise op each; at t = 1 the op "
             "alone, after it also the wrapper's running sums and differences) and the MACs of the layers "
             "that read the network input alone (once per image); neuron updates, biases and scale ops are "
             "in neither")
NOTE_EVENTS = ("events rule: event SOPs = sum over layers of events x fan-out, events = firing neurons per step "
               "(one packet carrying polarity and count reaches each synapse once), each an accumulate at "
               "E_AC = 0.9 pJ; first layer's input MACs not included")


def eq11_power_mw(spikes_per_image: float, timesteps: int) -> float:
    """Paper Eq. 11: P = N̄ · E_spike / (T · Δt) in mW, N̄ the spikes per image over the T steps."""
    return spikes_per_image * E_SPIKE_PJ * 1e-12 / (timesteps * TIMESTEP_MS * 1e-3) * 1e3


def _frac(count, total):
    return None if count is None or not total else float(count) / float(total)


def summarize(info: SNNInfo, spikes_sum_by_t_layer, samples: int, timesteps: int, correct_by_t=None,
              ann_correct=None, t1_agree=None, labels_present: bool | None = None, *, model: str | None = None,
              extra: dict | None = None, counters_sum_by_t_layer=None, counter_names=None) -> dict:
    """Build the JSON report (schema_version 3) from accumulated integer counts.

    ``spikes_sum_by_t_layer``: int [T, layers], spikes summed over all samples, column j = the
    layer with ``count_index`` j. ``correct_by_t``: int [T], samples whose averaged output up to
    step t is correct. ``ann_correct``: samples the ANN gets right (None without an ANN or labels).
    ``t1_agree``: samples where argmax(ANN) == argmax(SNN at T = 1) (None without an ANN).
    ``labels_present`` defaults to ``correct_by_t is not None``. ``extra`` entries are added at the
    end of the report (data set, timing, ...). ``counters_sum_by_t_layer``: int [T, layers,
    counters] (layers in ``count_index`` order, counters named by ``counter_names``), every
    counting rule summed over all samples; None for a model compiled without the counters (their
    report entries are then null).
    """
    timesteps = check_timesteps(timesteps)
    samples = int(samples)
    layers = info.layers
    counts = _int64(spikes_sum_by_t_layer, "spike counts")
    if counts.shape != (timesteps, len(layers)):
        raise ValueError(f"spike counts have shape {counts.shape}, expected ({timesteps}, {len(layers)})")
    counters = None
    if counters_sum_by_t_layer is not None:
        counters = _counters_by_name(counters_sum_by_t_layer, counter_names, timesteps, len(layers))
        if not np.array_equal(counters["spikes"], counts):
            raise ValueError("the counters' spikes column differs from the spike counts")
    if labels_present is None:
        labels_present = correct_by_t is not None
    n = max(samples, 1)

    layer_rows = []
    sops_total, event_sops_total, sops_known = 0.0, 0.0, True
    sops_by_t = np.zeros(timesteps)  # per image, at each step, all layers
    event_sops_by_t = np.zeros(timesteps)
    for j, layer in enumerate(layers):
        col_index = j if layer.count_index is None else int(layer.count_index)
        col = counts[:, col_index]
        total = int(col.sum())  # Python int: exact at any size
        per_image = total / n
        neurons = layer.neurons
        fan_out = layer.fan_out
        sops = None if fan_out is None else per_image * float(fan_out)
        if sops is None:
            sops_known = False
        else:
            sops_total += sops
            sops_by_t += col / n * float(fan_out)
        row = {
            "name": layer.name, "neuron": layer.neuron, "neurons": neurons,
            "spikes_by_t": [int(c) / n for c in col], "spikes": per_image, "spikes_total": total,
            "firing_rate": (per_image / (neurons * timesteps)) if neurons else None,
            "fan_out": None if fan_out is None else float(fan_out), "sops": sops,
        }
        row.update(_layer_counter_rows(counters, col_index, n, fan_out))
        if counters is not None and fan_out is not None:
            event_sops_total += row["event_sops"]
            event_sops_by_t += counters["events"][:, col_index] / n * float(fan_out)
        layer_rows.append(row)

    by_t_total = [int(v) for v in counts.sum(axis=1)]
    spikes_total = int(sum(by_t_total))
    spikes_per_image = spikes_total / n
    spikes_pj = spikes_per_image * E_SPIKE_PJ
    power_mw = eq11_power_mw(spikes_per_image, timesteps)
    ann_macs = info.ann_macs
    sop_pj = sops_total * E_AC_PJ if sops_known else None
    event_pj = event_sops_total * E_AC_PJ if (sops_known and counters is not None) else None
    ann_pj = None if ann_macs is None else float(ann_macs) * E_MAC_PJ
    energy = {
        "spikes_pj": spikes_pj,
        "power_mw": power_mw,
        "sops": sops_total if sops_known else None,
        "snn_sop_energy_pj": sop_pj,
        "ann_macs": None if ann_macs is None else int(ann_macs),
        "ann_mac_energy_pj": ann_pj,
        "ann_to_snn_sop_energy_ratio": (ann_pj / sop_pj) if (ann_pj is not None and sop_pj) else None,
        "event_sops": event_sops_total if event_pj is not None else None,
        "snn_event_sop_energy_pj": event_pj,
        "ann_to_snn_event_sop_energy_ratio": (ann_pj / event_pj) if (ann_pj is not None and event_pj) else None,
        "per_image_uj": {"spikes": _uj(sop_pj), "events": _uj(event_pj), "ann": _uj(ann_pj)},
        "per_image_uj_by_t": {
            "spikes": [v * E_AC_PJ * 1e-6 for v in np.cumsum(sops_by_t)] if sops_known else None,
            "events": [v * E_AC_PJ * 1e-6 for v in np.cumsum(event_sops_by_t)] if event_pj is not None else None,
        },
        "e_spike_pj": E_SPIKE_PJ, "e_ac_pj": E_AC_PJ, "e_mac_pj": E_MAC_PJ, "timestep_ms": TIMESTEP_MS,
        "note": {"spikes": NOTE_SPIKES, "sops": NOTE_SOPS, "events": NOTE_EVENTS, "ann": NOTE_ANN},
    }
    if not sops_known:
        missing = [r["name"] for r in layer_rows if r["fan_out"] is None]
        energy["note"]["sops"] += f"; fan-out unknown for {', '.join(missing)}: SOPs not computed"
    if counters is None:
        energy["note"]["events"] = "not counted: the model was compiled before the counters existed (recompile it)"

    accuracy_by_t = None
    if labels_present and correct_by_t is not None:
        correct = np.asarray(correct_by_t)
        if correct.shape != (timesteps,):
            raise ValueError(f"correct_by_t has shape {correct.shape}, expected ({timesteps},)")
        accuracy_by_t = [_frac(int(c), samples) for c in correct]
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": TOOL,
        "model": model,
        "mode": info.mode,
        "timesteps": timesteps,
        "samples": samples,
        "labels": bool(labels_present),
        "accuracy_by_t": accuracy_by_t,
        "ann_accuracy": _frac(ann_correct, samples) if labels_present else None,
        "t1_prediction_agreement": _frac(t1_agree, samples),
        "spikes_per_image_by_t": [v / n for v in by_t_total],
        "spikes_per_image": spikes_per_image,
        "spikes_total": spikes_total,
    }
    report.update(_total_counter_rows(counters, n))
    wrapper_rows = [_wrapper_row(w, timesteps) for w in info.wrappers]
    report.update({"energy": energy, "work": _work(info, wrapper_rows, energy), "layers": layer_rows,
                   "wrappers": wrapper_rows})
    if extra:
        report.update(extra)
    return report


def _wrapper_row(wrapper, timesteps: int) -> dict:
    """One temporal wrapper's dense operations per image: per step (the op, the wrapper's
    bookkeeping from t = 2 on) and over the T steps."""
    dense, bookkeeping = wrapper.dense_ops, wrapper.bookkeeping_ops
    known = dense is not None and bookkeeping is not None
    return {
        "name": wrapper.name, "op": wrapper.op, "homogeneous": wrapper.homogeneous,
        "dense_ops_per_step": dense, "bookkeeping_ops_per_step": bookkeeping,
        "dense_ops": wrapper_ops(timesteps, dense, bookkeeping) if known else None,
    }


def _work(info: SNNInfo, wrapper_rows: list, energy: dict) -> dict:
    """Per image: synaptic operations (neuromorphic) against dense operations, and their shares."""
    unknown = [r["name"] for r in wrapper_rows if r["dense_ops"] is None]
    dense = None if unknown else sum(r["dense_ops"] for r in wrapper_rows)
    static = info.static_macs
    first = None if unknown else sum(r["dense_ops_per_step"] for r in wrapper_rows)
    later = None if unknown else first + sum(r["bookkeeping_ops_per_step"] for r in wrapper_rows)

    def share(sops):
        if sops is None or dense is None or static is None or not (sops + dense + static):
            return None
        return sops / (sops + dense + static)

    note = NOTE_WORK
    if unknown:
        note += f"; dense operations unknown for {', '.join(unknown)} (no static shape, or compiled before they " \
                "were counted: recompile)"
    if static is None:
        note += "; static MACs unknown (compiled before they were counted: recompile)"
    return {
        "sops": energy["sops"], "event_sops": energy["event_sops"],
        "dense_ops": dense, "dense_ops_step_1": first, "dense_ops_per_later_step": later,
        "static_macs": static,
        "neuromorphic_share": {"spikes": share(energy["sops"]), "events": share(energy["event_sops"])},
        "note": note,
    }


def _int64(values, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers (int64), got {array.dtype}")
    return array.astype(np.int64, copy=False)


def _uj(pj):
    return None if pj is None else pj * 1e-6


def _counters_by_name(values, names, timesteps: int, n_layers: int) -> dict:
    """{counter name: int64 [T, layers]} from the accumulated [T, layers, counters] array."""
    values = _int64(values, "counters")
    names = list(names or [])
    if values.shape != (timesteps, n_layers, len(names)):
        raise ValueError(f"counters have shape {values.shape}, expected ({timesteps}, {n_layers}, {len(names)})")
    missing = [c for c in COUNTERS if c not in names]
    if missing:
        raise ValueError(f"counters {', '.join(missing)} missing (have {', '.join(names)})")
    return {name: values[:, :, names.index(name)] for name in COUNTERS}


def _counter_fractions(sums: dict, neuron_steps: int) -> dict:
    return {f"{cap}_fraction": _frac(sums[f"at_{cap}"], neuron_steps) for cap in ("lower_cap", "upper_cap", "zero")}


def _layer_counter_rows(counters, column: int, n: int, fan_out) -> dict:
    """The counting rules' entries of one layer row (all None without counters)."""
    keys = ("events_by_t", "events", "events_total", "event_rate", "positive_spikes", "negative_spikes",
            "lower_cap_fraction", "upper_cap_fraction", "zero_fraction", "event_sops", "counters_total")
    if counters is None:
        return dict.fromkeys(keys)
    sums = {name: int(counters[name][:, column].sum()) for name in COUNTERS}
    neuron_steps = sums["events"] + sums["at_zero"]  # = N·T·neurons, counted
    events = sums["events"] / n
    return {
        "events_by_t": [int(c) / n for c in counters["events"][:, column]],
        "events": events,
        "events_total": sums["events"],
        "event_rate": _frac(sums["events"], neuron_steps),
        "positive_spikes": sums["positive"] / n,
        "negative_spikes": sums["negative"] / n,
        **_counter_fractions(sums, neuron_steps),
        "event_sops": None if fan_out is None else events * float(fan_out),
        "counters_total": sums,
    }


def _total_counter_rows(counters, n: int) -> dict:
    """The counting rules over all layers (all None without counters)."""
    keys = ("counting_rules", "events_per_image_by_t", "events_per_image", "events_total", "positive_spikes_per_image",
            "negative_spikes_per_image", "lower_cap_fraction", "upper_cap_fraction", "zero_fraction",
            "counters_total", "counters_per_image_by_t")
    if counters is None:
        return dict.fromkeys(keys)
    sums = {name: int(counters[name].sum()) for name in COUNTERS}
    neuron_steps = sums["events"] + sums["at_zero"]
    return {
        "counting_rules": dict(COUNTER_LABELS),
        "events_per_image_by_t": [int(v) / n for v in counters["events"].sum(axis=1)],
        "events_per_image": sums["events"] / n,
        "events_total": sums["events"],
        "positive_spikes_per_image": sums["positive"] / n,
        "negative_spikes_per_image": sums["negative"] / n,
        **_counter_fractions(sums, neuron_steps),
        "counters_total": sums,
        "counters_per_image_by_t": {name: [int(v) / n for v in counters[name].sum(axis=1)] for name in COUNTERS},
    }


def fractions_at(report: dict, t: int) -> dict | None:
    """Fractions of the neuron-steps of step t at the lower cap, the upper cap and 0 (all layers),
    and the negative share of the spikes; None without counters."""
    by_t = report.get("counters_per_image_by_t")
    if by_t is None:
        return None
    c = {name: values[t - 1] for name, values in by_t.items()}
    neuron_steps = c["events"] + c["at_zero"]
    return {"lower_cap": _frac(c["at_lower_cap"], neuron_steps), "upper_cap": _frac(c["at_upper_cap"], neuron_steps),
            "zero": _frac(c["at_zero"], neuron_steps), "negative_share": _frac(c["negative"], c["spikes"])}


# ----------------------------------------------------------------------------------------------
# equal accuracy
# ----------------------------------------------------------------------------------------------

def first_t_reaching(accuracy_by_t, target: float, max_t: int | None = None) -> int | None:
    """The smallest t (1-based, ≤ max_t) with accuracy_by_t[t−1] ≥ target; None if none does."""
    if accuracy_by_t is None:
        return None
    for t, acc in enumerate(accuracy_by_t[:max_t] if max_t else accuracy_by_t, 1):
        if acc is not None and acc >= target:
            return t
    return None


def cost_at(report: dict, t: int) -> dict:
    """What a run of t steps gives and spends per image: accuracy, spikes, events, energy (µJ,
    both rules; None where not counted)."""
    by_t = report["energy"].get("per_image_uj_by_t") or {}
    events = report.get("events_per_image_by_t")
    acc = report.get("accuracy_by_t")
    return {
        "t": t,
        "accuracy": None if acc is None else acc[t - 1],
        "spikes_per_image": float(sum(report["spikes_per_image_by_t"][:t])),
        "events_per_image": None if events is None else float(sum(events[:t])),
        "energy_per_image_uj": {rule: (None if by_t.get(rule) is None else by_t[rule][t - 1]) for rule in RULES},
    }


def _best(accuracy_by_t, max_t: int) -> tuple[float, int]:
    """(best accuracy within t ≤ max_t, the smallest t that has it)."""
    window = accuracy_by_t[:max_t]
    best = max(window)
    return best, window.index(best) + 1


def _model_at_target(report: dict, target: float, max_t: int) -> dict:
    acc = report["accuracy_by_t"]
    best, best_t = _best(acc, max_t)
    t = first_t_reaching(acc, target, max_t)
    row = {"reached": t is not None, "best_accuracy": best, "best_t": best_t}
    row.update(cost_at(report, t) if t is not None else
               {"t": None, "accuracy": None, "spikes_per_image": None, "events_per_image": None,
                "energy_per_image_uj": dict.fromkeys(RULES)})
    return row


def equal_accuracy(reports: dict, target: float | None = None, max_t: int = EQUAL_ACCURACY_MAX_T) -> dict | None:
    """Compare models at equal accuracy: for each report (label → pmsm-run report, with labels),
    the smallest t ≤ max_t at which it reaches ``target`` and the energy per image it spends there.

    Default target: the best accuracy that every model reaches within t ≤ max_t (the smallest of
    the models' best accuracies there), so each reaches it. None when a report has no accuracy.
    """
    if not reports or any(r.get("accuracy_by_t") is None for r in reports.values()):
        return None
    max_t = min([int(max_t)] + [len(r["accuracy_by_t"]) for r in reports.values()])
    rule = "given"
    if target is None:
        target = min(_best(r["accuracy_by_t"], max_t)[0] for r in reports.values())
        who = "both models reach" if len(reports) == 2 else "every model reaches"
        rule = f"the best accuracy {who} within T ≤ {max_t}"
    return {"target": float(target), "target_rule": rule, "max_t": max_t,
            "models": {label: _model_at_target(r, target, max_t) for label, r in reports.items()}}


def ann_equal_accuracy(report: dict, target: float | None = None) -> dict | None:
    """The SNN against its ANN at equal accuracy: the smallest t ≤ T at which the SNN reaches
    ``target`` (default: the ANN's accuracy), its energy per image there under both rules, and the
    ANN's energy per image. None without labels, or without an ANN and a target."""
    if report.get("accuracy_by_t") is None:
        return None
    rule = "given"
    if target is None:
        if report.get("ann_accuracy") is None:
            return None
        target, rule = report["ann_accuracy"], "the ANN's accuracy"
    T = report["timesteps"]
    snn = _model_at_target(report, target, T)
    return {"target": float(target), "target_rule": rule, "max_t": T, "snn": snn,
            "ann": {"accuracy": report.get("ann_accuracy"),
                    "energy_per_image_uj": report["energy"]["per_image_uj"]["ann"]}}


# ----------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------

def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _num(v, fmt=".4g"):
    return "n/a" if v is None else format(v, fmt)


def format_tables(report: dict) -> str:
    """Three plain-text tables: accuracy by t, per-layer spikes/SOPs, energy (methods labeled)."""
    out = []
    T = report["timesteps"]
    acc = report.get("accuracy_by_t")
    head = f"{'t':>4} {'SNN accuracy':>13} {'spikes/image at t':>18}"
    out += [f"accuracy by timestep ({report['samples']} samples; SNN output averaged over steps 1..t)",
            head, "-" * len(head)]
    for t in range(1, T + 1):
        a = None if acc is None else acc[t - 1]
        out.append(f"{t:>4} {_pct(a):>13} {report['spikes_per_image_by_t'][t - 1]:>18.5g}")
    if acc is None:
        out.append("(no labels: accuracy not computed)")
    out.append(f"ANN accuracy: {_pct(report.get('ann_accuracy'))}"
               + ("" if report.get("ann_accuracy") is not None else " (needs --ann and labels)"))
    agree = report.get("t1_prediction_agreement")
    out.append(f"T=1 prediction agreement ANN vs SNN: {_pct(agree)}" + ("" if agree is not None else " (needs --ann)"))
    out.append("")

    head = (f"{'layer':<24} {'neuron':<6} {'neurons':>8} {'spikes/image':>13} {'firing rate':>12} {'fan-out':>8} "
            f"{'SOPs/image':>12}")
    out += [f"per layer (per image, total over T={T} steps; firing rate = spikes per neuron per step)",
            head, "-" * len(head)]
    for r in report["layers"]:
        out.append(f"{r['name'][:24]:<24} {str(r['neuron'])[:6]:<6} {_num(r['neurons'], 'd'):>8} "
                   f"{r['spikes']:>13.5g} {_num(r['firing_rate']):>12} {_num(r['fan_out'], '.4g'):>8} "
                   f"{_num(r['sops'], '.5g'):>12}")
    out.append(f"{'total':<24} {'':<6} {'':>8} {report['spikes_per_image']:>13.5g} {'':>12} {'':>8} "
               f"{_num(report['energy']['sops'], '.5g'):>12}")
    out.append("")
    out += _counting_rules_table(report)
    out += _work_table(report)

    e = report["energy"]
    out.append("energy per image")
    head = f"{'method':<44} {'value':>14}"
    out += [head, "-" * len(head)]
    rows = [
        (f"paper Eq. 11: spikes x {e['e_spike_pj']} pJ", _num(e["spikes_pj"], ".5g") + " pJ"),
        (f"paper Eq. 11: power, T={T}, dt={e['timestep_ms']:g} ms", _num(e["power_mw"], ".4g") + " mW"),
        (f"SOP convention: SOPs x E_AC {e['e_ac_pj']} pJ", _num(e["snn_sop_energy_pj"], ".5g") + " pJ"),
        (f"ANN: MACs x E_MAC {e['e_mac_pj']} pJ", _num(e["ann_mac_energy_pj"], ".5g") + " pJ"),
        ("ANN / SNN energy (SOP convention)", _num(e.get("ann_to_snn_sop_energy_ratio"), ".3g") + "x"),
    ]
    uj = e.get("per_image_uj") or {}
    rows += [
        ("SNN, spikes rule: sum|k| x fan-out x E_AC", _num(uj.get("spikes"), ".4g") + " µJ"),
        ("SNN, events rule: sum 1[k!=0] x fan-out x E_AC", _num(uj.get("events"), ".4g") + " µJ"),
        ("ANN: MACs x E_MAC", _num(uj.get("ann"), ".4g") + " µJ"),
        ("ANN / SNN energy (events rule)", _num(e.get("ann_to_snn_event_sop_energy_ratio"), ".3g") + "x"),
    ]
    out += [f"{k:<48} {v:>14}" for k, v in rows]
    out.append("Eq. 11 counts spikes only; SOPs exclude the first layer's real-valued input MACs.")
    if report.get("events_per_image") is None:
        out.append("events rule: not counted (the model was compiled before the counters existed; recompile it)")
    eq = report.get("equal_accuracy")
    if eq is not None:
        out += [""] + format_ann_equal_accuracy(eq)
    return "\n".join(out)


def _counting_rules_table(report: dict) -> list[str]:
    T = report["timesteps"]
    if report.get("events_per_image") is None:
        return []
    head = (f"{'layer':<24} {'events/image':>13} {'+spikes/image':>14} {'-spikes/image':>14} {'at lower cap':>13} "
            f"{'at upper cap':>13} {'silent':>8} {'event SOPs/image':>17}")
    out = [f"counting rules per layer (per image, total over T={T} steps; spikes = sum|k|, events = sum 1[k!=0]: "
           "one packet per firing neuron and step; caps and silent: fraction of neuron-steps)",
           head, "-" * len(head)]
    rows = list(report["layers"]) + [{
        "name": "total", "events": report["events_per_image"], "positive_spikes": report["positive_spikes_per_image"],
        "negative_spikes": report["negative_spikes_per_image"], "lower_cap_fraction": report["lower_cap_fraction"],
        "upper_cap_fraction": report["upper_cap_fraction"], "zero_fraction": report["zero_fraction"],
        "event_sops": report["energy"]["event_sops"]}]
    for r in rows:
        out.append(f"{r['name'][:24]:<24} {_num(r['events'], '.5g'):>13} {_num(r['positive_spikes'], '.5g'):>14} "
                   f"{_num(r['negative_spikes'], '.5g'):>14} {_pct(r['lower_cap_fraction']):>13} "
                   f"{_pct(r['upper_cap_fraction']):>13} {_pct(r['zero_fraction']):>8} "
                   f"{_num(r['event_sops'], '.5g'):>17}")
    return out + [""]


def _work_table(report: dict) -> list[str]:
    """The temporal wrappers' dense operations and the work per image, synaptic against dense."""
    T, work, rows = report["timesteps"], report.get("work"), report.get("wrappers") or []
    if work is None:  # a report of schema 2 or older
        return []
    out = []
    if rows:
        head = f"{'wrapper':<24} {'op':<18} {'op ops/step':>12} {'+wrapper/step':>14} {'dense ops/image':>16}"
        out += [f"dense operations per temporal wrapper (per image, total over T={T} steps; op ops/step: every step, "
                "whatever the spikes; +wrapper/step: its running sums and differences, from t=2 on)",
                head, "-" * len(head)]
        for r in rows:
            out.append(f"{r['name'][:24]:<24} {r['op'][:18]:<18} {_num(r['dense_ops_per_step'], ',d'):>12} "
                       f"{_num(r['bookkeeping_ops_per_step'], ',d'):>14} {_num(r['dense_ops'], ',.0f'):>16}")
        out.append(f"{'total':<24} {'':<18} {_num(work['dense_ops_step_1'], ',d'):>12} "
                   f"{_num(_diff(work['dense_ops_per_later_step'], work['dense_ops_step_1']), ',d'):>14} "
                   f"{_num(work['dense_ops'], ',.0f'):>16}")
        out.append("")
    share = work["neuromorphic_share"]
    out += [f"work per image over T={T} steps (counts, not energy: one accumulate, MAC or elementwise op each)",
            f"{'synaptic operations, spikes rule (neuromorphic)':<52} {_num(work['sops'], ',.0f'):>16}",
            f"{'synaptic operations, events rule (neuromorphic)':<52} {_num(work['event_sops'], ',.0f'):>16}",
            f"{'dense: temporal wrappers (every step)':<52} {_num(work['dense_ops'], ',.0f'):>16}",
            f"{'dense: MACs on the network input (once per image)':<52} {_num(work['static_macs'], ',d'):>16}",
            f"neuromorphic share of the work: {_pct(share['spikes'])} (spikes rule), {_pct(share['events'])} "
            "(events rule); neuron updates, biases and scale ops are in neither", ""]
    return out


def _diff(a, b):
    return None if a is None or b is None else a - b


def _energy_pair(energy: dict) -> str:
    return (f"{_num(energy.get('spikes'), '.4g')} µJ (spikes rule), "
            f"{_num(energy.get('events'), '.4g')} µJ (events rule)")


def format_ann_equal_accuracy(eq: dict) -> list[str]:
    """Lines for ``ann_equal_accuracy``'s result (the SNN against its ANN)."""
    snn, ann = eq["snn"], eq["ann"]
    out = [f"at equal accuracy (target {_pct(eq['target'])}: {eq['target_rule']})"]
    if snn["reached"]:
        out.append(f"SNN reaches it at T={snn['t']} ({_pct(snn['accuracy'])}): energy per image "
                   f"{_energy_pair(snn['energy_per_image_uj'])}")
    else:
        out.append(f"SNN does not reach it within T={eq['max_t']} (best {_pct(snn['best_accuracy'])} "
                   f"at T={snn['best_t']})")
    out.append(f"ANN ({_pct(ann['accuracy'])}): {_num(ann['energy_per_image_uj'], '.4g')} µJ per image (MACs x E_MAC)")
    return out


def format_equal_accuracy(eq: dict) -> list[str]:
    """Lines for ``equal_accuracy``'s result (models against each other)."""
    out = [f"at equal accuracy (target {_pct(eq['target'])}: {eq['target_rule']}):"]
    for label, m in eq["models"].items():
        if m["reached"]:
            out.append(f"  {label}: T={m['t']} ({_pct(m['accuracy'])}), {_num(m['spikes_per_image'], ',.0f')} "
                       f"spikes and {_num(m['events_per_image'], ',.0f')} events per image, energy per image "
                       f"{_energy_pair(m['energy_per_image_uj'])}")
        else:
            out.append(f"  {label}: not reached within T={eq['max_t']} (best {_pct(m['best_accuracy'])} at "
                       f"T={m['best_t']})")
    return out


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------

def _save_png(fig, path):
    import io

    from pmsm_compiler.files import save_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    save_bytes_atomic(buf.getvalue(), path)


def plot(report: dict, out_dir) -> list[str]:
    """Write ``accuracy_vs_t.png`` and ``spikes_per_layer.png`` (atomically) into ``out_dir``;
    return their paths. ``accuracy_vs_t.png`` is skipped when the report has no labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    T = report["timesteps"]
    ts = np.arange(1, T + 1)
    acc = report.get("accuracy_by_t")
    if acc is not None:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.plot(ts, [100 * a for a in acc], "o-", label="SNN (output averaged over 1..t)")
        if report.get("ann_accuracy") is not None:
            ax.axhline(100 * report["ann_accuracy"], color="k", ls="--", lw=1, label="ANN")
        ax.set_xlabel("timestep t")
        ax.set_ylabel("accuracy (%)")
        ax.set_xticks(ts if T <= 16 else ts[:: math.ceil(T / 16)])
        ax.set_title(f"accuracy vs timesteps ({report['samples']} samples)")
        ax.grid(alpha=0.3)
        ax.legend()
        path = os.path.join(out_dir, "accuracy_vs_t.png")
        _save_png(fig, path)
        plt.close(fig)
        paths.append(path)

    layers = report["layers"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(layers) + 2), 4.0))
    x = np.arange(len(layers))
    bottom = np.zeros(len(layers))
    cmap = plt.get_cmap("viridis")
    for t in range(T):
        h = np.array([r["spikes_by_t"][t] for r in layers], dtype=float)
        ax.bar(x, h, bottom=bottom, color=cmap(t / max(1, T - 1)) if T > 1 else "C0", label=f"t={t + 1}")
        bottom += h
    ax.set_xticks(x)
    ax.set_xticklabels([r["name"] for r in layers], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("spikes per image")
    ax.set_title(f"spikes per layer (stacked by timestep, T={T})")
    if T <= 12:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    path = os.path.join(out_dir, "spikes_per_layer.png")
    _save_png(fig, path)
    plt.close(fig)
    paths.append(path)
    return paths
