"""An exponential moving average of a network's weights (Polyak averaging), kept beside training.

After every optimizer step t = 1, 2, ... each floating tensor θ of the model's state (weights, the
quantizers' λ, BatchNorm's running mean and variance) updates its average

    θ̄_t = d_t·θ̄_{t−1} + (1 − d_t)·θ_t,    d_t = min(d, (1 + t) / (10 + t)),    θ̄_0 = θ_0,

and integer buffers (BatchNorm's step counter) are copied. The warm-up of d_t (as timm's ModelEma
and TensorFlow's ExponentialMovingAverage with num_updates) lets the first steps replace the
starting weights quickly instead of carrying them for 1/(1 − d) steps: in a fine-tune the
starting weights come from another objective.

Why a quantized fine-tune might want it: with a spike penalty the test accuracy of the trained
weights swings by points from one evaluation to the next (86.2 %, 84.0 %, 87.3 % at epochs 2, 4, 6 of
docs/sparse.md's level-shifted run), because every step moves some pre-activations across a rounding
boundary. BatchNorm's running statistics are averaged with the weights (as timm's ModelEmaV2 does)
rather than re-estimated. Measured there: the average steadies the middle of a run (87.0–87.3 %
while the trained weights fell to 80 %), but at the end of a cosine schedule the last weights were
better (87.80 % against 86.76 %): the average still holds weights and statistics from the
high-learning-rate part of the schedule. Use it to monitor a run, or for schedules that do not
anneal.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def average_decay(decay: float, step: int) -> float:
    """d_t: the configured decay, warmed up over the first steps (see the module docstring)."""
    return min(decay, (1.0 + step) / (10.0 + step))


class WeightAverage:
    """The running average θ̄ of ``model``'s state, held in a copy of ``model`` (``self.model``);
    ``update(model)`` after each optimizer step.

    Build it before the first forward pass: the copy is made then (a module that has stored a
    forward's intermediate tensors, as the spike penalty's quantizers do, cannot be deep-copied).
    """

    def __init__(self, model: nn.Module, decay: float, state: dict | None = None, steps: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.steps = steps
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        if state is not None:  # resumed: the saved average (a compact checkpoint's float16 widens back)
            self.model.load_state_dict(state)
        self.state = self.model.state_dict()  # the copy's own tensors: updating them updates the copy

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = average_decay(self.decay, self.steps)
        for k, v in model.state_dict().items():
            avg = self.state[k]
            if avg.is_floating_point():
                avg.mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                avg.copy_(v)
