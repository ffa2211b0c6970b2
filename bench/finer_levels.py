"""What rate coding converges to: the quantized ANN with every quantizer's step divided by T.

    python bench/finer_levels.py --model models/resnet20_pqa_cifar10.onnx --data ../shared/data/cifar10 \
        [--t 1,2,4,8,16] [--limit N] [--snn-json docs/results.json --snn-model PMSM] [--json out.json]

An AIF neuron with u₀ = ½ and a constant input x (threshold units) emits, over T steps, a mean of
floor(T·x + ½)/T spikes per step: the rounding of x to a step of 1/T (beyond a cap, the cap).
So a layer run for T steps and averaged is the layer's quantizer with L·T levels on the same λ
(step s/T, the same clip range [αλ, βλ]); as T grows it tends to clip(x, αλ, βλ), the quantizer
without rounding. For the first neuron layer this holds up to the float rounding of the sums
(bit for bit on the dyadic inputs of its test); deeper layers see inputs that
vary from step to step, so for them it is the first-order picture. It is PQA's picture: QCFS
converts to binary IF neurons (θ = λ, one spike per step at most), whose T steps are not its
quantizer with L·T levels, so a pmsm::QCFS model is refused.

This script evaluates that picture: the model's own quantized ANN (a pmsm::PQA model as
`pmsm-train` exports it) with the attribute L of every quantizer multiplied by T
(αL and βL scale with it), in onnxruntime, on the test set, for each T asked. An SNN whose
accuracy over T moves away from its ANN's (bench/vit_results.py, bench/reproduce_paper.py) and
follows these figures drifts because rate coding refines the quantization step, not because a
wrapper or a neuron is wrong. ``--snn-json`` puts the SNN's accuracy by T beside them: a
bench/vit_results.py JSON, or bench/reproduce_paper.py's results.json with ``--snn-model`` naming
the model (its "NAME/MODE" entries).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pmsm_compiler.ops import DOMAIN

#: --t inf: L multiplied by this, close enough to no rounding at all
UNROUNDED_FACTOR = 4096


def with_finer_levels(model, factor: int):
    """A copy of ``model`` whose quantizers have ``factor`` times their levels L (same λ, same
    bounds α, β as fractions of λ: step λ/(L·factor))."""
    import onnx

    finer = onnx.ModelProto()
    finer.CopyFrom(model)
    changed = 0
    for node in finer.graph.node:
        if node.domain == DOMAIN and node.op_type == "QCFS":
            raise SystemExit("error: the model has pmsm::QCFS quantizers: they become binary IF neurons, whose T "
                             "steps are not the quantizer with L·T levels; give a PQA model")
        if node.domain == DOMAIN and node.op_type == "PQA":
            for attr in node.attribute:
                if attr.name == "L":
                    attr.i *= factor
                    changed += 1
    if not changed:
        raise SystemExit("error: the model has no pmsm::PQA node (give pmsm-train's ONNX export of a PQA model)")
    return finer


def accuracy(model, dataset, batch_size: int) -> float:
    import numpy as np

    from pmsm_compiler.data.normalization import iterate_batches
    from pmsm_compiler.data.prepare import resolve_normalization
    from pmsm_compiler.metadata import get_metadata
    from pmsm_compiler.snn_format import EXPORT_METADATA_KEY
    from pmsm_compiler.sessions import make_session

    mean, std = resolve_normalization("auto", get_metadata(model, EXPORT_METADATA_KEY, {}))
    session = make_session(model)
    name = session.get_inputs()[0].name
    correct = 0
    for x, y in iterate_batches(dataset, batch_size, mean, std):
        logits = session.run(None, {name: x})[0]
        correct += int(np.sum(np.argmax(logits, axis=1) == y))
    return correct / len(dataset.y)


def snn_accuracy_by_t(path: str, model_name: str | None) -> dict[str, list[float]]:
    """{mode: accuracy at T = 1, 2, ...} from a bench/vit_results.py JSON or, for ``model_name``,
    from bench/reproduce_paper.py's results.json."""
    with open(path) as f:
        data = json.load(f)
    if "summary" in data:
        return data["summary"]["accuracy_by_t"]
    if not model_name:
        raise SystemExit(f"error: {path} is not a bench/vit_results.py JSON; name the model with --snn-model")
    found = {key.split("/", 1)[1]: entry["accuracy_by_t"] for key, entry in data.items()
             if key.startswith(model_name + "/") and isinstance(entry, dict) and "accuracy_by_t" in entry}
    if not found:
        names = sorted({key.split("/", 1)[0] for key in data if "/" in key})
        raise SystemExit(f"error: {path} has no entries for {model_name!r} (it has: {', '.join(names)})")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a quantized ANN exported by pmsm-train (ONNX)")
    ap.add_argument("--data", required=True, help="folder with test.npz (or anything pmsm-run --data takes)")
    ap.add_argument("--t", default="1,2,4,8,16", help=f"comma-separated T (factors of L); 'inf': L·{UNROUNDED_FACTOR}")
    ap.add_argument("--limit", type=int, default=None, help="N evenly spaced test images only")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--snn-json", help="the SNN's accuracy by T to print beside: a bench/vit_results.py --json, "
                                       "or bench/reproduce_paper.py's results.json with --snn-model")
    ap.add_argument("--snn-model", help="the model's name in a reproduce_paper.py results.json (e.g. PMSM)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.model):
        ap.error(f"no such model: {args.model}")
    try:
        factors = [None if t.strip() == "inf" else int(t) for t in args.t.split(",")]
    except ValueError:
        ap.error(f"--t takes comma-separated positive integers or 'inf', got {args.t!r}")
    if any(f is not None and f < 1 for f in factors):
        ap.error("--t values must be >= 1")
    import onnx

    from pmsm_compiler.data import load_dataset

    test_npz = os.path.join(args.data, "test.npz")
    dataset = load_dataset(test_npz if os.path.isfile(test_npz) else args.data).evenly_spaced(args.limit)
    model = onnx.load(args.model)
    snn = snn_accuracy_by_t(args.snn_json, args.snn_model) if args.snn_json else {}
    rows = []
    for t in factors:  # None: T → ∞
        acc = accuracy(with_finer_levels(model, t or UNROUNDED_FACTOR), dataset, args.batch_size)
        row = {"t": t, "accuracy": acc}
        for mode, by_t in snn.items():
            if t is not None and t <= len(by_t):
                row[f"snn_{mode}"] = by_t[t - 1]
        rows.append(row)
    modes = list(snn)
    print(f"{os.path.basename(args.model)}, {len(dataset.y)} test images: the ANN with L·T levels "
          f"(what T steps of rate coding approach) against the SNN at T")
    header = ["T", "ANN, L·T levels (%)"] + [f"SNN {m} (%)" for m in modes]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [f"∞ (L·{UNROUNDED_FACTOR})" if r["t"] is None else str(r["t"]), f"{100 * r['accuracy']:.2f}"]
        cells += [f"{100 * r[f'snn_{m}']:.2f}" if f"snn_{m}" in r else "–" for m in modes]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "samples": len(dataset.y), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
