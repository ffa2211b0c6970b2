"""What the T = 1 step in the ANN's form costs: a T = 1 run of an exact-mode SNN with its step in
the ANN's form (``runtime/ann_form_step.py``) against the usual first-and-last step and one run of
the ANN, side by side in one process, interleaved round by round, medians.

    python bench/ann_form_cost.py [--model ANN.onnx] [--images 512] [--batch-size 64] [--rounds 5]

Default model: the shipped PQA ResNet-20; images: the bundled CIFAR-10 sample. Prints per form the
session build time (first use) and the run time over the images, and the ratio to the ANN's run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="the ANN (default: the shipped PQA ResNet-20)")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if args.images < 1 or args.batch_size < 1 or args.rounds < 1:
        ap.error("--images, --batch-size and --rounds must be >= 1")
    from pmsm_compiler.data import load_bundled_sample
    from pmsm_compiler.data.normalization import normalize
    from pmsm_compiler.data.prepare import resolve_normalization
    from pmsm_compiler.models import shipped_model_path
    from pmsm_compiler.pipeline import compile_and_verify
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.sessions import make_session

    path = args.model or str(shipped_model_path("resnet20_pqa_cifar10.onnx"))
    compiled = compile_and_verify(path, "exact", check=False)
    mean, std = resolve_normalization("auto", compiled.info)
    x = normalize(load_bundled_sample().x[:args.images], mean, std)
    batches = [x[i:i + args.batch_size] for i in range(0, len(x), args.batch_size)]
    name = compiled.info.inputs[0].name
    times: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for label, form in (("SNN T = 1, ANN form", True), ("SNN T = 1, usual step", False), ("ANN", None)):
            start = time.perf_counter()
            if form is None:
                session = make_session(compiled.ann, "all")
            else:
                session = SNNSession(compiled.model, ann_form=form)
                session.session_for(True, True)
            built = time.perf_counter() - start
            start = time.perf_counter()
            for xb in batches:
                if form is None:
                    session.run(None, {name: xb})
                else:
                    session.run_batch(xb, 1)
            times.setdefault(label, []).append((built, time.perf_counter() - start))
    ann_run = statistics.median(r for _, r in times["ANN"])
    print(f"{os.path.basename(path)}, exact mode, {len(x)} images in batches of {args.batch_size}, "
          f"median of {args.rounds} rounds")
    print(f"{'':24} {'build s':>8} {'run s':>8} {'/ ANN run':>10}")
    for label, values in times.items():
        build, run = statistics.median(b for b, _ in values), statistics.median(r for _, r in values)
        print(f"{label:24} {build:8.3f} {run:8.3f} {run / ann_run:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
