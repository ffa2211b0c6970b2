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

Energy, two methods (constants below; E_AC = E_spike = 0.9 pJ, E_MAC = 4.6 pJ, the 45 nm values
used by SpikeZIP-TF and most SNN papers):

    paper, Eq. 11:  E = N̄ · E_spike                       spikes_pj
                    P = N̄ · E_spike / (T · Δt)             power_mw, Δt = 1 ms, P in mW
                    (units inferred by reproducing Table 3: N̄ = 3.08e5 spikes per image, T = 1
                    → 0.277 mW; 6.44e5 at T = 2 → 0.290 mW). It counts spikes only.
    SOP convention: E_SNN = Σ_l sops[l] · E_AC             snn_sop_energy_pj
                    E_ANN = M · E_MAC                      ann_mac_energy_pj
                    The first layer reads the real-valued image: its MACs are the same as the
                    ANN's and are NOT included in the SOPs (the common SNN convention).

Accuracy: ``accuracy_by_t[t-1]`` = fraction of samples whose argmax of the network output
averaged over steps 1..t equals the label; ``t1_prediction_agreement`` = fraction of samples for
which the ANN's argmax equals the SNN's at T = 1 (exactly 1.0 for an exact-mode compile).
"""

from __future__ import annotations

import math
import os

import numpy as np

SCHEMA_VERSION = 1
TOOL = "pmsm-run"

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


def _frac(count, total):
    return None if count is None or not total else float(count) / float(total)


def summarize(info: dict, spikes_sum_by_t_layer, samples: int, timesteps: int, correct_by_t=None,
              ann_correct=None, t1_agree=None, labels_present: bool | None = None, *, model: str | None = None,
              extra: dict | None = None) -> dict:
    """Build the JSON report (schema_version 1) from accumulated integer counts.

    ``spikes_sum_by_t_layer``: int [T, layers], spikes summed over all samples, column j = the
    layer with ``count_index`` j. ``correct_by_t``: int [T], samples whose averaged output up to
    step t is correct. ``ann_correct``: samples the ANN gets right (None without an ANN or labels).
    ``t1_agree``: samples where argmax(ANN) == argmax(SNN at T = 1) (None without an ANN).
    ``labels_present`` defaults to ``correct_by_t is not None``. ``extra`` entries are added at the
    end of the report (data set, timing, ...).
    """
    timesteps = int(timesteps)
    samples = int(samples)
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    layers = info["layers"]
    counts = np.asarray(spikes_sum_by_t_layer)
    if counts.dtype.kind not in "iu":
        raise TypeError(f"spike counts must be integers (int64), got {counts.dtype}")
    counts = counts.astype(np.int64, copy=False)
    if counts.shape != (timesteps, len(layers)):
        raise ValueError(f"spike counts have shape {counts.shape}, expected ({timesteps}, {len(layers)})")
    if labels_present is None:
        labels_present = correct_by_t is not None
    n = max(samples, 1)

    layer_rows = []
    sops_total, sops_known = 0.0, True
    for j, layer in enumerate(layers):
        col = counts[:, int(layer.get("count_index", j))]
        total = int(col.sum())  # Python int: exact at any size
        per_image = total / n
        neurons = layer.get("neurons")
        fan_out = layer.get("fan_out")
        sops = None if fan_out is None else per_image * float(fan_out)
        if sops is None:
            sops_known = False
        else:
            sops_total += sops
        layer_rows.append({
            "name": layer["name"], "neuron": layer.get("neuron"), "neurons": neurons,
            "spikes_by_t": [int(c) / n for c in col], "spikes": per_image, "spikes_total": total,
            "firing_rate": (per_image / (neurons * timesteps)) if neurons else None,
            "fan_out": None if fan_out is None else float(fan_out), "sops": sops,
        })

    by_t_total = [int(v) for v in counts.sum(axis=1)]
    spikes_total = int(sum(by_t_total))
    spikes_per_image = spikes_total / n
    spikes_pj = spikes_per_image * E_SPIKE_PJ
    power_mw = (spikes_pj * 1e-12) / (timesteps * TIMESTEP_MS * 1e-3) * 1e3
    ann_macs = info.get("ann_macs")
    sop_pj = sops_total * E_AC_PJ if sops_known else None
    ann_pj = None if ann_macs is None else float(ann_macs) * E_MAC_PJ
    energy = {
        "spikes_pj": spikes_pj,
        "power_mw": power_mw,
        "sops": sops_total if sops_known else None,
        "snn_sop_energy_pj": sop_pj,
        "ann_macs": None if ann_macs is None else int(ann_macs),
        "ann_mac_energy_pj": ann_pj,
        "ann_to_snn_sop_energy_ratio": (ann_pj / sop_pj) if (ann_pj is not None and sop_pj) else None,
        "e_spike_pj": E_SPIKE_PJ, "e_ac_pj": E_AC_PJ, "e_mac_pj": E_MAC_PJ, "timestep_ms": TIMESTEP_MS,
        "note": {"spikes": NOTE_SPIKES, "sops": NOTE_SOPS, "ann": NOTE_ANN},
    }
    if not sops_known:
        missing = [r["name"] for r in layer_rows if r["fan_out"] is None]
        energy["note"]["sops"] += f"; fan-out unknown for {', '.join(missing)}: SOPs not computed"

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
        "mode": info.get("mode"),
        "timesteps": timesteps,
        "samples": samples,
        "labels": bool(labels_present),
        "accuracy_by_t": accuracy_by_t,
        "ann_accuracy": _frac(ann_correct, samples) if labels_present else None,
        "t1_prediction_agreement": _frac(t1_agree, samples),
        "spikes_per_image_by_t": [v / n for v in by_t_total],
        "spikes_per_image": spikes_per_image,
        "spikes_total": spikes_total,
        "energy": energy,
        "layers": layer_rows,
    }
    if extra:
        report.update(extra)
    return report


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
    out += [f"{k:<44} {v:>14}" for k, v in rows]
    out.append("Eq. 11 counts spikes only; SOPs exclude the first layer's real-valued input MACs.")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------

def _save_png(fig, path):
    import io

    from pmsm_compiler.loading import save_bytes_atomic

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
