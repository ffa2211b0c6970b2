"""Export agreement: quantization levels at every PQA / QCFS output, PyTorch eager vs onnxruntime.

For every zoo model (default resnet20, vgg16, vit_s) with random weights, random λ's and
randomized BatchNorm statistics (``pmsm_compiler.training.verify_export.randomize_for_check``), on the
bundled CIFAR-10 test images, export with ``pqa_as="node"`` and compare the integer levels
k = round(y/s) of every quantizer output between PyTorch eager and onnxruntime at
ORT_ENABLE_ALL and ORT_ENABLE_BASIC, plus the top-1 agreement of the logits.

Rows "isolated": every quantizer in onnxruntime computes from PyTorch's quantizer outputs of the
layers before it (``verify_export.with_fed_quantizer_inputs``), so a flip does not propagate and
each layer's own flips are counted; the plain rows include the cascade, which on random weights
grows with depth.

    python bench/export_agreement.py                       # the three models, default sizes
    python bench/export_agreement.py --models resnet20 --images 1000 --json out.json

λ: uniform in [2, 10] for the CNNs; for the ViT, λ from each quantizer's own input scale
(SpikeZIP's init) times a random factor in [0.5, 2], since its quantizers see very different
scales (softmax probabilities in [0, 1], LayerNorm outputs of unit scale).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

DEFAULT_IMAGES = {"resnet20": 1000, "vgg16": 200, "vit_s": 200}
DEFAULT_CHUNK = {"resnet20": 100, "vgg16": 25, "vit_s": 10}


def run_model(name: str, n_images: int, chunk: int, seed: int, threads: int, log=print) -> dict:
    import onnxruntime as ort
    import torch

    from pmsm_compiler.training.activations import quantized_activations
    from pmsm_compiler.data import NORMALIZATIONS, load_bundled_sample, normalize
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.zoo import build_model
    from pmsm_compiler.training.verify_export import (
        accumulate,
        compare_levels,
        k_ranges_of,
        make_session,
        overall_rate,
        pqa_outputs_onnx,
        pqa_outputs_torch,
        randomize_for_check,
        with_fed_quantizer_inputs,
        with_quantizer_outputs,
    )

    ds = load_bundled_sample()
    x_all = normalize(ds.x, *NORMALIZATIONS["cifar10"])
    n_images = min(n_images, len(x_all))
    x_eval = x_all[:n_images]
    x_calib = torch.from_numpy(x_all[-32:])

    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, act="pqa")
    mode = "calibrated" if name.startswith("vit") else "uniform"
    randomize_for_check(model, x_calib, seed=seed + 1, lam_mode=mode)
    k_ranges = k_ranges_of(model)
    t0 = time.time()
    proto = export_onnx(model, input_shape=(1, 3, 32, 32))
    export_s = time.time() - t0
    log(f"{name}: exported in {export_s:.1f} s, {len(quantized_activations(model))} quantizers")

    levels = {"ORT_ENABLE_ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "ORT_ENABLE_BASIC": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
    exposed = with_quantizer_outputs(proto)
    fed_model = with_fed_quantizer_inputs(proto)
    sessions = {k: make_session(exposed, lvl, threads) for k, lvl in levels.items()}
    fed_sessions = {k: make_session(fed_model, lvl, threads) for k, lvl in levels.items()}
    totals = {k: None for k in levels}
    isolated = {k: None for k in levels}
    all_vs_basic = None
    top1 = {k: 0 for k in levels}
    max_dlogit = {k: 0.0 for k in levels}
    t0 = time.time()
    for start in range(0, n_images, chunk):
        xb = x_eval[start:start + chunk]
        ref = pqa_outputs_torch(model, xb)
        outs = {}
        for k in levels:
            outs[k] = pqa_outputs_onnx(proto, xb, session=sessions[k])
            totals[k] = accumulate(totals[k], compare_levels(ref, outs[k], k_ranges))
            top1[k] += int(np.count_nonzero(ref.logits.argmax(1) == outs[k].logits.argmax(1)))
            max_dlogit[k] = max(max_dlogit[k], float(np.abs(ref.logits - outs[k].logits).max()))
            fed = pqa_outputs_onnx(proto, xb, session=fed_sessions[k], fed=ref)
            isolated[k] = accumulate(isolated[k], compare_levels(ref, fed, k_ranges))
        all_vs_basic = accumulate(all_vs_basic, compare_levels(outs["ORT_ENABLE_BASIC"], outs["ORT_ENABLE_ALL"]))
        del ref, outs
    run_s = time.time() - t0

    result = {"model": name, "images": n_images, "seed": seed, "lambda_mode": mode, "export_s": round(export_s, 1),
              "run_s": round(run_s, 1), "quantizers": len(k_ranges), "comparisons": {}}
    for k in levels:
        stats = totals[k]
        n = sum(s.n for s in stats)
        worst = max(stats, key=lambda s: s.rate)
        result["comparisons"][f"torch vs {k}"] = {
            "elements": n,
            "diff": sum(s.diff for s in stats),
            "rate": overall_rate(stats),
            "first": {"name": stats[0].name, "diff": stats[0].diff, "n": stats[0].n, "rate": stats[0].rate},
            "worst": {"name": worst.name, "rate": worst.rate},
            "max_dk": max(s.max_dk for s in stats),
            "top1_agreement": top1[k] / n_images,
            "max_abs_dlogit": max_dlogit[k],
            "nonzero_fraction": sum(s.nonzero for s in stats) / n,
            "clipped_fraction": sum(s.clipped for s in stats) / n,
            "per_quantizer": [{"name": s.name, "op": s.op, "n": s.n, "diff": s.diff, "rate": s.rate,
                               "max_dk": s.max_dk, "nonzero": s.nonzero / s.n, "clipped": s.clipped / s.n}
                              for s in stats],
        }
    for k in levels:
        stats = isolated[k]
        worst = max(stats, key=lambda s: s.rate)
        result["comparisons"][f"torch vs {k}, isolated"] = {
            "elements": sum(s.n for s in stats), "diff": sum(s.diff for s in stats), "rate": overall_rate(stats),
            "first": {"name": stats[0].name, "diff": stats[0].diff, "n": stats[0].n, "rate": stats[0].rate},
            "worst": {"name": worst.name, "rate": worst.rate},
            "max_dk": max(s.max_dk for s in stats),
            "per_quantizer": [{"name": s.name, "op": s.op, "n": s.n, "diff": s.diff, "rate": s.rate,
                               "max_dk": s.max_dk} for s in stats],
        }
    stats = all_vs_basic
    result["comparisons"]["ORT_ENABLE_BASIC vs ORT_ENABLE_ALL"] = {
        "elements": sum(s.n for s in stats), "diff": sum(s.diff for s in stats), "rate": overall_rate(stats),
        "first": {"name": stats[0].name, "diff": stats[0].diff, "n": stats[0].n, "rate": stats[0].rate},
        "max_dk": max(s.max_dk for s in stats),
    }
    return result


def table(results: list[dict]) -> str:
    head = ("| model | images | quantizers | comparison | level disagreement | first quantizer | worst quantizer "
            "| max abs dk | top-1 agreement | max abs dlogit | nonzero / clipped levels |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in results:
        for comp, c in r["comparisons"].items():
            first = f"{c['first']['name']}: {c['first']['diff']}/{c['first']['n']} = {c['first']['rate']:.1e}"
            worst = f"{c['worst']['name']}: {c['worst']['rate']:.1e}" if "worst" in c else "-"
            top1 = f"{c['top1_agreement'] * 100:.1f}%" if "top1_agreement" in c else "-"
            dlog = f"{c['max_abs_dlogit']:.2g}" if "max_abs_dlogit" in c else "-"
            occ = (f"{c['nonzero_fraction'] * 100:.0f}% / {c['clipped_fraction'] * 100:.1f}%"
                   if "nonzero_fraction" in c else "-")
            lines.append(f"| {r['model']} | {r['images']} | {r['quantizers']} | {comp} | "
                         f"{c['diff']}/{c['elements']} = {c['rate']:.2e} | {first} | {worst} | {c['max_dk']} | "
                         f"{top1} | {dlog} | {occ} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_IMAGES),
                        help="zoo models (default: resnet20 vgg16 vit_s)")
    parser.add_argument("--images", type=int, default=0,
                        help="images per model (default: resnet20 1000, vgg16 200, vit_s 200)")
    parser.add_argument("--chunk", type=int, default=0, help="images per forward pass (default per model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(args.threads)
    results = []
    t0 = time.time()
    for name in args.models:
        n = args.images or DEFAULT_IMAGES.get(name, 200)
        chunk = args.chunk or DEFAULT_CHUNK.get(name, 20)
        results.append(run_model(name, n, chunk, args.seed, args.threads,
                                 log=lambda s: print(s, file=sys.stderr, flush=True)))
        print(f"{name}: done in {results[-1]['export_s'] + results[-1]['run_s']:.0f} s", file=sys.stderr, flush=True)
    print(table(results))
    import onnxruntime
    print(f"\ntorch {torch.__version__}, onnxruntime {onnxruntime.__version__}, threads {args.threads}, "
          f"total {time.time() - t0:.0f} s")
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as f:
            json.dump({"results": results, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                       "threads": args.threads}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
