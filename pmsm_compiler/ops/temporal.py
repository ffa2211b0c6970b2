"""Stateful wrapper that makes a non-linear op consistent over time (rate coding).

For an op f that is not linear in its spiking input (MaxPool, Softmax, LayerNorm, GELU, a
product of two activations, ...), the wrapper emits at step t

    S_t   = S_{t−1} + x_t                    running input sum (one per time-varying input)
    F_t   = t · f(S_t / t)                   t times f of the time-averaged input
    out_t = F_t − F_{t−1}                    so that (1/t)·Σ_{τ≤t} out_τ = f(x̄_t)

with S_0 = 0, F_0 = 0. The time-averaged output therefore equals f applied to the time-averaged
input at every t; at t = 1 it is f(x) exactly (S_1 = x, F_1 = f(x), out_1 = f(x) − 0).
For positively homogeneous f of degree 1 (MaxPool, ReLU: f(c·x) = c·f(x), c > 0) the form
simplifies to F_t = f(S_t), needs no time input, and keeps integer spike counts integral, which
the folded (integer-traffic) compilation relies on.

The wrapper is emitted as plain ONNX nodes around the original op (see
``pmsm_compiler.passes.wrap_nonlinear``); this module holds the op classification and a numpy
reference.
"""

from __future__ import annotations

import numpy as np

# f(c·x) = c·f(x) for c > 0, single time-varying input.
HOMOGENEOUS_OPS = {"MaxPool", "GlobalMaxPool", "Relu", "ReduceMax", "ReduceMin", "LeakyRelu"}
# Non-linear ops handled with the general form (need the time input).
GENERAL_OPS = {
    "Softmax", "LogSoftmax", "LayerNormalization", "Gelu", "Erf", "Sigmoid", "Tanh", "Sqrt", "Pow", "Exp",
    "Log", "Reciprocal", "Div", "Mul", "MatMul", "HardSigmoid", "HardSwish", "Softplus", "Abs", "Max", "Min",
    "ReduceMean", "ReduceSum", "Clip",
}


class TemporalWrapper:
    """numpy reference of the wrapper for f of one or more inputs."""

    def __init__(self, f, homogeneous: bool = False):
        self.f, self.homogeneous = f, homogeneous
        self.sums = None
        self.prev = 0.0
        self.t = 0

    def step(self, *inputs):
        self.t += 1
        self.sums = list(inputs) if self.sums is None else [s + x for s, x in zip(self.sums, inputs)]
        if self.homogeneous:
            cumulative = self.f(*self.sums)
        else:
            t = np.float32(self.t)
            cumulative = t * self.f(*[s / t for s in self.sums])
        out = cumulative - self.prev
        self.prev = cumulative
        return out
