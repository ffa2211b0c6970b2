"""The verification's two runs, one after the other or side by side (issue 20).

    python bench/verify_side_by_side.py M/vgg16.onnx M/vit_depth12_dim384_heads6.onnx [--mode folded] \
        [--samples 64] [--repeats 3] [--json PATH]

M: the models bench/compile_scale.py exported (``--models-dir``); without models, the shipped
ResNet-20. For each model, compiled in ``--mode`` without a check: the verification's two sessions
(the ANN with its quantizer outputs exposed, ``verify.reference_session``; the SNN's T = 1 step
that also outputs every layer's spikes, ``SNNSession.run_first_step``), on ``--samples``
random inputs in the verification's batches (``verify.verification_batch``), timed in ONE process
and interleaved, the sessions built beforehand: both on onnxruntime's default threads, one after
the other (how the verification ran before), against each on half the cores, side by side in two
threads (``verify.verification_threads``; the ANN's runs ahead of the SNN's within
``verify.AHEAD_BYTES``, ``verify._AheadOfTheSNN``), and, where the ANN's results all fit that
budget, the SNN on all the cores (``verify.verification_snn_threads``: how ``pmsm-compile``
runs it, its ANN's runs mostly done while the SNN's session is built, which this bench does not
time). Prints the milliseconds per sample pair, the ratios, and whether every output of every
way was identical (the results may not depend on the threads).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def measure(path: str, mode: str, samples: int, repeats: int) -> dict:
    import numpy as np

    from pmsm_compiler.pipeline import compile_and_verify
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.sessions import padded_batches
    from pmsm_compiler.verify import (AHEAD_BYTES, _AheadOfTheSNN, _AnnLevels, random_inputs, reference_session,
                                      verification_batch, verification_snn_threads, verification_threads)

    compiled = compile_and_verify(path, mode, check=False).compiled
    info = compiled.info
    spikes = tuple(layer.spike_tensor for layer in info.layers)
    x = random_inputs(info, samples, 0)
    batch = verification_batch(info)
    threads, _ = verification_threads(0)
    snn_threads = verification_snn_threads(info, samples)
    ways = {}
    for label, ann_threads, snn_threads_of_way, side_by_side in (
            ("one after the other", 0, 0, False), ("side by side", threads or 1, threads or 1, True),
            ("side by side, the SNN on all cores", threads or 1, snn_threads, True)):
        if label.endswith("all cores") and not snn_threads > (threads or 1):
            continue  # the ANN's results do not fit the budget: the verification runs as above
        ann = reference_session(compiled, "all", threads=ann_threads)
        snn = SNNSession(compiled.model, opt_level="all", threads=snn_threads_of_way)
        name = ann.get_inputs()[0].name
        ways[label] = (ann, snn, name, side_by_side)

    def run(way):
        ann, snn, name, side_by_side = way
        outputs = []
        with _AheadOfTheSNN(lambda xb, n: _AnnLevels(ann.run(None, {name: xb}), {}), padded_batches(x, batch),
                            AHEAD_BYTES, side_by_side) as ahead:
            for xb, _n in padded_batches(x, batch):
                snn_out = snn.run_first_step(xb, spikes)
                outputs.append((ahead.next().levels, snn_out))
        return outputs

    results = {label: run(way) for label, way in ways.items()}  # warm-up, and the outputs to compare
    first = results["one after the other"]
    identical = all(all(np.array_equal(u, v) for u, v in zip(p[0], q[0])) and all(np.array_equal(p[1][k], q[1][k])
                                                                                   for k in p[1])
                    for other in results.values() for p, q in zip(first, other))
    times = {label: [] for label in ways}
    for _ in range(repeats):
        for label, way in ways.items():
            started = time.perf_counter()
            run(way)
            times[label].append(time.perf_counter() - started)
    ms = {label: 1e3 * statistics.median(v) / samples for label, v in times.items()}
    return {"model": os.path.basename(path), "mode": mode, "samples": samples, "batch": batch,
            "threads_each_side_by_side": threads or 1, "snn_threads": snn_threads, "ms_per_sample_pair": ms,
            "ratios": {label: v / ms["one after the other"] for label, v in ms.items()}, "identical": identical}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="ONNX ANNs (default: the shipped ResNet-20)")
    ap.add_argument("--mode", choices=["folded", "exact"], default="folded")
    ap.add_argument("--samples", type=int, default=64, help="pmsm-compile's default verification samples")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if min(args.samples, args.repeats) < 1:
        ap.error("--samples and --repeats must be >= 1")
    missing = [m for m in args.models if not os.path.isfile(m)]
    if missing:
        ap.error(f"no such model: {missing[0]}")
    if not args.models:
        from pmsm_compiler.models import shipped_model_path

        args.models = [str(shipped_model_path("resnet20_pqa_cifar10.onnx"))]
    rows = [measure(m, args.mode, args.samples, args.repeats) for m in args.models]
    print(f"the verification's ANN and SNN runs, {args.mode} mode, {args.samples} random inputs, median of "
          f"{args.repeats}, ms per sample pair")
    for r in rows:
        ms = r["ms_per_sample_pair"]
        ways = "; ".join(f"{label} {v:.2f} ({r['ratios'][label]:.3f})" for label, v in ms.items())
        print(f"{r['model']}: batch {r['batch']}, SNN threads {r['snn_threads']}: {ways}; identical {r['identical']}")
    if args.json:
        from pmsm_compiler.files import save_text_atomic

        save_text_atomic(json.dumps({"command": " ".join(["python"] + sys.argv), "rows": rows}, indent=1) + "\n",
                         args.json)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
