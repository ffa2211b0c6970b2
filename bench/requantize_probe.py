"""What changing a trained PQA network's levels costs before any fine-tuning: accuracy and spikes.

    python bench/requantize_probe.py --checkpoint training_state/sparse_sweep/init_resnet20_pqa.pt \
        --data ../shared/data/cifar10 [--test-images 2000] \
        [--configs "8:-0.25:1,8:-0.125:1,8:0:1,4:-0.25:1,4:0:1,4:-0.25:1.2"] [--prune layers.1,layers.2]

Each config L:α:λ-scale rebuilds the ResNet-20 with PQA(L, α, β = 1), loads the checkpoint's weights
and λ (λ multiplied by the scale), and evaluates it in PyTorch on evenly spaced test images,
counting the levels k every PQA layer emits (T = 1 of the SNN fires exactly these): accuracy,
Σ|k| and Σ 1[k ≠ 0] per neuron and per image. It says where fine-tuning for sparsity can start
(which level sets the trained weights tolerate) without training anything.

``--prune BLOCK[,BLOCK...]`` also probes each config with those residual blocks' first branch cut
off, one more block per row: the block's first BatchNorm gets gain and bias 0, so its first
activation receives exactly 0 and never fires (in the SNN too, at any T).
"""

from __future__ import annotations

import argparse
import sys


def parse_configs(text: str) -> list[tuple[int, float, float]]:
    configs = []
    for item in text.split(","):
        levels, alpha, scale = item.split(":")
        configs.append((int(levels), float(alpha), float(scale)))
    return configs


def probe(checkpoint: str, x, y, levels: int, alpha: float, lam_scale: float, mean, std, pruned=()) -> dict:
    import torch

    from pmsm_compiler.training.activations import ActivationSpec, quantized_activations
    from pmsm_compiler.training.zoo import build_model
    from pmsm_compiler.training.trainer import Normalizer, load_init_weights

    model = build_model("resnet20", num_classes=10, act=ActivationSpec("pqa", levels, 8.0, alpha, 1.0))
    load_init_weights(model, checkpoint)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for block in pruned:
            modules[f"{block}.bn1"].weight.zero_()
            modules[f"{block}.bn1"].bias.zero_()
    acts = [a for _, a in quantized_activations(model)]
    names = {a: name for name, a in quantized_activations(model)}
    totals = {"spikes": 0, "events": 0, "neurons": 0}
    by_layer = {name: 0 for name, _ in quantized_activations(model)}

    def count(name):
        def hook(module, _inputs, output):
            k = module.levels_of(output)
            totals["spikes"] += int(k.abs().sum())
            totals["events"] += int((k != 0).sum())
            totals["neurons"] += k[0].numel()
            by_layer[name] += int(k.abs().sum())
        return hook

    with torch.no_grad():
        for a in acts:
            a.lam.mul_(lam_scale)
            a.register_forward_hook(count(names[a]))
    norm = Normalizer(mean, std)
    model.eval()
    correct, batches = 0, 0
    with torch.no_grad():
        for i in range(0, len(x), 500):
            correct += int((model(norm(x[i:i + 500])).argmax(1) == y[i:i + 500]).sum())
            batches += 1
    neurons = totals["neurons"] / batches  # per image
    n = len(x)
    return {"L": levels, "alpha": alpha, "lam_scale": lam_scale, "levels": f"{acts[0].k_min}..{acts[0].k_max}",
            "accuracy": correct / n, "spikes_per_neuron": totals["spikes"] / n / neurons,
            "events_per_neuron": totals["events"] / n / neurons, "spikes_per_image": totals["spikes"] / n,
            "spikes_by_layer": {name: v / n for name, v in by_layer.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="pmsm-train checkpoint.pt of a PQA ResNet-20")
    ap.add_argument("--data", required=True, help="folder with test.npz")
    ap.add_argument("--test-images", type=int, default=2000, help="evenly spaced test images")
    ap.add_argument("--configs", default="8:-0.25:1,8:-0.125:1,8:0:1,4:-0.25:1,4:0:1,4:-0.25:0.85,4:-0.25:1.2,"
                                         "6:-0.1666666667:1")
    ap.add_argument("--prune", default="", help="residual blocks whose first branch to cut off, one more per row")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import os

    import numpy as np
    import torch

    from pmsm_compiler.data import load_npz
    from pmsm_compiler.data import CIFAR10_MEAN, CIFAR10_STD

    torch.set_num_threads(args.threads)
    data = load_npz(os.path.join(args.data, "test.npz"))
    idx = np.linspace(0, len(data) - 1, min(args.test_images, len(data))).round().astype(int)
    x = torch.from_numpy(np.ascontiguousarray(data.x[idx]))
    y = torch.from_numpy(data.y[idx].astype(np.int64))
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    print(f"`python bench/requantize_probe.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
          f"({len(x)} test images)\n")
    print("| L | α | levels | λ scale | branches cut | accuracy | spikes / neuron | events / neuron | spikes / image |")
    print("|---|---|---|---|---|---|---|---|---|")
    blocks = [b for b in args.prune.split(",") if b]
    for levels, alpha, scale in parse_configs(args.configs):
        for n in range(len(blocks) + 1):
            r = probe(args.checkpoint, x, y, levels, alpha, scale, mean, std, blocks[:n])
            print(f"| {levels} | {alpha:g} | {r['levels']} | {scale:g} | {', '.join(blocks[:n]) or '–'} | "
                  f"{100 * r['accuracy']:.2f} % | {r['spikes_per_neuron']:.3f} | {r['events_per_neuron']:.3f} | "
                  f"{r['spikes_per_image']:.3g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
