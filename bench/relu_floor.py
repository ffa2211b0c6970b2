"""The floor: one SNN step against one run of the same network with ReLU (onnxruntime, CPU; issue 20).

    python bench/relu_floor.py [--models resnet20,vgg16] [--batches 64,1] [--repeats 9] [--steps 8] \
        [--profile-runs 10] [--json PATH] [--quick]

For each zoo model, the PQA network with random λ in [2, 10] and random BatchNorm statistics (as
bench/run_overhead.py makes it, seed 0) and the same network with ReLU instead of PQA, sharing its
weights (the PQA state dict without the λ's), both exported; the PQA ANN compiled in folded and in
exact mode. For each batch size, in ONE process and interleaved (the order rotates from round to
round, after warm-up rounds):

* ReLU ANN: one ``InferenceSession.run``, the cost of the same convolutions with the cheapest
  activation (onnxruntime fuses Conv + Relu into one kernel): the floor for a dense simulator;
* PQA ANN: one run of the quantized ANN as exported;
* SNN step, folded and exact: ``SNNSession.run_batch(x, T) / T`` (T = --steps: prologue, first,
  middle and last steps, state binding, result copies; what a run pays per step), and T = 1; a
  batch small enough runs its steps layer by layer (runtime/time_batched.py), and then the same
  steps one by one (``time_batch=1``) are timed beside it;
* with --reference, the same SNN steps with ``rewrite_optimized=False``: the step graphs as
  onnxruntime optimizes them, without the runtime's rewrite of them (absorbed neighbours, blocked
  layout; runtime/optimized_step.py), to show what that rewrite does in the same run.

It prints the medians and two ratios to the ReLU run: of the medians, and the median of the
per-round ratios (each SNN measurement over the ReLU run of the same round), against issue 20's
target of 1.10 for the folded step. Then a per-op profile (``SessionOptions.enable_profiling``) of
the ReLU session, of the SNN's middle-step session (folded and exact, step by step) and of its
layer-by-layer pass (per step) where the batch runs so, aggregated from the JSON
traces: µs per run by op type, their share of the kernel time, and the slowest nodes.

All sessions run at ORT_ENABLE_ALL with ``session.intra_op.allow_spinning = 0``, and
``OMP_WAIT_POLICY=PASSIVE`` is set before anything is imported (bench/run_overhead.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

TARGET = 1.10
MODES = ("folded", "exact")


def images(batch: int) -> np.ndarray:
    from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD, load_bundled_sample, normalize

    x = normalize(load_bundled_sample().x, CIFAR10_MEAN, CIFAR10_STD)
    return np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))


def prepare(name: str, out_dir: str, seed: int = 0) -> dict:
    """Export the PQA and the ReLU network with the same weights; compile the PQA one in both modes."""
    import torch

    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model, save_model_atomic
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.verify_export import randomize_for_check
    from pmsm_compiler.training.zoo import build_model

    torch.manual_seed(seed)
    pqa = build_model(name, act="pqa")
    randomize_for_check(pqa, torch.from_numpy(images(64)), seed=seed)
    relu = build_model(name, act="relu")
    state = {k: v for k, v in pqa.state_dict().items() if not k.endswith(".lam")}
    relu.load_state_dict(state, strict=True)  # every parameter and buffer of the ReLU net is the PQA net's
    relu.eval()
    paths = {"pqa": os.path.join(out_dir, f"{name}.pqa.onnx"), "relu": os.path.join(out_dir, f"{name}.relu.onnx")}
    export_onnx(pqa, paths["pqa"])
    export_onnx(relu, paths["relu"])
    ann = load_model(paths["pqa"])
    for mode in MODES:
        compiled = compile_model(ann, mode=mode)
        paths[mode] = os.path.join(out_dir, f"{name}.{mode}.snn.onnx")
        save_model_atomic(compiled.model, paths[mode])
        paths["layers"] = len(compiled.info["layers"])
        paths["neurons"] = int(sum(layer["neurons"] or 0 for layer in compiled.info["layers"]))
    return paths


def _timed(fn, per: int = 1) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / per


def measure_times(paths: dict, batch: int, repeats: int, warmup: int, steps: int, threads: int,
                  reference: bool = False) -> dict:
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.sessions import make_session

    x = images(batch)
    relu = make_session(load_model(paths["relu"]), "all", None, threads)
    pqa = make_session(load_model(paths["pqa"]), "all", None, threads)
    runs = [("ReLU ANN", lambda: _timed(lambda: relu.run(None, {"input": x}))),
            ("PQA ANN", lambda: _timed(lambda: pqa.run(None, {"input": x})))]
    rewrites = {}
    for mode in MODES:
        model = load_model(paths[mode], static_inputs=False)
        snn = SNNSession(model, opt_level="all", threads=threads)
        rewrites[mode] = dict(snn.step_rewrites, fused_layers=snn.fused_layers)
        rewrites[mode]["time_batched"] = snn.time_batched_note or True
        runs.append((f"SNN {mode}, per step (T={steps})", lambda s=snn: _timed(lambda: s.run_batch(x, steps), steps)))
        runs.append((f"SNN {mode}, T=1", lambda s=snn: _timed(lambda: s.run_batch(x, 1))))
        if snn.time_batched:  # the same steps one at a time, as before the time-batched runs
            stepwise = SNNSession(model, opt_level="all", threads=threads, time_batch=1)
            runs.append((f"SNN {mode}, per step, step by step", lambda s=stepwise: _timed(lambda: s.run_batch(x, steps),
                                                                                           steps)))
        if reference:
            ref = SNNSession(model, opt_level="all", threads=threads, rewrite_optimized=False)
            runs.append((f"SNN {mode}, per step, no rewrite", lambda s=ref: _timed(lambda: s.run_batch(x, steps), steps)))
    times = {label: [] for label, _ in runs}
    for rnd in range(warmup + repeats):
        shift = rnd % len(runs)  # rotate, so that no configuration always follows the same one
        for label, fn in runs[shift:] + runs[:shift]:
            t = fn()
            if rnd >= warmup:
                times[label].append(t)
    relu_times = times["ReLU ANN"]
    rows = []
    for label, values in times.items():
        paired = [v / r for v, r in zip(values, relu_times)]
        rows.append({"config": label, "ms": 1e3 * statistics.median(values),
                     "min_ms": 1e3 * min(values), "max_ms": 1e3 * max(values),
                     "ratio_to_relu": statistics.median(values) / statistics.median(relu_times),
                     "paired_ratio_to_relu": statistics.median(paired)})
    return {"batch": batch, "repeats": repeats, "steps": steps, "rows": rows, "step_rewrites": rewrites}


def aggregate_profile(path: str, per: int = 1) -> dict:
    """An onnxruntime JSON trace by op type and by node: µs per run (per ``per``-th of a run: the
    steps of a time-batched pass) and share of the kernel time; ``run_us``: the median of the traced
    runs' own durations (``model_run``)."""
    with open(path) as f:
        events = json.load(f)
    run_us = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    by_op, by_node, calls = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            by_op[op] += e["dur"]
            calls[op] += 1
            by_node[(e["name"][: -len("_kernel_time")], op)] += e["dur"]
    runs = max(len(run_us), 1)
    n = runs * per
    kernel = sum(by_op.values()) / n
    ops = [{"op": op, "us": us / n, "nodes": calls[op] // runs, "share": us / n / kernel if kernel else 0.0}
           for op, us in by_op.most_common()]
    nodes = [{"node": node, "op": op, "us": us / n} for (node, op), us in by_node.most_common(12)]
    return {"runs": len(run_us), "run_us": statistics.median(run_us) / per if run_us else 0.0, "kernel_us": kernel,
            "ops": ops, "slowest_nodes": nodes}


def measure_profiles(paths: dict, batch: int, runs: int, threads: int, tmp: str, reference: bool = False,
                     steps: int = 8) -> dict:
    """Per-op profiles: the ReLU ANN over ``runs`` runs, the SNN's middle-step session over ``runs``
    middle steps (one run of T = runs + 2, step by step), folded and exact (and without the rewrite:
    ``reference``), and, where this batch runs its ``steps`` layer by layer, that session over ``runs``
    passes, per step."""
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.sessions import make_session

    x = images(batch)
    out = {}
    relu = make_session(load_model(paths["relu"]), "all", None, threads,
                        profile_prefix=os.path.join(tmp, f"relu_b{batch}"))
    for _ in range(runs):
        relu.run(None, {"input": x})
    out["ReLU ANN"] = aggregate_profile(relu.end_profiling())
    for mode in MODES:
        model = load_model(paths[mode], static_inputs=False)
        for rewrite in (True, False) if reference else (True,):
            snn = SNNSession(model, opt_level="all", threads=threads, time_batch=1,
                             profile_prefix=os.path.join(tmp, f"snn_{mode}_{rewrite}_b{batch}"), rewrite_optimized=rewrite)
            snn.run_batch(x, runs + 2)  # first, `runs` middle steps, last
            label = f"SNN {mode}, middle step, step by step" + ("" if rewrite else ", no rewrite")
            out[label] = aggregate_profile(snn.end_profiling()["step"])
        snn = SNNSession(model, opt_level="all", threads=threads, profile_prefix=os.path.join(tmp, f"snn_{mode}_tb_b{batch}"))
        per_run = snn.time_batch_report(batch, steps)["steps_per_run"]
        if per_run >= 2:  # `runs` passes of `per_run` steps each, layer by layer; figures per step
            for _ in range(runs):
                snn.run_batch(x, per_run)
            out[f"SNN {mode}, layer by layer, per step ({per_run} a pass)"] = aggregate_profile(
                snn.end_profiling()["time_batched"], per=per_run)
    return out


def format_report(results: dict) -> str:
    lines = []
    for name, entry in results["models"].items():
        for b in entry["batches"]:
            t = b["times"]
            lines.append(f"{name}, batch {t['batch']}: medians of {t['repeats']} interleaved rounds "
                         f"({entry['layers']} neuron layers, {entry['neurons']:,} neurons per image)")
            head = f"| {'run':<28} | {'ms':>9} | {'/ ReLU':>7} | {'paired / ReLU':>13} |"
            lines += [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
            for row in t["rows"]:
                lines.append(f"| {row['config']:<28} | {row['ms']:>9.3f} | {row['ratio_to_relu']:>7.3f} "
                             f"| {row['paired_ratio_to_relu']:>13.3f} |")
            verdict = b["target"]
            lines.append(f"folded step / ReLU run: {verdict['ratio']:.3f} (target {TARGET:.2f}: "
                         f"{'met' if verdict['met'] else 'not met'}); exact: {verdict['exact_ratio']:.3f}")
            lines.append("step rewrites (middle step): " + "; ".join(
                f"{mode} {r['absorbed_ops']} ops absorbed, {r['blocked_layers']}/{r['fused_layers']} neuron layers "
                f"on the blocked layout" for mode, r in t["step_rewrites"].items()))
            for label, prof in b.get("profiles", {}).items():
                lines.append(f"  profile, {label}: {prof['kernel_us']:.0f} µs kernel time per run "
                             f"(run {prof['run_us']:.0f} µs, {prof['runs']} runs traced)")
                for op in prof["ops"]:
                    if op["share"] >= 0.002:
                        lines.append(f"    {op['op']:<14} {op['us']:>10.1f} µs {100 * op['share']:>5.1f} %"
                                     f"  ({op['nodes']} nodes)")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,vgg16", help="comma list of zoo models")
    p.add_argument("--batches", default="64,1", help="comma list of batch sizes")
    p.add_argument("--repeats", type=int, default=9, help="timed rounds (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="T of the per-step timing")
    p.add_argument("--profile-runs", type=int, default=10, help="traced runs per profile (0: no profile)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime default)")
    p.add_argument("--reference", action="store_true",
                   help="also time the SNN steps without the runtime's rewrite of the optimized step graph")
    p.add_argument("--quick", action="store_true", help="ResNet-20 only, 3 rounds, T = 4, 3 traced runs")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.repeats, args.warmup, args.steps, args.profile_runs = "resnet20", 3, 1, 4, 3
    if args.repeats < 1 or args.steps < 2 or args.warmup < 0 or args.profile_runs < 0:
        p.error("need --repeats >= 1, --steps >= 2, --warmup >= 0, --profile-runs >= 0")
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches must be a comma list of integers, got {args.batches!r}")
    if not batches or min(batches) < 1:
        p.error("--batches must be positive")
    import onnxruntime as ort

    from pmsm_compiler import kernels

    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(["python"] + sys.argv),
               "onnxruntime": ort.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
               "threads": args.threads, "loadavg_before": os.getloadavg(),
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "fused_kernels": kernels.status(),
               "target": TARGET, "models": {}}
    with tempfile.TemporaryDirectory(prefix="pmsm_floor_") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"[{name}] export + compile ...", file=sys.stderr, flush=True)
            paths = prepare(name, tmp)
            entry = {"layers": paths["layers"], "neurons": paths["neurons"], "batches": []}
            for batch in batches:
                print(f"[{name}] batch {batch}: timing ...", file=sys.stderr, flush=True)
                times = measure_times(paths, batch, args.repeats, args.warmup, args.steps, args.threads,
                                      args.reference)
                by = {row["config"]: row for row in times["rows"]}
                folded = by[f"SNN folded, per step (T={args.steps})"]
                exact = by[f"SNN exact, per step (T={args.steps})"]
                b = {"times": times, "target": {"ratio": folded["ratio_to_relu"],
                                                "paired_ratio": folded["paired_ratio_to_relu"],
                                                "met": folded["ratio_to_relu"] <= TARGET,
                                                "exact_ratio": exact["ratio_to_relu"]}}
                if args.profile_runs:
                    print(f"[{name}] batch {batch}: profiles ...", file=sys.stderr, flush=True)
                    b["profiles"] = measure_profiles(paths, batch, args.profile_runs, args.threads, tmp,
                                                     args.reference, args.steps)
                entry["batches"].append(b)
            results["models"][name] = entry
    results["loadavg_after"] = os.getloadavg()
    print(format_report(results))
    if args.json:
        from pmsm_compiler.files import save_text_atomic

        save_text_atomic(json.dumps(results, indent=1) + "\n", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
