"""Which activations of a trained PQA ResNet to run level-shifted, and what the shift saves.

    python bench/level_shift_probe.py --checkpoint training_state/sparse_kd/L4_lowlr_kd_w0.3/checkpoint.pt \
        --data ../shared/data/cifar10 [--images 1000] [--min-saving 0] [--onnx-out shifted.onnx]

Loads the checkpoint into its own configuration (model, levels, α, β; any level shift it already
runs), measures on ``--images`` evenly spaced *training* images, for each shiftable activation (a
residual block's act1), the fraction at the lower cap and the change of Σ|k| per image the shift
would make there (``level_shift.shift_effect``); the layers where it saves spikes make the
suggested ``pmsm-train --level-shift`` value. With ``--onnx-out`` it also writes the
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
    from pmsm_compiler.training.level_shift import adopt_unshifted_statistics, apply_level_shift
    from pmsm_compiler.training.trainer import (TrainConfig, checkpoint_level_shift, load_init_weights,
                                                model_for_config, read_checkpoint)

    state = read_checkpoint(checkpoint, "--checkpoint")
    saved = state.get("config", {}) if isinstance(state, dict) else {}
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    model = model_for_config(saved)
    own = checkpoint_level_shift(state)
    load_init_weights(model, checkpoint)
    extra = [n for n in extra_shift if n not in own]
    if extra:
        apply_level_shift(model, extra)
        adopt_unshifted_statistics(model, extra)
    return model.eval(), cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a pmsm-train checkpoint.pt of a PQA ResNet")
    ap.add_argument("--data", required=True, help="folder with train.npz (or anything pmsm-train --data takes)")
    ap.add_argument("--images", type=int, default=1000, help="evenly spaced training images to measure on")
    ap.add_argument("--min-saving", type=float, default=0.0,
                    help="shift the layers whose Σ|k| falls by more than this per neuron (0: any saving)")
    ap.add_argument("--onnx-out", help="write the model with the suggested shift here (ONNX)")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        ap.error(f"no such checkpoint: {args.checkpoint}")
    import numpy as np
    import torch

    from pmsm_compiler.cli.train import load_training_data
    from pmsm_compiler.data import NORMALIZATIONS
    from pmsm_compiler.training.level_shift import shift_effect, shiftable_layers
    from pmsm_compiler.training.trainer import Normalizer

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, cfg = load_configured(args.checkpoint)
    train_x, _, _, _ = load_training_data(args.data, cfg.dataset)
    idx = np.linspace(0, len(train_x) - 1, min(args.images, len(train_x))).astype(int)
    x = Normalizer(*NORMALIZATIONS[cfg.dataset])(torch.from_numpy(np.ascontiguousarray(train_x[idx])))
    effects = shift_effect(model, x)
    already = [n for n, b in shiftable_layers(model).items() if b.level_shift]
    print(f"{'layer':<16} {'neurons':>8} {'at lower cap':>13} {'Σ|k| change / image':>20}")
    for name in already:
        print(f"{name:<16} {'':>8} {'(shifted)':>13}")
    suggested, change = [], 0.0
    for name, e in effects.items():
        delta = e["spikes_change"] * e["neurons"]
        pick = delta < -args.min_saving * e["neurons"]
        if pick:
            suggested.append(name)
            change += delta
        print(f"{name:<16} {e['neurons']:>8} {100 * e['lower_cap']:>12.1f}% {delta:>+20.0f}"
              f"{'  <- shift' if pick else ''}")
    print(f"suggested: --level-shift {','.join(already + suggested) or '(none)'}  "
          f"(Σ|k| per image {change:+.0f} on these images)")
    if args.onnx_out and suggested:
        from pmsm_compiler.training.export import export_onnx

        shifted, _ = load_configured(args.checkpoint, suggested)
        with torch.no_grad():
            same = float((shifted(x).argmax(1) == model(x).argmax(1)).float().mean())
        export_onnx(shifted, args.onnx_out)
        print(f"wrote {args.onnx_out}: predictions equal to the unshifted model's on {100 * same:.2f} % of the "
              f"{len(x)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
