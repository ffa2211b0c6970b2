"""How to start λ when a quantized network is fine-tuned from a float (ReLU) one → docs/training.md.

    python bench/finetune_lambda_init.py --init-from runs/relu/checkpoint.pt --data ../shared/data/cifar10 \
        [--limit 2000] [--json PATH]

Loads the ReLU checkpoint into the same architecture with PQA (α = −0.25, β = 1, L = 8) and with
QCFS (L = 8), sets every λ by one rule, and measures the test accuracy *before* any fine-tuning
step (PyTorch eval, BN running statistics of the ReLU run). Rules:

- ``fixed λ0``: every λ = λ0 (the paper's default is 8);
- ``quantile q``: λ = the q-quantile of the quantizer's input on one training batch;
- ``MSE to ReLU``: the λ (of 200 evenly spaced up to the input's max) whose quantizer output is
  closest in mean squared error to the ReLU it replaces, the usual post-training calibration.

The calibrated rules run in forward order within one pass, each quantizer on the outputs of the
already set ones before it. The accuracy of the ReLU network itself is printed as the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

QUANTILES = (0.99, 0.999, 1.0)
FIXED = (2.0, 4.0, 6.0, 8.0, 12.0)


def set_lambdas(model, x, rule, value=None, grid=200, max_values=1 << 20):
    import torch
    import torch.nn.functional as F

    from pmsm_compiler.training.activations import quantized_activations

    quantizers = quantized_activations(model)
    if rule == "fixed":
        with torch.no_grad():
            for _, q in quantizers:
                q.lam.fill_(value)
        return
    gen = torch.Generator().manual_seed(0)

    def hook(q, inputs):
        z = inputs[0].detach().float().reshape(-1)
        if z.numel() > max_values:
            z = z[torch.randint(0, z.numel(), (max_values,), generator=gen)]
        if rule == "quantile":
            lam = float(torch.quantile(z, value))
        else:  # MSE to the ReLU the quantizer replaces
            top, target = float(z.max()), F.relu(z)
            best = None
            for i in range(grid):
                lam_i = top * (i + 1) / grid
                step = lam_i / q.levels
                y = torch.div(z, step).add_(0.5).floor_().clamp_(q.k_min, q.k_max).mul_(step)
                err = float((y - target).pow_(2).mean())
                if best is None or err < best[0]:
                    best = (err, lam_i)
            lam = best[1]
        if lam > 0:
            q.lam.fill_(lam)

    model.eval()
    handles = [q.register_forward_pre_hook(hook) for _, q in quantizers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init-from", required=True, help="a ReLU run's checkpoint.pt")
    ap.add_argument("--data", required=True, help="folder with train.npz and test.npz")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--limit", type=int, default=None, help="N evenly spaced test images (the set is sorted by class)")
    ap.add_argument("--calibration-batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from pmsm_compiler.training.activations import ActivationSpec
    from pmsm_compiler.data import NORMALIZATIONS, load_npz
    from pmsm_compiler.training.zoo import build_model
    from pmsm_compiler.training.trainer import Normalizer, evaluate, load_init_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load_npz(os.path.join(args.data, "train.npz")), load_npz(os.path.join(args.data, "test.npz"))
    idx = np.arange(len(test.x)) if not args.limit else np.linspace(0, len(test.x) - 1, args.limit).round().astype(int)
    tx, ty = torch.from_numpy(test.x[idx]), torch.from_numpy(test.y[idx].astype(np.int64))
    norm = Normalizer(*NORMALIZATIONS["cifar10"])
    calib = norm(torch.from_numpy(np.ascontiguousarray(train.x[:args.calibration_batch])))
    started = time.perf_counter()

    relu = build_model(args.model, act=ActivationSpec("relu"))
    load_init_weights(relu, args.init_from)
    rows = [{"activation": "relu", "rule": "the float network itself", "accuracy": evaluate(relu, tx, ty, norm, "cpu")}]
    rules = ([("fixed", v, f"fixed λ0 = {v:g}") for v in FIXED] + [("quantile", q, f"quantile {q:g}") for q in QUANTILES]
             + [("mse", None, "MSE to ReLU")])
    for act in ("pqa", "qcfs"):
        for rule, value, label in rules:
            model = build_model(args.model, act=ActivationSpec(act))
            load_init_weights(model, args.init_from)
            set_lambdas(model, calib, rule, value)
            acc = evaluate(model, tx, ty, norm, "cpu")
            rows.append({"activation": act, "rule": label, "accuracy": acc})
            print(f"{act:5s} {label:18s} {100 * acc:6.2f} %", file=sys.stderr, flush=True)
    command = "python bench/finetune_lambda_init.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"`{command}` ({len(idx)} test images, {time.perf_counter() - started:.0f} s):", "",
             "| activation | λ before fine-tuning | test accuracy (%) |", "|---|---|---|"]
    lines += [f"| {r['activation']} | {r['rule']} | {100 * r['accuracy']:.2f} |" for r in rows]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "test_images": int(len(idx)), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
