"""What the counting rules cost: SNN step time with and without ``pmsm_spike_counters``, in one run.

    nice python bench/counter_cost.py [--model models/resnet20_pqa_cifar10.onnx] [--mode folded]
        [--batch 64] [--rounds 15] [--timesteps 8] [--kernels on] [--json PATH]

One process compiles the model once; "with" is the compiled model, "without" the same model with
the counters taken out (``compiler.strip_counters``: the model as compiled before they existed,
so its neurons fuse with their Σ|k| count only). Both run in ``SNNSession`` (fused neuron kernels
on by default; every session with ``session.intra_op.allow_spinning = 0``, ``sessions.make_session``;
``OMP_WAIT_POLICY=PASSIVE`` set before anything is imported) on the same batch of bundled CIFAR-10
images. Each round times, for both models in an order that alternates between rounds,
``run_batch(x, 1)`` (T = 1) and ``run_batch(x, T) / T`` (per step at T); after warm-up rounds the
medians over the rounds and the median of the per-round ratios (with / without) are printed. The
counters' budget is 3 % of a step: the ratio should be at most 1.03.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

BUDGET = 1.03


def images(batch: int):
    from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD, load_bundled_sample, normalize

    return normalize(load_bundled_sample().x[:batch], CIFAR10_MEAN, CIFAR10_STD)


def _timer(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model_path: str, mode: str, batch: int, rounds: int, warmup: int, timesteps: int, kernels: str,
            threads: int) -> dict:
    from pmsm_compiler.compiler import compile_model, strip_counters
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.runtime import SNNSession

    compiled = compile_model(load_model(model_path), mode=mode)
    sessions = {"with": SNNSession(compiled.model, kernels=kernels, threads=threads),
                "without": SNNSession(strip_counters(compiled.model), kernels=kernels, threads=threads)}
    assert sessions["with"].counter_names and sessions["without"].counter_names is None
    x = images(batch)
    # the same spikes either way: the counters change nothing else
    a, b = sessions["with"].run_batch(x, 2), sessions["without"].run_batch(x, 2)
    assert (a.spikes == b.spikes).all() and (a.mean_outputs == b.mean_outputs).all()
    times = {(name, what): [] for name in sessions for what in ("t1", "step")}
    for r in range(warmup + rounds):
        order = list(sessions) if r % 2 == 0 else list(sessions)[::-1]
        for name in order:
            s = sessions[name]
            t1 = _timer(lambda: s.run_batch(x, 1))
            step = _timer(lambda: s.run_batch(x, timesteps)) / timesteps
            if r >= warmup:
                times[(name, "t1")].append(t1)
                times[(name, "step")].append(step)
    out = {"model": os.path.basename(model_path), "mode": mode, "batch": batch, "rounds": rounds, "warmup": warmup,
           "timesteps": timesteps, "kernels": sessions["with"].kernel_report(),
           "kernels_without": sessions["without"].kernel_report(), "layers": len(compiled.info["layers"])}
    for what in ("t1", "step"):
        w, wo = times[("with", what)], times[("without", what)]
        out[what] = {"with_ms": 1e3 * statistics.median(w), "without_ms": 1e3 * statistics.median(wo),
                     "ratio_of_medians": statistics.median(w) / statistics.median(wo),
                     "median_paired_ratio": statistics.median(a / b for a, b in zip(w, wo)),
                     "with_range_ms": [1e3 * min(w), 1e3 * max(w)], "without_range_ms": [1e3 * min(wo), 1e3 * max(wo)]}
    return out


def format_report(r: dict) -> str:
    k = r["kernels"]
    lines = [f"{r['model']} ({r['mode']} mode, {r['layers']} neuron layers), batch {r['batch']}, "
             f"{r['rounds']} rounds after {r['warmup']} warm-up rounds (medians); neurons: "
             + (f"fused kernels ({k['layers_fused']} layers)" if k["used"] else f"ONNX bodies ({k['reason']})"),
             f"| {'what':<22} | {'with counters (ms)':>18} | {'without (ms)':>12} | {'ratio of medians':>16} "
             f"| {'median paired ratio':>19} |",
             f"|{'-' * 24}|{'-' * 20}|{'-' * 14}|{'-' * 18}|{'-' * 21}|"]
    for what, label in (("t1", "T=1 (one step)"), ("step", f"per step, T={r['timesteps']}")):
        m = r[what]
        lines.append(f"| {label:<22} | {m['with_ms']:>18.2f} | {m['without_ms']:>12.2f} | "
                     f"{m['ratio_of_medians']:>16.4f} | {m['median_paired_ratio']:>19.4f} |")
    worst = max(r[w]["median_paired_ratio"] for w in ("t1", "step"))
    lines.append(f"counters' cost: {100 * (worst - 1):+.2f} % of a step at worst (budget {100 * (BUDGET - 1):.0f} %: "
                 + ("within" if worst <= BUDGET else "OVER") + ")")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="PQA ANN (default: the shipped resnet20_pqa_cifar10.onnx)")
    ap.add_argument("--mode", choices=["folded", "exact"], default="folded")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timesteps", type=int, default=8, help="T of the per-step measurement")
    ap.add_argument("--kernels", choices=["on", "off", "auto"], default="on")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    model = args.model
    if model is None:
        from pmsm_compiler.models import shipped_model_path

        model = str(shipped_model_path("resnet20_pqa_cifar10.onnx"))
    import onnxruntime

    result = measure(model, args.mode, args.batch, args.rounds, args.warmup, args.timesteps, args.kernels,
                     args.threads)
    result.update({"onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
                   "cpus": os.cpu_count(),
                   "command": " ".join(["python", "bench/counter_cost.py"] + (argv or sys.argv[1:]))})
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
