"""Runtime overhead of the SNN step loop against one run of the quantized ANN (onnxruntime, CPU).

    nice python bench/run_overhead.py [--models resnet20,vgg16] [--batch 64] [--repeats 7] [--json PATH]

For each model (random λ in [2, 10] and random BatchNorm statistics, exported, then compiled in
folded and exact mode), in ONE process and interleaved (ANN, SNN, ANN, SNN, ... after warm-up):

* ANN: one ``InferenceSession.run`` of batch B;
* SNN T = 1: one ``SNNSession.run_batch(x, 1)`` (whole call: prologue, step, copies);
* SNN T = 8 per step: ``run_batch(x, 8)`` / 8;
* as a reference, the ANN run in the execution order the SNN's sessions use (priority-based), to
  show that the order helps the SNN's branching step graph and not a plain chain;

with and without the static-prologue split; as references, with the neurons run as their ONNX
function bodies (stock kernels) instead of the fused neuron kernel, and that with the states
ping-ponging between two buffers instead of being updated in place. Reports medians over the repeats and the ratio
SNN / ANN. Peak memory (RSS high-water mark, ``resource.getrusage``) is measured in separate
subprocesses — ANN only, SNN only (T = 8), and an idle baseline that imports the same modules
and loads the same data — so the figures are comparable.

All sessions use ``session.intra_op.allow_spinning = 0`` (``sessions.make_session``) and
``OMP_WAIT_POLICY=PASSIVE`` is set before anything is imported, so idle threads of one session do
not steal the cores of the next. Machine noise on ResNet-20 is about ±10%: ratios under ~1.15 are
not significant from one run (shared/notes/onnx-findings.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

T_LONG = 8
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def images(batch: int) -> np.ndarray:
    from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD, load_bundled_sample, normalize

    return normalize(load_bundled_sample().x[:batch], CIFAR10_MEAN, CIFAR10_STD)


def prepare(name: str, out_dir: str, seed: int = 0) -> dict:
    """Export ``name`` with random λ / BN statistics and compile it (folded, exact); return paths."""
    import torch

    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.loading import load_model, save_model_atomic
    from pmsm_compiler.training.zoo import build_model
    from pmsm_compiler.training.verify_export import randomize_for_check

    torch.manual_seed(seed)
    net = build_model(name, act="pqa")
    randomize_for_check(net, torch.from_numpy(images(64)), seed=seed)
    paths = {"ann": os.path.join(out_dir, f"{name}.onnx")}
    export_onnx(net, paths["ann"])
    ann = load_model(paths["ann"])
    for mode in ("folded", "exact"):
        compiled = compile_model(ann, mode=mode)
        paths[mode] = os.path.join(out_dir, f"{name}.{mode}.snn.onnx")
        save_model_atomic(compiled.model, paths[mode])
        paths[f"{mode}_layers"] = len(compiled.info["layers"])
        paths[f"{mode}_state_floats"] = int(sum(l["neurons"] or 0 for l in compiled.info["layers"]))
    return paths


def _timer(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_times(paths: dict, batch: int, repeats: int, warmup: int, threads: int) -> dict:
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.sessions import make_session

    x = images(batch)
    ann_model = load_model(paths["ann"])
    ann = make_session(ann_model, "all", None, threads)
    ann_in = ann.get_inputs()[0].name
    configs = {}
    for mode in ("folded", "exact"):
        model = load_model(paths[mode], static_inputs=False)
        for split in (True, False):
            s = SNNSession(model, opt_level="all", threads=threads, split_static=split)
            configs[f"{mode}, {'split' if split else 'no split'}"] = s
        # references: the neurons as their ONNX bodies (stock kernels) instead of the fused kernel,
        # and also the states ping-ponging between two buffers instead of being updated in place
        configs[f"{mode}, stock ops"] = SNNSession(model, opt_level="all", threads=threads, kernels="off")
        configs[f"{mode}, stock, ping-pong"] = SNNSession(model, opt_level="all", threads=threads, kernels="off",
                                                         in_place=False)
    ann_prio = make_session(ann_model, "all", None, threads, priority_order=True)
    runs = [("ANN", lambda: ann.run(None, {ann_in: x})),
            ("ANN, priority order", lambda: ann_prio.run(None, {ann_in: x}))]
    for label, s in configs.items():
        runs.append((f"SNN {label} T=1", (lambda s=s: s.run_batch(x, 1))))
        runs.append((f"SNN {label} T={T_LONG}", (lambda s=s: s.run_batch(x, T_LONG))))
    times = {label: [] for label, _ in runs}
    ann_between = []
    for rep in range(warmup + repeats):
        for label, fn in runs:
            if label != "ANN":  # interleave: an ANN run before every SNN measurement
                t_ann = _timer(runs[0][1])
                if rep >= warmup:
                    ann_between.append(t_ann)
            t = _timer(fn)
            if rep >= warmup:
                times[label].append(t)
    times["ANN"].extend(ann_between)
    med = {label: statistics.median(v) for label, v in times.items()}
    spread = {label: (min(v), max(v)) for label, v in times.items()}
    rows = []
    ann_med = med["ANN"]
    for label in configs:
        t1 = med[f"SNN {label} T=1"]
        t8 = med[f"SNN {label} T={T_LONG}"] / T_LONG
        rows.append({"config": label, "snn_t1_ms": 1e3 * t1, "snn_per_step_t8_ms": 1e3 * t8,
                     "ratio_t1": t1 / ann_med, "ratio_per_step_t8": t8 / ann_med})
    return {"ann_ms": 1e3 * ann_med, "ann_priority_order_ms": 1e3 * med["ANN, priority order"],
            "ann_runs": len(times["ANN"]), "repeats": repeats, "rows": rows,
            "spread_ms": {k: [1e3 * a, 1e3 * b] for k, (a, b) in spread.items()}}


def memory_child(kind: str, path: str, batch: int, threads: int) -> None:
    """Runs in a subprocess: print the RSS high-water mark (MiB) after the workload."""
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.sessions import make_session

    x = images(batch)
    if kind == "ann":
        sess = make_session(load_model(path), "all", None, threads)
        name = sess.get_inputs()[0].name
        for _ in range(3):
            sess.run(None, {name: x})
    elif kind.startswith("snn"):
        s = SNNSession(load_model(path, static_inputs=False), opt_level="all", threads=threads,
                       split_static=kind != "snn-nosplit", in_place=kind != "snn-pingpong",
                       kernels="off" if kind in ("snn-stock", "snn-pingpong") else "auto")
        for _ in range(2):
            s.run_batch(x, T_LONG)
    print(json.dumps(_peak()))


def _peak() -> dict:
    """RSS high-water mark of this process: getrusage (KiB on Linux) and, as a check, the tools'
    own figure (``process_memory.peak_memory_bytes``: /proc VmHWM on Linux)."""
    import resource

    from pmsm_compiler.process_memory import peak_memory_bytes

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    peak = peak_memory_bytes()
    if peak is not None:
        out["vmhwm_mib"] = peak / 2**20
    return out


def measure_memory(paths: dict, batch: int, threads: int) -> dict:
    out = {}
    jobs = [("idle (imports + data)", "idle", paths["ann"]), ("ANN", "ann", paths["ann"]),
            ("SNN folded, split", "snn", paths["folded"]), ("SNN folded, no split", "snn-nosplit", paths["folded"]),
            ("SNN folded, stock ops", "snn-stock", paths["folded"]),
            ("SNN folded, stock, ping-pong", "snn-pingpong", paths["folded"]),
            ("SNN exact, split", "snn", paths["exact"]), ("SNN exact, no split", "snn-nosplit", paths["exact"])]
    for label, kind, path in jobs:
        # Linux keeps ru_maxrss across execve: a child exec'd straight from this (large, torch-
        # importing) process would report at least this process's RSS. A small launcher process
        # in between starts the measured child from a small address space.
        cmd = [sys.executable, "-c", LAUNCHER, sys.executable, os.path.abspath(__file__), "--_memory", kind,
               "--_path", path, "--batch", str(batch), "--threads", str(threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def format_report(results: dict) -> str:
    lines = []
    for name, r in results["models"].items():
        t = r["times"]
        lines.append(f"{name}: batch {results['batch']}, {t['repeats']} repeats (medians), ANN {t['ann_ms']:.1f} ms "
                     f"per run ({t['ann_runs']} interleaved runs); the ANN in the SNN's execution order (priority-"
                     f"based; reference only): {t['ann_priority_order_ms']:.1f} ms")
        head = (f"| {'SNN config':<24} | {'T=1 (ms)':>9} | {'T=1 / ANN':>9} | {'per step, T=8 (ms)':>18} "
                f"| {'per step / ANN':>14} |")
        lines += [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
        for row in t["rows"]:
            lines.append(f"| {row['config']:<24} | {row['snn_t1_ms']:>9.1f} | {row['ratio_t1']:>9.2f} | "
                         f"{row['snn_per_step_t8_ms']:>18.1f} | {row['ratio_per_step_t8']:>14.2f} |")
        if r.get("memory"):
            lines.append("")
            head = (f"| {'process (subprocess)':<30} | {'peak RSS (MiB)':>14} | {'above idle (MiB)':>16} "
                    f"| {'VmHWM (MiB)':>11} |")
            lines += [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
            idle = r["memory"]["idle (imports + data)"]["peak_rss_mib"]
            for label, m in r["memory"].items():
                hwm = m.get("vmhwm_mib")
                lines.append(f"| {label:<30} | {m['peak_rss_mib']:>14.1f} | {m['peak_rss_mib'] - idle:>16.1f} "
                             f"| {'n/a' if hwm is None else format(hwm, '.1f'):>11} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20", help="comma list of zoo models (resnet20, vgg16, ...)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime default)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--_memory", help=argparse.SUPPRESS)
    p.add_argument("--_path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._memory:
        if args._memory == "idle":
            import onnxruntime  # noqa: F401 - same imports as the other children

            from pmsm_compiler.loading import load_model  # noqa: F401
            from pmsm_compiler.runtime import SNNSession  # noqa: F401
            from pmsm_compiler.sessions import make_session  # noqa: F401

            images(args.batch)
            print(json.dumps(_peak()))
        else:
            memory_child(args._memory, args._path, args.batch, args.threads)
        return 0
    if args.repeats < 5:
        p.error("--repeats must be >= 5")
    import onnxruntime as ort

    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join([os.path.basename(sys.executable)]
               + sys.argv), "batch": args.batch, "threads": args.threads, "onnxruntime": ort.__version__,
               "python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(),
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "models": {}}
    from pmsm_compiler import kernels

    results["fused_kernels"] = kernels.status()
    print(f"fused neuron kernels: {'available' if results['fused_kernels']['available'] else 'unavailable'}"
          + (f" ({results['fused_kernels']['reason']})" if results["fused_kernels"]["reason"] else ""), file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="pmsm_bench_") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"[{name}] export + compile ...", file=sys.stderr, flush=True)
            paths = prepare(name, tmp)
            print(f"[{name}] timing ...", file=sys.stderr, flush=True)
            entry = {"layers": paths["exact_layers"], "neurons_per_sample": paths["exact_state_floats"],
                     "times": measure_times(paths, args.batch, args.repeats, args.warmup, args.threads)}
            if not args.no_memory:
                print(f"[{name}] peak memory (subprocesses) ...", file=sys.stderr, flush=True)
                entry["memory"] = measure_memory(paths, args.batch, args.threads)
            results["models"][name] = entry
    results["loadavg_after"] = os.getloadavg()
    print(format_report(results))
    if args.json:
        from pmsm_compiler.files import save_text_atomic

        save_text_atomic(json.dumps(results, indent=1) + "\n", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
