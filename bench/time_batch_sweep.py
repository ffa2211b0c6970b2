"""Steps per pass against batch size: where running the timesteps layer by layer pays (issue 20).

    python bench/time_batch_sweep.py [--model resnet20] [--batches 1,4,16,64] [--per-pass 1,2,4,8,16] \
        [--steps 16] [--repeats 5] [--json PATH]

For one zoo model (bench/relu_floor.py's: the PQA network with random λ and BatchNorm statistics,
folded mode, and the same network with ReLU; or, with --shipped, a shipped model compiled in folded
mode and its ANN), and each batch size, in ONE process and interleaved: one run of the ReLU network
(the ANN), and ``SNNSession.run_batch(x, --steps) / --steps`` with each number of
steps per pass (``time_batch``, the byte budgets lifted so that it alone decides; 1: step by step).
It prints the median per-step cost over the ReLU run's, per batch and steps per pass, and the
bytes of the largest neuron layer's current that each pass held (steps × batch × bytes per sample):
what ``limits.DEFAULT_TIME_BATCH_BYTES`` is chosen from. All sessions at ORT_ENABLE_ALL, no spinning.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _ints(text: str, flag: str, p) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        p.error(f"{flag} must be a comma list of integers, got {text!r}")
    if not values or min(values) < 1:
        p.error(f"{flag} must be positive integers")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", help="a zoo model (bench/relu_floor.py)")
    p.add_argument("--shipped", metavar="FILE",
                   help="instead, a shipped model (models/FILE, e.g. vit_cifar_pqa_cifar10.onnx), timed against one "
                        "run of that ANN (a transformer has no ReLU twin)")
    p.add_argument("--batches", default="1,4,16,64")
    p.add_argument("--per-pass", default="1,2,4,8,16", help="steps per pass (time_batch); 1: step by step")
    p.add_argument("--steps", type=int, default=16, help="T of each timed run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    batches, per_pass = _ints(args.batches, "--batches", p), _ints(args.per_pass, "--per-pass", p)
    if args.steps < 2 or args.repeats < 1:
        p.error("need --steps >= 2 and --repeats >= 1")
    import relu_floor

    from pmsm_compiler.loading import load_model
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.sessions import make_session

    results = {"command": " ".join(["python"] + sys.argv), "model": args.shipped or args.model, "steps": args.steps,
               "repeats": args.repeats, "reference": "ANN" if args.shipped else "ReLU", "rows": []}
    with tempfile.TemporaryDirectory(prefix="pmsm_tb_sweep_") as tmp:
        if args.shipped:
            from pmsm_compiler.compiler import compile_model
            from pmsm_compiler.models import shipped_model_path

            ann = load_model(shipped_model_path(args.shipped))
            relu = make_session(ann, "all", None, 0)
            model = compile_model(ann, "folded").model
        else:
            paths = relu_floor.prepare(args.model, tmp)
            relu = make_session(load_model(paths["relu"]), "all", None, 0)
            model = load_model(paths["folded"], static_inputs=False)
        sessions = {k: SNNSession(model, opt_level="all", time_batch=k, time_batch_bytes=1 << 62,
                                  time_pass_bytes=1 << 62) for k in per_pass}
        planner = SNNSession(model, opt_level="all", time_batch=2)
        layer_bytes = planner._time_batch_layer_bytes()
        results["time_batched_note"] = planner.time_batched_note  # why every pass is one step, if it is
        for batch in batches:
            x = relu_floor.images(batch)
            times = {k: [] for k in per_pass}
            relu_times = []
            for _ in range(args.repeats + 1):  # the first round warms up
                start = time.perf_counter()
                relu.run(None, {relu.get_inputs()[0].name: x})
                relu_times.append(time.perf_counter() - start)
                for k, s in sessions.items():
                    start = time.perf_counter()
                    s.run_batch(x, args.steps)
                    times[k].append((time.perf_counter() - start) / args.steps)
            base = statistics.median(relu_times[1:])
            for k in per_pass:
                per_run = min(k, args.steps)
                results["rows"].append({
                    "batch": batch, "per_pass": per_run, "relu_ms": 1e3 * base,
                    "step_ms": 1e3 * statistics.median(times[k][1:]),
                    "ratio_to_relu": statistics.median(times[k][1:]) / base,
                    "pass_layer_bytes": per_run * batch * layer_bytes if layer_bytes else None})
    print(f"{results['model']}: per step / one {results['reference']} run (T = {args.steps}, medians of {args.repeats}); "
          f"in brackets the largest layer's current per pass")
    for batch in batches:
        cells = [f"{r['per_pass']:>2}: {r['ratio_to_relu']:.3f} ({(r['pass_layer_bytes'] or 0) / 2**20:.2f} MiB)"
                 for r in results["rows"] if r["batch"] == batch]
        print(f"batch {batch:>3}: " + "  ".join(cells))
    if args.json:
        from pmsm_compiler.files import save_text_atomic

        save_text_atomic(json.dumps(results, indent=1) + "\n", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
