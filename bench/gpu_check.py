"""The shipped models on an execution provider (CUDA on a GPU machine): T = 1 agreement and step time.

    python bench/gpu_check.py --providers cuda [--images 1000] [--batch-size 64] [--rounds 5] \
        [--timesteps 8] [--json gpu_check.json]

For each shipped model (PQA and QCFS ResNet-20) and mode (folded, exact), on the given providers:
1. compile and verify at T = 1 with every session (ANN references and the SNN) on those providers
   (`pipeline.compile_and_verify`): the lossless claim holds when both run in the same engine, and a
   GPU engine may choose other convolution algorithms per session, so this is what a user there gets;
2. run the bundled test images for --timesteps steps (`runtime.run_dataset`) beside the ANN:
   accuracy at T = 1 and at T, the T = 1 prediction agreement, spikes per image;
3. time, side by side in one process and round-robin, one ANN run and one SNN step on a batch
   (median of --rounds rounds; the SNN's step is its T-step run divided by T).
It prints one line per model and mode and writes every figure to --json. `bench/gpu_check.sh` is
the one prepared call for a lent GPU machine; with `--providers cpu` it runs anywhere (the test
does that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = ("resnet20_pqa_cifar10.onnx", "resnet20_qcfs_cifar10.onnx")


def check_one(path: str, mode: str, providers: list[str], dataset, batch_size: int, timesteps: int,
              rounds: int) -> dict:
    import numpy as np

    from pmsm_compiler.data.prepare import model_inputs, resolve_normalization
    from pmsm_compiler.pipeline import compile_and_verify
    from pmsm_compiler.runtime import SNNSession, run_dataset
    from pmsm_compiler.sessions import make_session

    started = time.perf_counter()
    result = compile_and_verify(path, mode, samples=64, providers=providers)
    compile_s = time.perf_counter() - started
    v = result.verification
    mean, std = resolve_normalization("auto", result.info)
    snn = SNNSession(result.model, providers=providers)
    ann = make_session(result.ann, "all", providers)
    report = run_dataset(snn, dataset, timesteps, batch_size, mean, std, ann_session=ann, progress=False,
                         model=os.path.basename(path))
    spec = result.info.inputs[0]
    x, _ = model_inputs(dataset.subset(min(batch_size, len(dataset))), spec.shape, mean, std,
                        input_dtype=spec.numpy_dtype(), input_name=spec.name)
    feed = {ann.get_inputs()[0].name: x}
    ann_times, step_times = [], []
    ann.run(None, feed)
    snn.run_batch(x, timesteps)  # warm-up: allocations, algorithm choice
    for _ in range(rounds):
        t0 = time.perf_counter()
        ann.run(None, feed)
        ann_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        snn.run_batch(x, timesteps)
        step_times.append((time.perf_counter() - t0) / timesteps)
    ann_s, step_s = statistics.median(ann_times), statistics.median(step_times)
    return {
        "model": os.path.basename(path), "mode": mode, "providers": snn.providers, "device": snn.device,
        "fused_kernels": bool(snn.kernels), "compile_and_verify_s": round(compile_s, 2),
        "verification": {k: v.get(k) for k in ("passed", "level_agreement", "top1_agreement", "max_abs_diff",
                                               "failures", "samples")},
        "ann_accuracy": report["ann_accuracy"], "accuracy_t1": report["accuracy_by_t"][0],
        "accuracy_t": report["accuracy_by_t"][-1], "timesteps": timesteps,
        "t1_prediction_agreement": report["t1_prediction_agreement"],
        "spikes_per_image_t1": report["spikes_per_image_by_t"][0], "images": len(dataset),
        "batch": int(np.asarray(x).shape[0]), "ann_run_s": ann_s, "snn_step_s": step_s,
        "step_over_ann": step_s / ann_s if ann_s else None,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--providers", default="cuda", help="comma list: cuda, cpu or full onnxruntime names")
    ap.add_argument("--images", type=int, default=1000, help="bundled test images (at most 1,000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--timesteps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--modes", default="folded,exact")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import onnxruntime as ort

    from pmsm_compiler.cli.options import parse_providers
    from pmsm_compiler.data import load_dataset
    from pmsm_compiler.errors import PmsmError
    from pmsm_compiler.models import shipped_model_path

    try:
        providers = parse_providers([args.providers])
    except PmsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        print(f"error: execution provider(s) not available: {', '.join(missing)} (available: {', '.join(available)}; "
              f"the CUDA provider needs the onnxruntime-gpu package and a GPU)", file=sys.stderr)
        return 2
    dataset = load_dataset("bundled").subset(args.images)
    rows = []
    print(f"onnxruntime {ort.__version__}, providers {providers}; {len(dataset)} bundled images, batch "
          f"{args.batch_size}, T = {args.timesteps}, {args.rounds} timing rounds", flush=True)
    for name in MODELS:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            row = check_one(str(shipped_model_path(name)), mode, providers, dataset, args.batch_size,
                            args.timesteps, args.rounds)
            rows.append(row)
            v = row["verification"]
            print(f"{row['model']} {mode:6s} on {row['device']}: verification {'passed' if v['passed'] else 'FAILED'} "
                  f"(level agreement {v['level_agreement']}), T=1 agreement {100 * row['t1_prediction_agreement']:.2f} %, "
                  f"ANN {100 * row['ann_accuracy']:.2f} %, SNN T=1 {100 * row['accuracy_t1']:.2f} % / "
                  f"T={args.timesteps} {100 * row['accuracy_t']:.2f} %; step {1e3 * row['snn_step_s']:.2f} ms vs ANN "
                  f"{1e3 * row['ann_run_s']:.2f} ms ({row['step_over_ann']:.2f}×)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "onnxruntime": ort.__version__, "providers": providers, "rows": rows}, f, indent=1)
    exact_ok = all(r["verification"]["passed"] for r in rows if r["mode"] == "exact" and "pqa" in r["model"])
    return 0 if exact_ok else 1


if __name__ == "__main__":
    sys.exit(main())
