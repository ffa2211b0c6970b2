"""Is a step's cost flat in T? pmsm-run's per-step time at a long T against a short one, side by side.

    python bench/flat_step.py [--images 256] [--batch-size 64] [--short 2] [--long 64] [--rounds 3] \
        [--modes folded,exact] [--threads 1] [--json flat_step.json]

For the shipped PQA ResNet-20, per mode: `runtime.run_dataset` (what `pmsm-run` runs: the steps, the
running means and predictions at every t, the counters) on the bundled images for T = --short and
T = --long, alternated round by round in one process; the per-step time is the run's wall time over
T × batches. It prints the median per-step times and their ratio long / short (issue 20's target:
within 3 %). A stateful loop should cost the same each step; a ratio above 1 means something grows
with T (per-t bookkeeping, buffers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def measure(mode: str, dataset, batch_size: int, short: int, long: int, rounds: int, threads: int) -> dict:
    from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD
    from pmsm_compiler.models import shipped_model_path
    from pmsm_compiler.pipeline import compile_and_verify
    from pmsm_compiler.runtime import SNNSession, run_dataset

    result = compile_and_verify(str(shipped_model_path("resnet20_pqa_cifar10.onnx")), mode, check=False)
    session = SNNSession(result.model, threads=threads)
    batches = -(-len(dataset) // batch_size)
    run_dataset(session, dataset, short, batch_size, CIFAR10_MEAN, CIFAR10_STD, progress=False)  # warm-up
    per_step = {short: [], long: []}
    for _ in range(rounds):
        for t in (short, long):
            started = time.perf_counter()
            run_dataset(session, dataset, t, batch_size, CIFAR10_MEAN, CIFAR10_STD, progress=False)
            per_step[t].append((time.perf_counter() - started) / (t * batches))
    s, lg = statistics.median(per_step[short]), statistics.median(per_step[long])
    return {"mode": mode, "short_t": short, "long_t": long, "per_step_ms_short": 1e3 * s, "per_step_ms_long": 1e3 * lg,
            "ratio_long_over_short": lg / s, "rounds": {str(k): v for k, v in per_step.items()},
            "fused_kernels": bool(session.kernels)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="bundled test images")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--short", type=int, default=2)
    ap.add_argument("--long", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="folded,exact")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0: its default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not 1 <= args.short < args.long:
        ap.error("need 1 <= --short < --long")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pmsm_compiler.data import load_dataset

    dataset = load_dataset("bundled").subset(args.images)
    command = "python bench/flat_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    print(f"{len(dataset)} bundled images, batch {args.batch_size}, {args.rounds} rounds, threads {args.threads}")
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        row = measure(mode, dataset, args.batch_size, args.short, args.long, args.rounds, args.threads)
        rows.append(row)
        print(f"{mode:6s}: per step {row['per_step_ms_short']:.2f} ms at T = {args.short}, "
              f"{row['per_step_ms_long']:.2f} ms at T = {args.long}: ratio {row['ratio_long_over_short']:.3f}",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
