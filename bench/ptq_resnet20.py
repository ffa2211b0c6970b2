"""Post-training quantization of a float ReLU model with onnxruntime → SNN, lossless at T = 1, no retraining.

    python bench/ptq_resnet20.py --float-model training_state/relu30/resnet20_relu/checkpoint.pt \
        [--data ../shared/data/cifar10] [--calibration 1000] [--test-images N] [--max-t 8] \
        [--modes exact,folded] [--activations uint8|int8] [--per-tensor] [--symmetric] \
        [--save-quantized q.onnx] [--json out.json]

``--float-model``: a ``pmsm-train`` checkpoint of a float (``--act relu``) zoo model, exported
here with ``pmsm-export``, or any float ONNX model with one image input (e.g. ``pmsm-export --act
relu -o float.onnx``). Steps, each measured on the test images (all 10,000 by default):

1. the float model's accuracy (onnxruntime);
2. ``onnxruntime.quantization.quantize_static`` (QDQ format, MinMax calibration on
   ``--calibration`` random training images; per-channel int8 weights and uint8 activations by
   default), the quantized ANN's accuracy with Q/DQ as float simulation (the ONNX semantics the
   verification checks) and deployed (Q/DQ fused into integer kernels, onnxruntime's default);
3. compile in each mode, the T = 1 verification on the test images (level agreement, T = 1
   prediction agreement), the SNN run up to T = ``--max-t``: accuracy at T = 1, 2, 4, 8, the T = 1
   prediction agreement with the quantized ANN, spikes per image.

Prints a markdown table (the rows of docs/compatibility.md) and, with ``--json``, every number.
Without test.npz under ``--data`` (or with ``--data bundled``) the bundled 1,000 test images are
both calibration and test set: a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import producer_eval  # noqa: E402


def float_onnx(path, tmp):
    """The float model as ONNX: a checkpoint is exported with pmsm-export (its config wins)."""
    if path.endswith(".onnx"):
        return path
    import contextlib

    from pmsm_compiler.cli.export import main as export_main

    out = os.path.join(tmp, "float.onnx")
    with contextlib.redirect_stdout(sys.stderr):  # its "wrote ..." line: stdout is the table
        export_main(["--checkpoint", path, "-o", out], standalone_mode=False)
    return out


def normalization(path):
    """(mean, std) recorded by pmsm-export, else CIFAR-10's."""
    import onnx

    from pmsm_compiler.data.prepare import resolve_normalization
    from pmsm_compiler.metadata import get_metadata

    recorded = get_metadata(onnx.load(path, load_external_data=False), "pmsm.export", {})
    return resolve_normalization("auto", recorded if isinstance(recorded, dict) else None)


def rows(result, times=(1, 2, 4, 8)):
    """Markdown rows: one per mode."""
    head = ("| mode | float | quantized ANN | deployed ANN | " + " | ".join(f"SNN T={t}" for t in times)
            + " | T=1 agreement | level agreement | spikes/image T=1 | verification |")
    lines = [head, "|" + "---|" * (8 + len(times))]
    for mode, m in result["modes"].items():
        acc = m["accuracy_by_t"]
        snn = " | ".join(f"{100 * acc[t - 1]:.2f} %" if t <= len(acc) else "n/a" for t in times)
        v = m["verification"]
        lines.append(f"| {mode} | {100 * result['float_accuracy']:.2f} % | {100 * m['ann_accuracy']:.2f} % | "
                     f"{100 * result['deployed_ann_accuracy']:.2f} % | {snn} | "
                     f"{100 * m['t1_prediction_agreement']:.2f} % | {v['level_agreement']:.6f} | "
                     f"{m['spikes_per_image_by_t'][0]:.4g} | {'passed' if v['passed'] else 'FAILED'} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float-model", required=True, help="pmsm-train checkpoint (.pt) or float ONNX model")
    ap.add_argument("--data", default=producer_eval.DEFAULT_DATA,
                    help="folder with train.npz and test.npz, or 'bundled'")
    ap.add_argument("--calibration", type=int, default=1000, help="random training images for calibration")
    ap.add_argument("--test-images", type=int, default=None, help="evenly spaced test images (default: all)")
    ap.add_argument("--max-t", type=int, default=8)
    ap.add_argument("--modes", default="exact,folded")
    ap.add_argument("--activations", choices=["uint8", "int8"], default="uint8")
    ap.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default: per channel)")
    ap.add_argument("--symmetric", action="store_true", help="symmetric activations (ActivationSymmetric)")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0, help="picks the calibration images")
    ap.add_argument("--save-quantized", help="also write the quantized ONNX model here")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pmsm_compiler.errors import quiet_third_party_logs

    quiet_third_party_logs()

    def log(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    train_set, test_set, source = producer_eval.cifar10(None if args.data == "bundled" else args.data)
    test_set = test_set.evenly_spaced(args.test_images)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        float_path = float_onnx(args.float_model, tmp)
        mean, std = normalization(float_path)
        pick = np.random.default_rng(args.seed).permutation(len(train_set))[:args.calibration]
        calibration = producer_eval.images(train_set, mean, std)[pick]
        quantized = args.save_quantized or os.path.join(tmp, "quantized.onnx")
        log(f"data: {source}; calibrating on {len(calibration)} training images, testing on {len(test_set)}")
        producer_eval.ort_quantize(float_path, quantized, calibration, per_channel=not args.per_tensor,
                                   activations=args.activations, symmetric=args.symmetric)
        result = producer_eval.measure(quantized, test_set, mean, std, modes=modes, max_t=args.max_t,
                                       batch_size=args.batch_size, float_path=float_path, log=log)
    command = "python bench/ptq_resnet20.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {"command": command.strip(), "float_model": args.float_model, "data": source,
               "calibration_images": len(calibration), "quantizer": {
                   "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "calibration": "MinMax",
                   "weights": "int8 per tensor" if args.per_tensor else "int8 per channel",
                   "activations": args.activations + (" symmetric" if args.symmetric else " asymmetric")},
               "seconds": round(time.perf_counter() - started, 1), **result}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(f"`{summary['command']}` ({source}; {len(test_set)} test images, {summary['seconds']:.0f} s)\n")
    print(rows(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
