"""Layer-by-layer runs on models as users bring them: another exporter, a fixed batch (issue 20).

    python bench/time_batch_models.py [--steps 16] [--rounds 5] [--json PATH]

ResNet-20, folded, batch 1, in ONE process: for each model, ``run_batch(x, --steps) / --steps``
step by step (``time_batch=1``) and by default, interleaved round by round, with what the runtime
decided (``time_batch_report``) and whether the two runs are equal bit for bit (outputs, spikes):

* the shipped PQA ResNet-20 as exported (torch dynamo, dynamic batch);
* the same file loaded with a fixed batch of 1 (``pmsm-compile --input-shape input:1x3x32x32``; what
  ``torch.onnx.export`` without dynamic axes gives);
* a random PQA ResNet-20 through the legacy TorchScript exporter, its quantizers as plain ops.
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


def models(tmp: str) -> dict:
    import torch

    from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD, load_bundled_sample, normalize
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.models import shipped_model_path
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.verify_export import randomize_for_check
    from pmsm_compiler.training.zoo import build_model

    path = shipped_model_path("resnet20_pqa_cifar10.onnx")
    torch.manual_seed(0)
    net = build_model("resnet20", act="pqa")
    randomize_for_check(net, torch.from_numpy(normalize(load_bundled_sample().x[:32], CIFAR10_MEAN, CIFAR10_STD)))
    legacy = os.path.join(tmp, "legacy.onnx")
    export_onnx(net, legacy, exporter="legacy", pqa_as="plain")
    return {"shipped, dynamic batch": load_model(path),
            "shipped, --input-shape input:1x3x32x32": load_model(path, input_shapes={"input": [1, 3, 32, 32]}),
            "legacy exporter, quantizers as plain ops": load_model(legacy)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.steps < 2 or args.rounds < 1:
        p.error("need --steps >= 2 and --rounds >= 1")
    import numpy as np

    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD, load_bundled_sample, normalize
    from pmsm_compiler.runtime import SNNSession

    x = normalize(load_bundled_sample().x[:1], CIFAR10_MEAN, CIFAR10_STD)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pmsm_tb_models_") as tmp:
        for label, ann in models(tmp).items():
            snn = compile_model(ann, "folded").model
            stepwise, default = SNNSession(snn, time_batch=1), SNNSession(snn)
            times = {"stepwise": [], "default": []}
            for _ in range(args.rounds + 1):  # the first round warms up
                for key, session in (("stepwise", stepwise), ("default", default)):
                    start = time.perf_counter()
                    result = session.run_batch(x, args.steps, keep_outputs=True)
                    times[key].append((time.perf_counter() - start) / args.steps)
                    if key == "stepwise":
                        reference = result
            equal = (np.array_equal(result.outputs_by_t, reference.outputs_by_t)
                     and np.array_equal(result.spikes, reference.spikes))
            rows.append({"model": label, **default.time_batch_report(1, args.steps), "equal": bool(equal),
                         "stepwise_ms": 1e3 * statistics.median(times["stepwise"][1:]),
                         "default_ms": 1e3 * statistics.median(times["default"][1:])})
    print(f"ResNet-20, folded, batch 1, T = {args.steps}: per step, medians of {args.rounds}")
    for r in rows:
        print(f"  {r['model']}: step by step {r['stepwise_ms']:.3f} ms, default {r['default_ms']:.3f} ms "
              f"({r['steps_per_run']} a pass{'; ' + r['reason'] if r['reason'] else ''}); equal: {r['equal']}")
    if args.json:
        from pmsm_compiler.files import save_text_atomic

        save_text_atomic(json.dumps({"command": " ".join(["python"] + sys.argv), "steps": args.steps,
                                     "rounds": args.rounds, "rows": rows}, indent=1) + "\n", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
