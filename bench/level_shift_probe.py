"""Which activations of a trained PQA ResNet to run level-shifted, and what the shift saves.

    python bench/level_shift_probe.py --checkpoint training_state/sparse_kd/L4_lowlr_kd_w0.3/checkpoint.pt \
        --data ../shared/data/cifar10 [--images 1000] [--threshold 0.5] [--onnx-out shifted.onnx]

Loads the checkpoint into its own configuration (model, levels, α, β; any level shift it already
runs), measures on ``--images`` evenly spaced *training* images the fraction p of each shiftable
activation's outputs (a residual block's act1) at the lower cap, and prints per layer p and the
change of Σ|k| the shift makes there, (1 − 2p) per neuron; the layers with p above the threshold
make the suggested ``pmsm-train --level-shift`` value. With ``--onnx-out`` it also writes the
shifted model (weights as they are, BatchNorm means adopted: the same function) as ONNX, for
``pmsm-compile`` / ``bench/spike_front.py --model``, and checks on the same images that it predicts
what the unshifted model predicts (PyTorch, eval mode).
"""

from __future__ import annotations

import argparse
import os
import sys


def load_configured(checkpoint: str, extra_shift=()):
    """(model in eval mode, its config) with the checkpoint's own activation and level shift, plus
    ``extra_shift`` applied with the BatchNorm means adopted."""
    import torch

    from pmsm_compiler.training.level_shift import adopt_unshifted_statistics, apply_level_shift
    from pmsm_compiler.training.trainer import TrainConfig, checkpoint_level_shift, load_init_weights, read_checkpoint
    from pmsm_compiler.training.zoo import build_model

    state = read_checkpoint(checkpoint, "--checkpoint")
    saved = state.get("config", {}) if isinstance(state, dict) else {}
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    model = build_model(cfg.model, num_classes=cfg.num_classes, act=cfg.act_spec())
    own = checkpoint_level_shift(state)
    apply_level_shift(model, own)
    load_init_weights(model, checkpoint)
    extra = [n for n in extra_shift if n not in own]
    if extra:
        apply_level_shift(model, extra)
        adopt_unshifted_statistics(model, extra)
    torch.set_grad_enabled(False)
    return model.eval(), cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a pmsm-train checkpoint.pt of a PQA ResNet")
    ap.add_argument("--data", required=True, help="folder with train.npz (or anything pmsm-train --data takes)")
    ap.add_argument("--images", type=int, default=1000, help="evenly spaced training images to measure on")
    ap.add_argument("--threshold", type=float, default=0.5, help="shift the layers with more than this at the lower cap")
    ap.add_argument("--onnx-out", help="write the model with the suggested shift here (ONNX)")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        ap.error(f"no such checkpoint: {args.checkpoint}")
    import numpy as np
    import torch

    from pmsm_compiler.cli.train import load_training_data
    from pmsm_compiler.data import NORMALIZATIONS
    from pmsm_compiler.training.level_shift import lower_cap_fractions, shiftable_layers
    from pmsm_compiler.training.trainer import Normalizer

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, cfg = load_configured(args.checkpoint)
    train_x, _, _, _ = load_training_data(args.data, cfg.dataset)
    idx = np.linspace(0, len(train_x) - 1, min(args.images, len(train_x))).astype(int)
    x = Normalizer(*NORMALIZATIONS[cfg.dataset])(torch.from_numpy(np.ascontiguousarray(train_x[idx])))
    fractions = lower_cap_fractions(model, x)
    blocks = shiftable_layers(model)
    already = {n for n, b in blocks.items() if b.level_shift}
    print(f"{'layer':<16} {'neurons':>8} {'at lower cap':>13} {'Σ|k| change / image':>20}")
    suggested, change = [], 0.0
    with torch.no_grad():
        sizes = {}
        hooks = [b.act1.register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, o[0].numel()))
                 for n, b in blocks.items()]
        model(x[:1])
        for h in hooks:
            h.remove()
    for name, p in fractions.items():
        if name in already:
            print(f"{name:<16} {sizes[name]:>8} {'(shifted)':>13}")
            continue
        delta = (1 - 2 * p) * sizes[name]
        pick = p > args.threshold
        if pick:
            suggested.append(name)
            change += delta
        print(f"{name:<16} {sizes[name]:>8} {100 * p:>12.1f}% {delta:>+20.0f}{'  <- shift' if pick else ''}")
    print(f"suggested: --level-shift {','.join(sorted(already) + suggested) or '(none)'}  "
          f"(Σ|k| per image {change:+.0f} on these images)")
    if args.onnx_out and suggested:
        from pmsm_compiler.training.export import export_onnx

        shifted, _ = load_configured(args.checkpoint, suggested)
        same = float((shifted(x).argmax(1) == model(x).argmax(1)).float().mean())
        export_onnx(shifted, args.onnx_out)
        print(f"wrote {args.onnx_out}: predictions equal to the unshifted model's on {100 * same:.2f} % of the "
              f"{len(x)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
