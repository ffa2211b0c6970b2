"""The spike-economy front: accuracy against spikes and against events per image at T = 1.

    python bench/spike_front.py --data ../shared/data/cifar10 \
        --model dense=models/resnet20_pqa_cifar10.onnx \
        --run training_state/sparse_sweep/spikes_w0.3 --run training_state/sparse_sweep/spikes_w1.0 \
        [--model qcfs=models/resnet20_qcfs_cifar10.onnx] [--limit N] \
        [--out docs/spike_front.md] [--figure docs/figures/spike_front.png] [--json front.json]

Each model is compiled in exact mode and run for one timestep on the test set with the ANN beside
it (pmsm_compiler.runtime.run_dataset): the T = 1 prediction agreement is the lossless claim,
checked image by image. Per model the script records accuracy, spikes per image (Σ|k|, the
paper's Eq. 11 unit), events per image (Σ 1[k ≠ 0]), energy per image under both rules, and
which models are on the Pareto front (no other model at least as accurate with fewer spikes,
resp. events). ``--run DIR`` takes a pmsm-train output folder (its model.onnx, and from
summary.json and train.log the penalty weight, rule, L and the exact commands); ``--model
LABEL=PATH`` any ONNX model (the training command then comes from its model card, if any).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def describe_run(run_dir: str) -> dict:
    """Label, model path, configuration and commands of a pmsm-train output folder."""
    from pmsm_compiler.training.trainer import read_train_log

    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    cfg = summary["config"]
    commands = [s["command"] for s in read_train_log(run_dir) if s.get("command")]
    label = f"L={cfg['levels']}, {cfg['penalty_rule']} penalty {cfg['spike_penalty']:g}"
    return {"label": label, "path": os.path.join(run_dir, "model.onnx"), "config": cfg,
            "commands": list(dict.fromkeys(commands)), "epochs": summary.get("epochs_done"),
            "wall_s": summary.get("wall_s")}


def describe_model(spec: str) -> dict:
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = os.path.splitext(os.path.basename(spec))[0], spec
    card_path = os.path.splitext(path)[0] + ".json"
    commands, cfg, epochs, wall = [], None, None, None
    if os.path.exists(card_path):
        with open(card_path) as f:
            card = json.load(f)
        commands = [card["training"]["command"]]
        cfg = card.get("activation")
        epochs, wall = card["training"].get("epochs_done"), card["training"].get("wall_time_s")
    return {"label": label, "path": path, "config": cfg, "commands": commands, "epochs": epochs, "wall_s": wall}


def measure(path: str, dataset, batch_size: int) -> dict:
    """Compile exact (and verify at T = 1, as pmsm-compile does), run T = 1 beside the ANN; the
    figures of one point of the front."""
    from pmsm_compiler.data.prepare import resolve_normalization
    from pmsm_compiler.pipeline import compile_and_verify
    from pmsm_compiler.runtime import SNNSession, run_dataset
    from pmsm_compiler.runtime.report import cost_at
    from pmsm_compiler.sessions import make_session

    result = compile_and_verify(path, "exact")
    mean, std = resolve_normalization("auto", result.info)
    started = time.perf_counter()
    report = run_dataset(SNNSession(result.model), dataset, 1, batch_size, mean, std,
                         ann_session=make_session(result.ann), progress=False, model=os.path.basename(path))
    cost = cost_at(report, 1)
    neurons = sum(layer["neurons"] for layer in report["layers"])
    return {"accuracy": cost["accuracy"], "ann_accuracy": report["ann_accuracy"],
            "verification_passed": result.verification["passed"],
            "t1_prediction_agreement": report["t1_prediction_agreement"],
            "spikes_per_image": cost["spikes_per_image"], "events_per_image": cost["events_per_image"],
            "spikes_per_neuron": cost["spikes_per_image"] / neurons,
            "events_per_neuron": None if cost["events_per_image"] is None else cost["events_per_image"] / neurons,
            "energy_per_image_uj": cost["energy_per_image_uj"], "neurons": neurons,
            "negative_spikes_per_image": report.get("negative_spikes_per_image"),
            "seconds": round(time.perf_counter() - started, 1)}


def against_baseline(points: list[dict], baseline: dict, name: str) -> list[str]:
    """Markdown rows: for each lossless point, the smallest T at which ``baseline`` (a pmsm-run
    report over T = 1..max, e.g. QCFS in docs/results.json) reaches the point's accuracy, and the
    energy per image each spends there (the point at T = 1)."""
    from pmsm_compiler.runtime.report import cost_at, first_t_reaching

    acc = baseline["accuracy_by_t"]
    lines = [f"| PMSM model (T = 1) | accuracy | µJ / image, spikes / events rule | {name} reaches it at | "
             f"{name} µJ / image, spikes / events rule | {name} / PMSM energy, spikes / events rule |",
             "|---|---|---|---|---|---|"]
    for p in points:
        if p["t1_prediction_agreement"] != 1.0:
            continue
        e = p["energy_per_image_uj"]
        t = first_t_reaching(acc, p["accuracy"])
        head = f"| {p['label']} | {100 * p['accuracy']:.2f} % | {e['spikes']:.1f} / {e['events']:.1f} |"
        if t is None:
            lines.append(f"{head} not within T ≤ {len(acc)} (best {100 * max(acc):.2f} %) | – | – |")
            continue
        b = cost_at(baseline, t)["energy_per_image_uj"]
        lines.append(f"{head} T = {t} ({100 * acc[t - 1]:.2f} %) | {b['spikes']:.1f} / {b['events']:.1f} | "
                     f"{b['spikes'] / e['spikes']:.2f}× / {b['events'] / e['events']:.2f}× |")
    return lines


def pareto(points: list[dict], cost_key: str) -> list[bool]:
    """True where no other point is at least as accurate and strictly cheaper (or strictly more
    accurate at no more cost)."""
    flags = []
    for p in points:
        dominated = any(q is not p and q["accuracy"] >= p["accuracy"] and q[cost_key] <= p[cost_key]
                        and (q["accuracy"] > p["accuracy"] or q[cost_key] < p[cost_key]) for q in points)
        flags.append(not dominated)
    return flags


def plot(points: list[dict], path: str, title: str):
    """Accuracy against spikes and against events, one panel each. Lossy points (QCFS at T = 1: its
    SNN is not its ANN there) are drawn as vertical lines, so that their accuracy does not squash
    the axis the lossless points share."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lossless = [p for p in points if p["t1_prediction_agreement"] == 1.0]
    lossy = [p for p in points if p["t1_prediction_agreement"] != 1.0]
    fig = Figure(figsize=(11, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    for i, (key, name) in enumerate((("spikes_per_image", "spikes per image at T = 1 (Σ|k|)"),
                                      ("events_per_image", "events per image at T = 1 (Σ 1[k ≠ 0])"))):
        ax = fig.add_subplot(1, 2, i + 1)
        front = sorted((p for p, on in zip(lossless, pareto(lossless, key)) if on), key=lambda p: p[key])
        ax.plot([p[key] for p in front], [100 * p["accuracy"] for p in front], "k--", linewidth=1,
                label="Pareto front (lossless at T = 1)")
        markers = "osD^vP*Xhp<>"
        for j, p in enumerate(lossless):  # a marker and legend entry each: labels next to close points collide
            ax.plot(p[key], 100 * p["accuracy"], markers[j % len(markers)], color=f"C{j % 10}", markersize=7,
                    linestyle="none", label=p["label"])
        for p in lossy:
            ax.axvline(p[key], color="r", linestyle=":", linewidth=1.2,
                       label=f"{p['label']}: {100 * p['accuracy']:.1f} % at T = 1 (lossy, off the axis)")
        if lossless:
            accs = [100 * p["accuracy"] for p in lossless]
            ax.set_ylim(min(accs) - 2, max(accs) + 1.5)
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("test accuracy at T = 1 (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder with test.npz, or 'bundled' (the 1,000 shipped test images)")
    ap.add_argument("--model", action="append", default=[], help="LABEL=PATH of an ONNX model (repeatable)")
    ap.add_argument("--run", action="append", default=[], help="pmsm-train output folder (repeatable)")
    ap.add_argument("--limit", type=int, default=None, help="N evenly spaced test images only (quick check)")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--out", default=None, help="write the markdown section here")
    ap.add_argument("--figure", default=None, help="write the PNG here")
    ap.add_argument("--json", default=None)
    ap.add_argument("--baseline", default=None, metavar="REPORTS_JSON:KEY",
                    help="compare each point with a model run over T = 1..max at equal accuracy, e.g. "
                         "docs/results.json:QCFS/folded (bench/reproduce_paper.py's reports)")
    args = ap.parse_args(argv)
    if not args.model and not args.run:
        ap.error("give at least one --model or --run")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pmsm_compiler.data import load_dataset, load_npz

    dataset = load_dataset("bundled") if args.data == "bundled" else load_npz(os.path.join(args.data, "test.npz"))
    dataset = dataset.evenly_spaced(args.limit)  # CIFAR's test set is sorted by class
    entries = [describe_model(m) for m in args.model] + [describe_run(r) for r in args.run]
    started = time.perf_counter()
    points = []
    for entry in entries:
        print(f"== {entry['label']}: {entry['path']}", file=sys.stderr, flush=True)
        point = {**entry, **measure(entry["path"], dataset, args.batch_size)}
        print(f"   accuracy {100 * point['accuracy']:.2f} %, T=1 agreement "
              f"{100 * point['t1_prediction_agreement']:.2f} %, {point['spikes_per_image']:.4g} spikes, "
              f"{point['events_per_image']:.4g} events per image", file=sys.stderr, flush=True)
        points.append(point)
    for key, flag in (("spikes_per_image", "front_spikes"), ("events_per_image", "front_events")):
        for p, on in zip(points, pareto(points, key)):
            p[flag] = on
    command = "python bench/spike_front.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Produced by `{command}` on {datetime.date.today().isoformat()}: {len(dataset)} test images, "
        f"{time.perf_counter() - started:.0f} s on this machine. Exact-mode compiles at T = 1; 'T=1 agreement' "
        "is the share of images on which the SNN predicts what its quantized ANN predicts (the lossless claim).",
        "",
        "| model | epochs | accuracy T=1 | ANN | T=1 agreement | spikes / image | events / image | spikes / neuron "
        "| energy µJ (spikes / events rule) | on the front (spikes / events) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        e = p["energy_per_image_uj"]
        lines.append(
            f"| {p['label']} | {p['epochs'] if p['epochs'] is not None else '–'} | {100 * p['accuracy']:.2f} % | "
            f"{100 * p['ann_accuracy']:.2f} % | {100 * p['t1_prediction_agreement']:.2f} % | "
            f"{p['spikes_per_image']:.3g} | {p['events_per_image']:.3g} | {p['spikes_per_neuron']:.3f} | "
            f"{e['spikes']:.1f} / {e['events']:.1f} | {'yes' if p['front_spikes'] else 'no'} / "
            f"{'yes' if p['front_events'] else 'no'} |")
    if args.baseline:
        file, _, key = args.baseline.partition(":")
        with open(file) as f:
            baseline = json.load(f)[key]
        name = key.split("/")[0]
        lines += ["", f"At equal accuracy against {name} ({args.baseline}: {len(baseline['accuracy_by_t'])} timesteps, "
                      f"{baseline['samples']} test images):", ""] + against_baseline(points, baseline, name)
    lines += ["", "Commands that made the models:", ""]
    for p in points:
        for c in p["commands"] or ["(no training record)"]:
            lines.append(f"- {p['label']}: `{c}`")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.figure:
        os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
        plot(points, args.figure, f"ResNet-20, CIFAR-10 (JPEG re-decoded), {len(dataset)} test images: "
                                  "accuracy vs spike cost at T = 1")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "points": points}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
