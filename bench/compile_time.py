"""Time pmsm-compile on ResNet-20 (and VGG-16): load + passes + export, with and without the
T = 1 verification, median of several runs, in one process.

    python bench/compile_time.py [--models resnet20,vgg16] [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch

    from pmsm_compiler.training.activations import quantized_activations
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.loading import load_model, save_model_atomic
    from pmsm_compiler.training.zoo import build_model
    from pmsm_compiler.verify import random_inputs, verify

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            torch.manual_seed(0)
            net = build_model(name, act="pqa")
            for _, q in quantized_activations(net):
                q.lam.data.uniform_(2, 10)
            path = os.path.join(tmp, f"{name}.onnx")
            export_onnx(net.eval(), path)
            for mode in ("folded", "exact"):
                t_compile, t_check = [], []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    ann = load_model(path)
                    compiled = compile_model(ann, mode=mode)
                    save_model_atomic(compiled.model, os.path.join(tmp, f"{name}.snn.onnx"))
                    t1 = time.perf_counter()
                    verify(ann, compiled, random_inputs(compiled.info, 64, 0), mode=mode)
                    t2 = time.perf_counter()
                    t_compile.append(t1 - t0)
                    t_check.append(t2 - t0)
                rows.append({"model": name, "mode": mode, "compile_s": statistics.median(t_compile),
                             "compile_and_verify_s": statistics.median(t_check), "repeats": args.repeats,
                             "size_mb": round(os.path.getsize(path) / 2**20, 2)})
    print(f"{'model':<10} {'mode':<7} {'size MB':>8} {'load+compile+save s':>20} {'+ verify (64 samples) s':>24}")
    for r in rows:
        print(f"{r['model']:<10} {r['mode']:<7} {r['size_mb']:>8} {r['compile_s']:>20.3f} {r['compile_and_verify_s']:>24.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
