"""Level shift: make a PQA layer's most common level the silent one.

A PQA layer fires |k| spikes per neuron and step for level k (the paper's Eq. 11 unit). In a trained
ResNet-20 the first activation of a residual block (``act1``) mostly sits at its lower cap k = αL:
in the deeper blocks 55-87 % of the neurons fire |αL| negative spikes every step to say "off"
(docs/sparse.md). Shifting the layer's levels by m = −αL makes that level 0:

    act1:  y' = s·clip(floor((x + m·s)/s + ½), αL + m, βL + m)      (k' = k + m, in exact arithmetic)
    conv2: W * pad(y', value m·s)  =  W * pad(y, value 0) + m·s·ΣW    (ΣW over input channels and taps)
    bn2:   running mean μ' = μ + m·s·ΣW                               (training mode absorbs it by itself)

so the block computes the same function while the "off" neurons are silent; the others fire
|k + m| − |k| spikes more (for m = 1: one more at 0 and above, so the count changes by 1 − 2·p per
neuron, p the fraction at the lower cap: it pays where p > ½). ``shift_effect`` measures it.

The SNN sees an ordinary PQA layer (α = 0, β + m/L), an added constant before it (a bias of its
current) and a Pad with a constant fill before conv2 (a constant input, like a bias, not a spiking
neuron): the compiler needs nothing new, and exact mode is lossless at T = 1 against the exported
(shifted) ANN.

Only ``act1`` of a ResNet BasicBlock is shifted: conv2 is its only consumer. An activation that also
feeds a residual sum would carry the constant into the next block.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pmsm_compiler.training.activations import PQA


def shiftable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{activation name: its block} for every activation that can be shifted (a BasicBlock's act1)."""
    from pmsm_compiler.training.zoo.resnet import BasicBlock

    return {f"{name}.act1": block for name, block in model.named_modules()
            if isinstance(block, BasicBlock) and isinstance(block.act1, PQA)}


def parse_layers(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def apply_level_shift(model: nn.Module, names: list[str]) -> None:
    """Shift the levels of the named activations by m = −αL (their lower cap becomes level 0): the
    activation becomes PQA(α = 0, β − α) with the same λ, and conv2 pads with m·s, not 0. The
    weights are kept as they are; ``adopt_unshifted_statistics`` adjusts BatchNorm's running mean
    for weights trained without the shift."""
    blocks = shiftable_layers(model)
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise ValueError(f"level shift: {', '.join(unknown)} cannot be shifted; the shiftable layers are the "
                         f"PQA act1 layers of residual blocks: {', '.join(blocks) or 'none in this model'}")
    for name in names:
        block = blocks[name]
        if block.level_shift:
            continue
        act = block.act1
        if act.k_min >= 0:
            raise ValueError(f"level shift: {name} has no negative levels (α = {act.alpha:g}) to shift")
        shift = -act.k_min
        shifted = PQA(act.levels, float(act.lam.detach()), 0.0, (act.k_max + shift) / act.levels,
                      learn_lambda=act.lam.requires_grad)
        with torch.no_grad():
            shifted.lam.copy_(act.lam)
        block.act1 = shifted.to(act.lam.device)
        block.level_shift = shift
        block.conv2.padding = (0, 0)
        block.refresh_export_constants()


@torch.no_grad()
def adopt_unshifted_statistics(model: nn.Module, names: list[str]) -> None:
    """For weights trained without the shift of the named (already shifted) layers: raise bn2's
    running mean by m·s·ΣW, so that in eval mode the block computes what the unshifted one did."""
    blocks = shiftable_layers(model)
    for name in names:
        block = blocks[name]
        step = block.act1.lam / block.act1.levels
        block.bn2.running_mean.add_(block.level_shift * step * block.conv2.weight.sum(dim=(1, 2, 3)))


@torch.no_grad()
def shift_effect(model: nn.Module, x: torch.Tensor) -> dict[str, dict]:
    """What shifting each unshifted act1 would do on the batch ``x`` (eval mode): {name: {"lower_cap":
    fraction of its outputs at the lower cap, "spikes_change": mean of |k + m| − |k| per neuron and
    image with m = −αL (negative: the shift saves spikes), "neurons": per image}}."""
    blocks = {n: b for n, b in shiftable_layers(model).items() if not b.level_shift}
    seen: dict[str, dict] = {}
    hooks = []
    for name, block in blocks.items():
        def record(module, inputs, output, name=name):
            k = module.levels_of(output)
            m = -module.k_min
            seen[name] = {"lower_cap": float((k == module.k_min).float().mean()),
                          "spikes_change": float(((k + m).abs() - k.abs()).mean()),
                          "neurons": int(output[0].numel())}

        hooks.append(block.act1.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen
