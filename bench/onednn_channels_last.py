"""Does this torch's oneDNN survive the channels_last weight gradient of a strided 1×1 convolution?

torch 2.13 (oneDNN 3.12) crashed on an AMD EPYC VM (AVX2) in the backward pass of a channels_last
1×1 stride-2 convolution with 2–7 input channels: SIGSEGV / SIGABRT at one thread; at two,
some runs hung. ``pmsm_compiler.training.trainer.channels_last_hazard`` makes pmsm-train fall back to
NCHW for such layers. This script shows, on the machine it runs on, which shapes crash (each in a child
process, three backward passes on a batch of 32×32 images, with a time limit), and how far
ResNet-20's own shortcut and 3×3 layers' channels_last gradients are from the NCHW ones computed
without oneDNN (max |Δ| / max |reference|, per output, weight gradient and input gradient).

    python bench/onednn_channels_last.py [--timeout 30]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

CHILD = """
import sys, torch
cin, cout, k, stride, threads = map(int, sys.argv[1:])
torch.set_num_threads(threads)
conv = torch.nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(32, cin, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
for _ in range(3):
    conv(x).sum().backward()
"""

# (in, out, kernel, stride): the hazard's range, its edges, and ResNet-20's own shortcut / 3×3 shapes
CRASH_SHAPES = [(1, 2, 1, 2), (2, 4, 1, 2), (4, 8, 1, 2), (7, 14, 1, 2), (8, 16, 1, 2), (16, 32, 1, 2),
                (4, 8, 1, 1), (4, 8, 3, 2)]
RESNET20_SHAPES = [(16, 32, 1, 2), (32, 64, 1, 2), (3, 16, 3, 1), (16, 16, 3, 1), (16, 32, 3, 2), (32, 64, 3, 2)]


def run_child(shape, threads: int, timeout: float) -> str:
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, shape), str(threads)],
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"hang (> {timeout:g} s)"
    if proc.returncode == 0:
        return "ok"
    if proc.returncode < 0:
        return f"crash ({signal.Signals(-proc.returncode).name})"
    return f"exit {proc.returncode}"


def gradient_gap(shape) -> list[float]:
    import torch

    cin, cout, k, stride = shape
    torch.manual_seed(0)
    w = torch.randn(cout, cin, k, k)
    x = torch.randn(128, cin, 16, 16)
    grad = None
    results = []
    for channels_last in (True, False):
        torch.backends.mkldnn.enabled = channels_last
        conv = torch.nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)
        with torch.no_grad():
            conv.weight.copy_(w)
        xx = x.clone()
        if channels_last:
            conv, xx = conv.to(memory_format=torch.channels_last), xx.contiguous(memory_format=torch.channels_last)
        xx.requires_grad_()
        y = conv(xx)
        grad = torch.randn(y.shape) if grad is None else grad
        y.backward(grad)
        results.append([t.detach().contiguous() for t in (y, conv.weight.grad, xx.grad)])
    torch.backends.mkldnn.enabled = True
    return [float((a - b).abs().max() / b.abs().max()) for a, b in zip(*results)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a child counts as hung")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    args = ap.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        print(f"error: --threads must be comma-separated integers, got {args.threads!r}", file=sys.stderr)
        return 2
    import torch

    print(f"torch {torch.__version__}; channels_last conv backward, batch 32, 32×32, 3 passes")
    print("| in → out | kernel | stride | " + " | ".join(f"{t} thread(s)" for t in threads) + " |")
    print("|---|---|---|" + "---|" * len(threads))
    for shape in CRASH_SHAPES:
        cells = [run_child(shape, t, args.timeout) for t in threads]
        print(f"| {shape[0]} → {shape[1]} | {shape[2]}×{shape[2]} | {shape[3]} | " + " | ".join(cells) + " |")
    print("\nResNet-20 layers, channels_last (oneDNN) vs NCHW without oneDNN, 1 thread, batch 128, 16×16")
    print("| in → out | kernel | stride | output | weight grad | input grad |")
    print("|---|---|---|---|---|---|")
    torch.set_num_threads(1)
    for shape in RESNET20_SHAPES:
        gaps = gradient_gap(shape)
        print(f"| {shape[0]} → {shape[1]} | {shape[2]}×{shape[2]} | {shape[3]} | "
              + " | ".join(f"{g:.1e}" for g in gaps) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
