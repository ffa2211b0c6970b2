"""Producers × modes on real CIFAR-10 images → the table of docs/compatibility.md.

    python bench/compatibility.py [--data ../shared/data/cifar10] [--json compat.json]
        [--epochs 3] [--train-images 20000] [--calibration 512] [--test-images N] [--max-t 4]
        [--producers ort-u8-per-tensor,...]

One small float CNN (Conv-BN-ReLU ×4 with a residual Add, global average pooling, a linear head;
seeded) is trained briefly on the training images, then quantized by each producer, with its own
calibration (or, for Brevitas, quantization-aware fine-tuning) on training images:

- onnxruntime ``quantize_static`` (QDQ; MinMax): uint8 activations with per-tensor weights (its
  defaults), int8 per-channel asymmetric, int8 per-channel symmetric, uint16 per-channel;
- torchao PT2E (``prepare_pt2e`` / ``convert_pt2e``): XNNPACK per-channel and X86 Inductor,
  exported with ``torch.onnx.export(dynamo=True)``;
- Brevitas: the same network with 4-bit weights and activations (8-bit input), initialised from the
  float weights, fine-tuned one epoch, exported with ``export_onnx_qcdq``.

Every quantized model is compiled in exact and folded mode and measured on the test images
(``producer_eval.measure``): T = 1 prediction agreement and level agreement (the verification),
the deployed ANN's agreement (integer kernels, information), the quantized ANN's and the SNN's
accuracy, spikes per image. Without ``--data`` holding test.npz the bundled 1,000 test images
serve as both training and test set: a smoke run, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import producer_eval  # noqa: E402

PRODUCERS = {
    "ort-u8-per-tensor": "onnxruntime quantize_static, QDQ: uint8 activations, int8 per-tensor weights "
                         "(its defaults)",
    "ort-s8-per-channel": "onnxruntime quantize_static, QDQ: int8 activations (asymmetric), int8 per-channel "
                          "weights",
    "ort-s8-symmetric": "onnxruntime quantize_static, QDQ: int8 symmetric activations (ActivationSymmetric), "
                        "int8 per-channel weights",
    "ort-u16-per-channel": "onnxruntime quantize_static, QDQ: uint16 activations, int8 per-channel weights",
    "pt2e-xnnpack": "torchao PT2E, XNNPACK quantizer: int8 activations, int8 per-channel symmetric weights",
    "pt2e-x86": "torchao PT2E, X86 Inductor quantizer: uint8 activations at conv/linear inputs, int8 per-channel "
                "weights",
    "brevitas-4bit": "Brevitas QAT (1 epoch from the float weights): 4-bit weights (per channel) and QuantReLU, "
                     "8-bit input, export_onnx_qcdq",
}
ORT_CONFIGS = {
    "ort-u8-per-tensor": dict(per_channel=False, activations="uint8", weights="int8"),
    "ort-s8-per-channel": dict(per_channel=True, activations="int8", weights="int8"),
    "ort-s8-symmetric": dict(per_channel=True, activations="int8", weights="int8", symmetric=True),
    "ort-u16-per-channel": dict(per_channel=True, activations="uint16", weights="int8"),
}


def _net(quant=None, bits=4):
    """The small CNN; with ``quant`` (brevitas.nn) the same layers quantized."""
    import torch
    from torch import nn

    def conv(cin, cout, stride=1):
        if quant is None:
            return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        return quant.QuantConv2d(cin, cout, 3, stride, 1, bias=False, weight_bit_width=bits,
                                 weight_scaling_per_output_channel=True)

    def relu():
        return nn.ReLU() if quant is None else quant.QuantReLU(bit_width=bits)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Identity() if quant is None else quant.QuantIdentity(bit_width=8)
            self.c1, self.b1, self.r1 = conv(3, 16), nn.BatchNorm2d(16), relu()
            self.c2, self.b2, self.r2 = conv(16, 32, 2), nn.BatchNorm2d(32), relu()
            self.c3, self.b3, self.r3 = conv(32, 32), nn.BatchNorm2d(32), relu()
            self.c4, self.b4, self.r4 = conv(32, 64, 2), nn.BatchNorm2d(64), relu()
            self.fc = nn.Linear(64, 10) if quant is None else quant.QuantLinear(64, 10, bias=True,
                                                                                  weight_bit_width=8)

        def forward(self, x):
            x = self.r1(self.b1(self.c1(self.inp(x))))
            x = self.r2(self.b2(self.c2(x)))
            x = self.r3(self.b3(self.c3(x)) + x)
            x = self.r4(self.b4(self.c4(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return Net()


def train(net, x, y, epochs, lr, seed, log):
    """SGD with momentum, cosine schedule, random flips; seeded."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    net.train()
    for epoch in range(epochs):
        order = torch.from_numpy(gen.permutation(len(x)))
        total, start = 0.0, time.perf_counter()
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            xb = xt[idx]
            flip = torch.from_numpy(gen.random(len(idx)) < 0.5)
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = torch.nn.functional.cross_entropy(net(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.3f} ({time.perf_counter() - start:.0f} s)")
    return net.eval()


def export_float(net, path):
    import torch

    torch.onnx.export(net.eval(), (torch.randn(1, 3, 32, 32),), path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def pt2e(net, calibration, name, path):
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if name == "pt2e-x86":
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    else:
        from torchao.testing.pt2e import _xnnpack_quantizer as xnnpack

        quantizer = xnnpack.XNNPACKQuantizer().set_global(
            xnnpack.get_symmetric_quantization_config(is_per_channel=True))
    example = (torch.from_numpy(calibration[:2]),)
    batch = torch.export.Dim("batch")
    program = torch.export.export(net.eval(), example, dynamic_shapes=({0: batch},))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), 64):
            prepared(torch.from_numpy(calibration[i:i + 64]))
    converted = move_exported_model_to_eval(convert_pt2e(prepared))
    torch.onnx.export(converted, example, path, dynamo=True, opset_version=18, input_names=["input"],
                      output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
    return path


def brevitas(net, x, y, seed, path, log):
    import brevitas.nn as qnn
    import torch
    from brevitas.export import export_onnx_qcdq

    qnet = _net(qnn)
    missing = qnet.load_state_dict(net.state_dict(), strict=False)
    assert not [k for k in missing.missing_keys if not ("quant" in k or "scaling" in k)], missing
    train(qnet, x, y, 1, 0.01, seed, log)
    export_onnx_qcdq(qnet.eval(), torch.from_numpy(x[:1]), export_path=path, opset_version=17)
    return path


def table(results):
    """The markdown rows of docs/compatibility.md."""
    lines = ["| producer | mode | ANN acc. | SNN T=1 acc. | T=1 prediction agreement | level agreement | "
             "max \\|Δ output\\| | deployed ANN agreement | spikes/image T=1 | mean \\|k\\| | verification |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for mode, m in r["modes"].items():
            v = m["verification"]
            dep = v["deployed_ann"]["top1_agreement"] if v["deployed_ann"] else None
            lines.append(
                f"| {name} | {mode} | {100 * m['ann_accuracy']:.2f} % | {100 * m['accuracy_by_t'][0]:.2f} % | "
                f"{100 * m['t1_prediction_agreement']:.2f} % | {v['level_agreement']:.6f} | {v['max_abs_diff']:.3g} | "
                f"{'n/a' if dep is None else f'{100 * dep:.2f} %'} | {m['spikes_per_image_by_t'][0]:.4g} | "
                f"{m['spikes_per_image_by_t'][0] / m['neurons']:.3g} | {'passed' if v['passed'] else 'FAILED'} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=producer_eval.DEFAULT_DATA,
                    help="folder with train.npz and test.npz, or 'bundled'")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=20000)
    ap.add_argument("--calibration", type=int, default=512, help="training images for calibration")
    ap.add_argument("--test-images", type=int, default=None, help="evenly spaced test images (default: all)")
    ap.add_argument("--max-t", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--producers", default=",".join(PRODUCERS), help=f"subset of {', '.join(PRODUCERS)}")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD
    from pmsm_compiler.errors import quiet_third_party_logs

    quiet_third_party_logs()
    import logging

    logging.getLogger("onnxscript").setLevel(logging.CRITICAL)  # its version converter logs tracebacks it recovers from
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [p.strip() for p in args.producers.split(",") if p.strip()]
    unknown = [n for n in names if n not in PRODUCERS]
    if unknown:
        ap.error(f"unknown producer(s) {', '.join(unknown)}; choose from {', '.join(PRODUCERS)}")

    def log(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    train_set, test_set, source = producer_eval.cifar10(None if args.data == "bundled" else args.data)
    train_set = train_set.evenly_spaced(args.train_images)
    test_set = test_set.evenly_spaced(args.test_images)
    xtrain = producer_eval.images(train_set, CIFAR10_MEAN, CIFAR10_STD)
    ytrain = train_set.y.astype(np.int64)
    calibration = xtrain[np.random.default_rng(args.seed + 1).permutation(len(xtrain))[:args.calibration]]
    log(f"data: {source}; training on {len(xtrain)} images, testing on {len(test_set)}")
    torch.manual_seed(args.seed)
    net = train(_net(), xtrain, ytrain, args.epochs, 0.1, args.seed, log)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        float_path = export_float(net, os.path.join(tmp, "float.onnx"))
        for name in names:
            log(f"== {name}: {PRODUCERS[name]}")
            path = os.path.join(tmp, f"{name}.onnx")
            with contextlib.redirect_stdout(sys.stderr):  # torch.onnx's progress lines: stdout is the table
                if name in ORT_CONFIGS:
                    producer_eval.ort_quantize(float_path, path, calibration, **ORT_CONFIGS[name])
                elif name.startswith("pt2e"):
                    pt2e(net, calibration, name, path)
                else:
                    brevitas(net, xtrain, ytrain, args.seed, path, log)
            results[name] = producer_eval.measure(path, test_set, CIFAR10_MEAN, CIFAR10_STD, max_t=args.max_t,
                                                  float_path=float_path, log=log)
            results[name]["producer"] = PRODUCERS[name]
    command = "python bench/compatibility.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {"command": command.strip(), "data": source, "train_images": len(xtrain),
               "test_images": len(test_set), "epochs": args.epochs, "seed": args.seed,
               "seconds": round(time.perf_counter() - started, 1), "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(f"`{summary['command']}` ({source}; {len(test_set)} test images, {summary['seconds']:.0f} s)\n")
    print(table(results))
    float_acc = next(iter(results.values())).get("float_accuracy") if results else None
    if float_acc is not None:
        print(f"\nfloat model: {100 * float_acc:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
