"""What a compile's verification cannot go below: one plain onnxruntime session of the ANN, built
and run on the verification's samples (issue 20).

    python bench/verify_floor.py M/vgg16.onnx M/vit_depth12_dim384_heads6.onnx [--samples 64] \
        [--batch 16] [--repeats 3]

M: the models bench/compile_scale.py exported (``--models-dir``). For each model: the time to
build the session (``pmsm_compiler.sessions.make_session``, optimization level all, Q/DQ not
fused, as the verification builds its reference) and the fastest of ``--repeats`` runs of
``--samples`` random-normal inputs in batches of ``--batch`` (a fixed batch dimension wins).
The verification runs three such models in folded mode (the ANN with its quantizer outputs
exposed, the SNN's step, the ANN's tail fed the SNN's levels) and more in exact mode, each at
least this costly: set against bench/compile_scale.py's ``verify`` column, it says how much of
that column is overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def floor(path: str, samples: int, batch: int, repeats: int) -> dict:
    import numpy as np
    import onnx

    from pmsm_compiler.sessions import declared_batch, make_session, padded_batches

    model = onnx.load(path)
    started = time.perf_counter()
    session = make_session(model.SerializeToString(), "all", qdq_fusion=False)
    build = time.perf_counter() - started
    (given,) = session.get_inputs()[:1]
    shape = [d if isinstance(d, int) else None for d in given.shape]
    if None in shape[1:]:
        raise SystemExit(f"error: {path}: input {given.name!r} has a dynamic dimension besides the batch ({given.shape})")
    batch = declared_batch(shape) or batch
    x = np.random.default_rng(0).standard_normal((samples, *shape[1:])).astype(np.float32)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for xb, _n in padded_batches(x, batch):
            session.run(None, {given.name: xb})
        runs.append(time.perf_counter() - started)
    return {"model": os.path.basename(path), "file_mb": round(os.path.getsize(path) / 1e6, 1), "build_s": build,
            "run_s": min(runs), "samples": samples, "batch": batch}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="ONNX models (e.g. bench/compile_scale.py's --models-dir)")
    ap.add_argument("--samples", type=int, default=64, help="pmsm-compile's default verification samples")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if min(args.samples, args.batch, args.repeats) < 1:
        ap.error("--samples, --batch and --repeats must be >= 1")
    missing = [m for m in args.models if not os.path.isfile(m)]
    if missing:
        ap.error(f"no such model: {missing[0]}")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    rows = [floor(m, args.samples, args.batch, args.repeats) for m in args.models]
    print(f"one plain ANN session (level all), {args.samples} random inputs, fastest of {args.repeats} runs")
    print(f"{'model':<36} {'file MB':>8} {'batch':>6} {'build s':>8} {'run s':>7} {'build+run s':>12}")
    for r in rows:
        print(f"{r['model']:<36} {r['file_mb']:>8} {r['batch']:>6} {r['build_s']:>8.2f} {r['run_s']:>7.2f} "
              f"{r['build_s'] + r['run_s']:>12.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
