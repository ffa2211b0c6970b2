"""Training-step time of a zoo model on a CPU (ResNet-20 by default): ReLU vs PQA vs QCFS, side by side.

One SGD step (forward, cross-entropy, backward, update) on a random batch, channels_last, the
variants interleaved round by round so that a busy machine slows them alike; the median over the
rounds is printed with its ratio to the ReLU step. ``pqa (where-mask backward)`` is the previous
PQA autograd function (boolean mask and ``torch.where`` in the backward pass), kept here as the
reference the current one is measured against.

    OMP_WAIT_POLICY=PASSIVE python bench/train_step.py [--model resnet20] --threads 1 --batch-size 128 --rounds 12
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from pmsm_compiler.training import activations
from pmsm_compiler.training.activations import ActivationSpec
from pmsm_compiler.training.zoo import build_model


class WhereMaskQuantize(torch.autograd.Function):
    """The PQA / QCFS function before 2026-12-02: saves x and y, builds a boolean mask in backward."""

    @staticmethod
    def forward(ctx, x, lam, levels: int, k_min: int, k_max: int):
        step = lam / levels
        y = torch.div(x, step).add_(0.5).floor_().clamp_(k_min, k_max).mul_(step)
        ctx.save_for_backward(x, y, lam)
        ctx.bounds = (k_min / levels, k_max / levels)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, y, lam = ctx.saved_tensors
        alpha, beta = ctx.bounds
        inside = (x >= alpha * lam) & (x <= beta * lam)
        grad_x = torch.where(inside, grad_y, torch.zeros((), dtype=grad_y.dtype))
        grad_lam = ((grad_y * y).sum() - (grad_x * x).sum()) / lam
        return grad_x, grad_lam.reshape(lam.shape), None, None, None


@contextlib.contextmanager
def quantize_function(fn):
    saved = activations._QuantizeFunction
    activations._QuantizeFunction = fn
    try:
        yield
    finally:
        activations._QuantizeFunction = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20", help="zoo model name (e.g. vit_cifar)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.batch_size < 1 or args.threads < 1:
        print("error: --rounds, --batch-size and --threads must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    variants = [
        ("relu", "relu", None),
        ("pqa", "pqa", None),
        ("pqa (where-mask backward)", "pqa", WhereMaskQuantize),
        ("qcfs", "qcfs", None),
    ]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)
    setups = []
    for name, act, fn in variants:
        torch.manual_seed(42)
        model = build_model(args.model, act=ActivationSpec(act, 8, 2.0, -0.25 if act == "pqa" else 0.0, 1.0))
        model = model.to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        setups.append((name, model, opt, fn))
    times = {name: [] for name, *_ in setups}
    for r in range(args.warmup + args.rounds):
        for name, model, opt, fn in setups:
            with quantize_function(fn or activations._QuantizeFunction):
                t0 = time.perf_counter()
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                dt = time.perf_counter() - t0
            if r >= args.warmup:
                times[name].append(dt)
    relu = statistics.median(times["relu"])
    print(f"{args.model} training step, batch {args.batch_size}, {args.threads} thread(s), channels_last, "
          f"median of {args.rounds} interleaved rounds (torch {torch.__version__})")
    print(f"{'activation':<28} {'step (ms)':>10} {'/ relu':>8} {'s per 50k epoch':>16}")
    for name in times:
        med = statistics.median(times[name])
        print(f"{name:<28} {med * 1000:>10.0f} {med / relu:>8.2f} {med * 50000 / args.batch_size:>16.0f}")
    new, old = statistics.median(times["pqa"]), statistics.median(times["pqa (where-mask backward)"])
    print(f"pqa step, current / where-mask backward: {new / old:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
