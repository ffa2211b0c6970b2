"""A trained PQA ViT's figures on the test set (issue 19) → a Markdown section for docs/results.md.

    python bench/vit_results.py --model models/vit_cifar_pqa_cifar10.onnx --data ../shared/data/cifar10 \
        [--max-t 16] [--limit N] [--batch-size 100] [--out docs/results_vit.md] [--figure docs/figures/vit_accuracy_vs_t.png] \
        [--json vit_results.json] [--into docs/results.md]
    python bench/vit_results.py --from-json vit_results.json [--into docs/results.md] [--figure ...]   # re-render only

The sibling of bench/reproduce_paper.py for a transformer. For the model, compiled in exact and in
folded mode through the pipeline `pmsm-compile` runs (each verified at T = 1), and run by the
runtime over T = 1..max_t (input repeated each step, outputs averaged), beside its quantized ANN:

- accuracy against T for the ANN and both compiles, table and plot;
- T = 1: the prediction agreement with the ANN (exact mode: the lossless claim, every image) and
  folded mode's flip rate (images whose prediction changes);
- the drift: how far each compile's accuracy is from the ANN's at each T, and the largest;
- the work per image, synaptic operations against the temporal wrappers' dense operations
  (report key ``work``), at T = 1 and at max_t;
- why the SNN moves from its ANN as T grows: beside it, the ANN with every quantizer's L
  multiplied by T (bench/finer_levels.py: T steps of an AIF neuron are its quantizer with L·T
  levels), for T = 1..max_t and without rounding (L·4096), and the largest gap between the SNN
  and that network (``--no-finer-levels`` leaves it out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = ("exact", "folded")
VERIFY_SAMPLES = 256


def run_mode(path: str, mode: str, dataset, max_t: int, batch_size: int) -> dict:
    from pmsm_compiler.data.prepare import resolve_normalization
    from pmsm_compiler.pipeline import compile_and_verify
    from pmsm_compiler.runtime import SNNSession, run_dataset
    from pmsm_compiler.sessions import make_session

    start = time.perf_counter()
    # Verified on real images (the bundled sample), not random ones: on random inputs a trained ViT's
    # logits are nearly tied, and folded mode's few changed levels flip a third of what they flip
    # on images (a 1-epoch ViT: 93.8 % top-1 agreement on random inputs, 99.2 % on the sample).
    compiled = compile_and_verify(path, mode, data="bundled", samples=VERIFY_SAMPLES)
    if mode == "exact":  # the lossless claim must hold before anything is measured
        compiled.raise_if_failed(os.path.basename(path))
    mean, std = resolve_normalization("auto", compiled.info)
    report = run_dataset(SNNSession(compiled.model), dataset, max_t, batch_size, mean, std,
                         ann_session=make_session(compiled.ann), progress=sys.stderr.isatty(),
                         model=os.path.basename(path))
    v = compiled.verification  # folded mode's tolerances may fail: that is its flip rate, measured below
    report["compile_verification"] = {k: v.get(k) for k in ("passed", "failures", "data", "level_agreement",
                                                             "top1_agreement")}
    report["wall_s"] = round(time.perf_counter() - start, 1)
    return report


def finer_levels_by_t(path: str, dataset, max_t: int, batch_size: int) -> dict:
    """The ANN with L·T levels, T = 1..max_t, and unrounded (bench/finer_levels.py)."""
    import onnx

    sys.path.insert(0, HERE)
    from finer_levels import UNROUNDED_FACTOR, accuracy, with_finer_levels

    model = onnx.load(path)
    return {"accuracy_by_t": [accuracy(with_finer_levels(model, t), dataset, batch_size) for t in range(1, max_t + 1)],
            "unrounded": accuracy(with_finer_levels(model, UNROUNDED_FACTOR), dataset, batch_size),
            "unrounded_factor": UNROUNDED_FACTOR}


def pct(x):
    return "–" if x is None else f"{100 * x:.2f}"


def count(x):
    return "–" if x is None else f"{x:,.0f}"


def summarize(reports: dict, max_t: int, finer: dict | None = None) -> dict:
    exact = reports["exact"]
    ann = exact["ann_accuracy"]
    drift = {mode: [a - ann for a in r["accuracy_by_t"]] for mode, r in reports.items()}
    if finer:
        gaps = {mode: [a - f for a, f in zip(r["accuracy_by_t"], finer["accuracy_by_t"])] for mode, r in reports.items()}
        finer = {**finer, "gap_by_t": gaps, "largest_gap": {mode: max(g, key=abs) for mode, g in gaps.items()}}
    return {
        "ann_accuracy": ann,
        "samples": exact["samples"],
        "accuracy_by_t": {mode: r["accuracy_by_t"] for mode, r in reports.items()},
        "t1_agreement": {mode: r["t1_prediction_agreement"] for mode, r in reports.items()},
        "folded_t1_flip_rate": 1.0 - reports["folded"]["t1_prediction_agreement"],
        "drift_by_t": drift,
        "largest_drift": {mode: max(d, key=abs) for mode, d in drift.items()},
        "work": {mode: r.get("work") for mode, r in reports.items()},
        "spikes_per_image_t1": {mode: r["spikes_per_image_by_t"][0] for mode, r in reports.items()},
        "max_t": max_t,
        "wall_s": {mode: r["wall_s"] for mode, r in reports.items()},
        "compile_verification": {mode: r["compile_verification"] for mode, r in reports.items()},
        "finer_levels": finer,
    }


def _images(n: int) -> str:
    return f"{n:,} image" + ("" if n == 1 else "s")


def markdown(summary: dict, model: str, command: str, figure: str | None) -> str:
    acc, agree = summary["accuracy_by_t"], summary["t1_agreement"]
    lines = [f"## A PQA ViT on CIFAR-10 ({os.path.basename(model)})", "",
             f"Produced by `{command}` on {datetime.date.today().isoformat()}: {summary['samples']} test images, "
             f"T = 1..{summary['max_t']} (input repeated each step, outputs averaged).", "",
             f"- ANN (onnxruntime): {pct(summary['ann_accuracy'])} %.",
             f"- T = 1, exact mode: {pct(acc['exact'][0])} %, the ANN's prediction on {pct(agree['exact'])} % of the "
             "images: the lossless claim " + ("holds." if agree["exact"] == 1.0 else
                                             "**does not hold** (the prediction differs on "
                                             f"{_images(round((1 - agree['exact']) * summary['samples']))})."),
             f"- T = 1, folded mode: {pct(acc['folded'][0])} %, flip rate {pct(summary['folded_t1_flip_rate'])} % "
             "of the images; `pmsm-compile`'s verification of it (its default tolerances, "
             f"{summary['compile_verification']['folded']['data']}): "
             + ("passed" if summary["compile_verification"]["folded"]["passed"] else
                "failed, " + "; ".join(summary["compile_verification"]["folded"]["failures"])) + ".",
             f"- Largest gap to the ANN over T: exact {100 * summary['largest_drift']['exact']:+.2f} points, folded "
             f"{100 * summary['largest_drift']['folded']:+.2f} points."]
    finer = summary.get("finer_levels")
    if finer:
        gap = finer["largest_gap"]
        lines += [f"- Why: T steps of an AIF neuron (u₀ = ½) are its quantizer with L·T levels on the same λ "
                  "(exactly for a first neuron layer, to first order behind it; `bench/finer_levels.py`), so rate "
                  "coding refines the ANN's quantization step by 1/T. The ANN with every quantizer's L multiplied by "
                  f"T (last column) is what the SNN follows: largest gap over T = 1..{summary['max_t']}, exact "
                  f"{100 * gap['exact']:+.2f} points, folded {100 * gap['folded']:+.2f} points. Without rounding "
                  f"(L·{finer['unrounded_factor']}) that ANN gives {pct(finer['unrounded'])} %."]
    lines += [""]
    if figure:
        lines += [f"![accuracy vs T]({os.path.relpath(figure, os.path.join(ROOT, 'docs'))})", ""]
    header = "| T | ANN (%) | SNN exact (%) | SNN folded (%) |" + (" ANN, L·T levels (%) |" if finer else "")
    lines += [header, "|---|---|---|---|" + ("---|" if finer else "")]
    for t in range(1, summary["max_t"] + 1):
        lines.append(f"| {t} | {pct(summary['ann_accuracy'])} | {pct(acc['exact'][t - 1])} | "
                     f"{pct(acc['folded'][t - 1])} |" + (f" {pct(finer['accuracy_by_t'][t - 1])} |" if finer else ""))
    work = summary["work"]["exact"]
    if work:
        share = work["neuromorphic_share"]
        t = summary["max_t"]
        lines += ["", f"Work per image over T = {t} and per step (exact compile; `pmsm-run --json` key `work`; "
                  "synaptic operations per step are the mean over the T steps):", "",
                  f"| kind | operations / image, T = {t} | per step |", "|---|---|---|",
                  f"| synaptic, spikes rule (neuromorphic) | {count(work['sops'])} | {count(work['sops'] / t)} |",
                  f"| synaptic, events rule (neuromorphic) | {count(work['event_sops'])} | "
                  f"{count(work['event_sops'] / t)} |",
                  f"| dense: temporal wrappers (LayerNorm, Softmax, MatMul of two activations) | "
                  f"{count(work['dense_ops'])} | {count(work['dense_ops_step_1'])} at t = 1, "
                  f"{count(work['dense_ops_per_later_step'])} each later step |",
                  f"| dense: MACs on the network input | {count(work['static_macs'])} | once per image |",
                  f"| neuromorphic share (spikes / events rule) | {pct(share['spikes'])} % / {pct(share['events'])} % | |"]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = list(range(1, summary["max_t"] + 1))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.axhline(100 * summary["ann_accuracy"], color="k", ls="--", label="ANN")
    for mode, marker in (("exact", "o-"), ("folded", "s-")):
        ax.plot(ts, [100 * a for a in summary["accuracy_by_t"][mode]], marker, label=f"SNN, {mode} mode")
    if summary.get("finer_levels"):
        ax.plot(ts, [100 * a for a in summary["finer_levels"]["accuracy_by_t"]], "k:", label="ANN with L·T levels")
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    from pmsm_compiler.runtime.report import _save_png

    _save_png(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="the PQA ViT (ONNX); required unless --from-json")
    ap.add_argument("--data", help="folder with test.npz (or anything pmsm-run --data takes); required unless --from-json")
    ap.add_argument("--max-t", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="N evenly spaced test images only (quick check)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--out", help="write the Markdown section here")
    ap.add_argument("--into", help="put the section into this page (docs/results.md) as its own marked block, "
                                   "replacing an earlier one; bench/reproduce_paper.py keeps it when it rewrites the page")
    ap.add_argument("--figure", help="write the accuracy-vs-T plot here (PNG)")
    ap.add_argument("--json")
    ap.add_argument("--from-json", help="render the section, plot and page from this script's earlier --json "
                                        "(the model and the command recorded there) instead of running")
    ap.add_argument("--no-finer-levels", action="store_true",
                    help="leave out the ANN with L·T levels (max_t + 1 more ANN runs over the data)")
    args = ap.parse_args(argv)
    if args.max_t < 1:
        ap.error("--max-t must be >= 1")
    if args.from_json:
        try:
            with open(args.from_json) as f:
                saved = json.load(f)
            summary, reports, command, args.model = saved["summary"], saved["reports"], saved["command"], saved["model"]
        except (OSError, ValueError, KeyError) as exc:
            ap.error(f"--from-json {args.from_json}: not this script's --json ({type(exc).__name__}: {exc})")
        rerender = "python bench/vit_results.py " + " ".join(argv if argv is not None else sys.argv[1:])
        return render(args, summary, reports, command, rerender)
    if not args.model or not args.data:
        ap.error("--model and --data are required (or --from-json)")
    if not os.path.isfile(args.model):
        ap.error(f"no such model: {args.model}")
    from pmsm_compiler.data import load_dataset

    test_npz = os.path.join(args.data, "test.npz")
    dataset = load_dataset(test_npz if os.path.isfile(test_npz) else args.data)
    dataset = dataset.evenly_spaced(args.limit)  # CIFAR's test set is sorted by class
    reports = {mode: run_mode(args.model, mode, dataset, args.max_t, args.batch_size) for mode in MODES}
    finer = None if args.no_finer_levels else finer_levels_by_t(args.model, dataset, args.max_t, args.batch_size)
    summary = summarize(reports, args.max_t, finer)
    command = "python bench/vit_results.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return render(args, summary, reports, command)


def render(args, summary: dict, reports: dict, command: str, rendered_by: str | None = None) -> int:
    """The section (printed, --out, --into), the plot (--figure) and the JSON (--json) of a run
    (``command``; ``rendered_by``: the --from-json command that renders it again)."""
    if args.figure:
        plot(summary, args.figure)
    shown = f"{command}`, rendered again by `{rendered_by}" if rendered_by else command  # inside `…`
    text = markdown(summary, args.model, shown, args.figure)
    print(text)
    if args.out:
        from pmsm_compiler.files import save_text_atomic

        save_text_atomic(text, args.out)
    if args.into:
        from pmsm_compiler.files import save_text_atomic

        sys.path.insert(0, HERE)
        from doc_sections import put_section

        save_text_atomic(put_section(args.into, "bench/vit_results.py", text), args.into)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "reports": reports, "command": command, "model": args.model}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
