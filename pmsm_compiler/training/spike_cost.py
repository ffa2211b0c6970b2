"""Differentiable spike costs of the quantized activations, to train PMSM networks that fire less.

At T = 1 a PQA layer's AIF neuron emits its level k = clip(floor(u + ½), αL, βL), u = x/s,
s = λ/L. Two counting rules price that (docs/report-schema.md):

    spikes   c(u) = |k|           the paper's Eq. 11 unit (a multi-spike of size k counts |k|)
    events   c(u) = 1[k ≠ 0]       one packet per firing neuron and step (polarity and count in it)

Both are integers: their derivative is 0 almost everywhere. The forward pass computes them
exactly; the backward pass uses a surrogate gradient, as surrogate-gradient SNN training does for
the spike function:

    spikes   ∂c/∂u = sign(u)                 everywhere, the gradient of |u|. Not masked to the
                                              clip range as the activation's STE is: a neuron at its
                                              lower cap (a large negative pre-activation, k = αL)
                                              pays |αL| every step, and only an unmasked gradient
                                              moves it back towards silence.
    events   ∂c/∂u = sign(u)·max(0, 1 − ||u| − ½|)
                                              a triangle of half-width 1 around the firing
                                              threshold |u| = ½ (SuperSpike-style).
    and, through s = λ/L, ∂u/∂λ = −u/λ for a neuron inside the clip range (0 outside, where k
    does not depend on λ).

``SpikeCost`` is a module-free helper: ``PQA``/``QCFS`` call it when their ``spike_cost``
attribute names a rule (``set_spike_cost``), and keep the batch's total in ``last_cost``;
``pmsm_compiler.training.trainer`` adds ``weight · Σ_layers last_cost / (batch · neurons)`` to the loss,
i.e. the weight times the mean cost per neuron and image.
"""

from __future__ import annotations

import torch

RULES = ("spikes", "events")


class SpikeCost(torch.autograd.Function):
    """Σ c(u) over the whole tensor (a 0-d tensor), with the surrogate gradients above."""

    @staticmethod
    def forward(ctx, x, lam, levels: int, k_min: int, k_max: int, rule: str):
        step = lam / levels
        u = x / step
        k = torch.floor(u + 0.5).clamp_(k_min, k_max)
        cost = k.abs_().sum() if rule == "spikes" else (k != 0).sum().to(x.dtype)
        ctx.save_for_backward(u, lam)
        ctx.rule, ctx.bounds, ctx.step = rule, (k_min, k_max), step
        return cost

    @staticmethod
    def backward(ctx, grad):
        u, lam = ctx.saved_tensors
        sign = torch.sign(u)
        if ctx.rule == "spikes":
            du = sign
        else:
            du = sign * torch.clamp(1 - (u.abs() - 0.5).abs(), min=0)
        grad_x = grad * du / ctx.step
        grad_lam = None
        if ctx.needs_input_grad[1]:
            lo, hi = ctx.bounds
            inside = (u >= lo) & (u <= hi)  # αL ≤ u ≤ βL
            grad_lam = (grad * torch.sum(du * u * inside) * (-1 / lam)).reshape(lam.shape)
        return grad_x, grad_lam, None, None, None, None


def _costed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that can record a spike cost: PQA / QCFS (they have the ``spike_cost`` slot).
    Found by that slot, not by class, so that the activations may import this module and not
    the other way round."""
    return [m for m in model.modules() if hasattr(m, "spike_cost") and hasattr(m, "last_neurons")]


def set_spike_cost(model: torch.nn.Module, rule: str | None) -> int:
    """Make every PQA / QCFS of ``model`` record its spike cost under ``rule`` (None: stop).
    Returns the number of layers."""
    if rule is not None and rule not in RULES:
        raise ValueError(f"spike cost rule must be one of {', '.join(RULES)}, got {rule!r}")
    layers = _costed_layers(model)
    for m in layers:
        m.spike_cost = rule
        m.last_cost = None
    return len(layers)


def collect_spike_cost(model: torch.nn.Module) -> tuple[torch.Tensor | None, int]:
    """(Σ of the layers' last costs, Σ of their neurons per image) from the last forward pass."""
    total, neurons = None, 0
    for m in _costed_layers(model):
        if getattr(m, "last_cost", None) is None:
            continue
        total = m.last_cost if total is None else total + m.last_cost
        neurons += m.last_neurons
    return total, neurons
