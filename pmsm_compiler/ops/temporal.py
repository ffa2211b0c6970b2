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
``pmsm_compiler.passes.wrap_nonlinear``); this module holds the op classification, a numpy
reference, and what a wrapper costs: :func:`dense_ops` and :func:`bookkeeping_ops`.

Dense operations (what a chip computes every step, unlike the synaptic operations that spikes drive)
-----------------------------------------------------------------------------------------------------
One operation is one multiply-accumulate, or one elementwise add, multiply, divide, comparison or
transcendental function (exp, log, erf, tanh, √, a power). Per sample and step, with n the elements
of the op's data input (input 0), n_out those of its output:

- MatMul of two activations, [.., M, K] × [.., K, P]: n_out·K MACs (M·K·P per matrix); a MatMul
  with a constant operand, x·W or W·x, is a synaptic layer, not a wrapper;
- Softmax over rows of D: 5 per element (max, subtract, exp, sum, divide);
- LogSoftmax: 5 per element (max, subtract, exp, sum, subtract) + 1 per row (log);
- LayerNormalization over rows of D (the axes from ``axis`` on): 6 per element (sum for the mean,
  subtract it, square, sum for the variance, multiply by 1/σ, multiply by γ) + 1 with a bias (add β),
  + 5 per row (mean ÷D, variance ÷D, +ε, √, reciprocal);
- MaxPool: n_out·(kernel elements − 1) comparisons; GlobalMaxPool, ReduceMax, ReduceMin, ReduceSum:
  n − n_out comparisons or additions; ReduceMean: those + n_out divisions; ReduceL1: those + n
  absolute values;
- elementwise ops: n_out × ``ELEMENTWISE_OPS[op]`` (Gelu with approximate="tanh": ``GELU_TANH_OPS``);
  Mul, Div, Max, Min, Pow: n_out per operand after the first; Clip: n_out per bound given.

The wrapper's own bookkeeping (:func:`bookkeeping_ops`) adds, per step from t = 2 on, one addition
per element of each time-varying input (S_t = S_{t−1} + x_t) and one subtraction per output element
(F_t − F_{t−1}); the general form also one division per input element (S_t/t) and one
multiplication per output element (t·f). At t = 1 the wrapper is f itself (S_1 = x, F_0 = 0; the
runtime bypasses it), so a run of T steps costs T·dense + (T − 1)·bookkeeping
(:func:`wrapper_ops`).
"""

from __future__ import annotations

import numpy as np

# f(c·x) = c·f(x) for c > 0, single time-varying input (PRelu: its slope a constant).
HOMOGENEOUS_OPS = {"MaxPool", "GlobalMaxPool", "Relu", "ReduceMax", "ReduceMin", "LeakyRelu", "PRelu"}
# Non-linear ops handled with the general form (need the time input).
GENERAL_OPS = {
    "Softmax", "LogSoftmax", "LayerNormalization", "Gelu", "Erf", "Sigmoid", "Tanh", "Sqrt", "Pow", "Exp",
    "Log", "Reciprocal", "Div", "Mul", "MatMul", "HardSigmoid", "HardSwish", "Softplus", "Abs", "Max", "Min",
    "ReduceMean", "ReduceSum", "ReduceL1", "Clip", "Elu", "Selu", "Celu", "Mish", "Softsign", "ThresholdedRelu",
}


#: Comparisons on spike traffic (``REAL_OPS``' Less, Greater, Equal, GreaterOrEqual, LessOrEqual), and
#: And/Or/Xor/Not of their masks, have boolean outputs, which no wrapper can average; with the op
#: that makes numbers of the mask again (a Where that selects by it, a Cast to float) they are one
#: function of numbers, f(x, a, b) = Where(x > c, a, b), Cast((x > c) & (x < d)), ..., and that
#: function is wrapped (general form). ``wrap_nonlinear`` makes each such reader, with the ops of its
#: mask, a model-local function in this domain.
REGION_DOMAIN = "pmsm.region"
COMPARISON_OPS = frozenset({"Less", "Greater", "Equal", "GreaterOrEqual", "LessOrEqual"})
LOGICAL_OPS = frozenset({"And", "Or", "Xor", "Not"})
MASK_OPS = COMPARISON_OPS | LOGICAL_OPS


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


#: Dense operations per output element of a wrapped elementwise op (module docstring).
ELEMENTWISE_OPS = {
    "Relu": 1,  # max(x, 0)
    "LeakyRelu": 2,  # compare, multiply
    "Abs": 1,
    "Sigmoid": 3,  # exp(−x), +1, divide
    "Tanh": 1, "Erf": 1, "Exp": 1, "Log": 1, "Sqrt": 1, "Reciprocal": 1,
    "Softplus": 3,  # exp, +1, log
    "HardSigmoid": 4,  # ·α, +β, min 1, max 0
    "HardSwish": 5,  # HardSigmoid(x) with α = 1/6, β = ½, times x
    "Gelu": 5,  # x/√2, erf, +1, ·x, ·½
    "PRelu": 2,  # compare, multiply by the slope
    "ThresholdedRelu": 2,  # compare with α, select
    "Softsign": 3,  # |x|, +1, divide
    "Elu": 4,  # compare, exp, −1, ·α
    "Selu": 5,  # compare, exp, ·α, −α, ·γ
    "Celu": 6,  # x/α, exp, −1, ·α, min 0, + max(x, 0)
    "Mish": 5,  # exp, +1, log (softplus), tanh, ·x
}
GELU_TANH_OPS = 9  # x·x·x (2), ·0.044715, +x, ·√(2/π), tanh, +1, ·x, ·½
#: one per output element and operand after the first
VARIADIC_OPS = frozenset({"Mul", "Div", "Max", "Min", "Pow"})
SOFTMAX_OPS_PER_ELEMENT = 5  # max, subtract, exp, sum, divide
LOG_SOFTMAX_OPS_PER_ELEMENT, LOG_SOFTMAX_OPS_PER_ROW = 5, 1  # max, subtract, exp, sum, subtract; log
LAYER_NORM_OPS_PER_ELEMENT, LAYER_NORM_OPS_PER_ROW = 6, 5  # (+1 per element with a bias)


def per_sample_dims(shape) -> tuple | None:
    """The dims after the batch axis as ints, or None when unknown (the one definition; the passes'
    ``graph_utils.static_shape`` reads a tensor's shape through it)."""
    if shape is None or len(shape) == 0:
        return None
    dims = shape[1:]
    if all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
        return tuple(int(d) for d in dims)
    return None


def dense_ops(op: str, attrs: dict, data_shape, out_shape, inputs_given: list) -> int | None:
    """Dense operations per sample and step of wrapped op ``op`` (the module docstring's formulas).

    ``data_shape``: the full shape (batch axis first) of the op's input 0; ``out_shape``: of its
    output; ``inputs_given``: which of its inputs are present (bias, bounds, operands). None when a
    shape it needs is not static, or for an op without a formula."""
    out = per_sample_dims(out_shape)
    if out is None:
        return None
    n_out = int(np.prod(out, dtype=np.int64))
    given = sum(bool(g) for g in inputs_given)
    if op in ELEMENTWISE_OPS:
        if op == "Gelu" and attrs.get("approximate", "none") == "tanh":
            return n_out * GELU_TANH_OPS
        return n_out * ELEMENTWISE_OPS[op]
    if op in VARIADIC_OPS:
        return n_out * (given - 1)
    if op == "Clip":
        return n_out * sum(bool(g) for g in inputs_given[1:3])
    if op == "MatMul":
        k = data_shape[-1] if data_shape else None
        return n_out * int(k) if isinstance(k, (int, np.integer)) and k > 0 else None
    data = per_sample_dims(data_shape)
    if data is None:
        return None
    n = int(np.prod(data, dtype=np.int64))
    if op == "Softmax":
        return SOFTMAX_OPS_PER_ELEMENT * n
    if op in ("LogSoftmax", "LayerNormalization"):
        axis = int(attrs.get("axis", -1)) % len(data_shape)
        if axis == 0:
            return None  # rows across the batch: no per-sample count
        # LogSoftmax: rows along one axis; LayerNormalization: over every axis from ``axis`` on
        row = int(data_shape[axis]) if op == "LogSoftmax" else int(np.prod(data_shape[axis:], dtype=np.int64))
        rows = n // row
        if op == "LogSoftmax":
            return LOG_SOFTMAX_OPS_PER_ELEMENT * n + LOG_SOFTMAX_OPS_PER_ROW * rows
        bias = len(inputs_given) > 2 and bool(inputs_given[2])
        return (LAYER_NORM_OPS_PER_ELEMENT + bias) * n + LAYER_NORM_OPS_PER_ROW * rows
    if op == "MaxPool":
        return n_out * (int(np.prod(attrs["kernel_shape"], dtype=np.int64)) - 1)
    if op in ("GlobalMaxPool", "ReduceMax", "ReduceMin", "ReduceSum"):
        return n - n_out
    if op == "ReduceMean":
        return (n - n_out) + n_out  # additions, then one division per output element
    if op == "ReduceL1":
        return n + (n - n_out)  # an absolute value per element, then the additions
    return None


def region_dense_ops(out_shape, ops: int) -> int | None:
    """Dense operations per sample and step of a mask region (``REGION_DOMAIN``): ``ops`` (the ops of
    its function: comparisons, logical ops, the select or convert) per output element."""
    out = per_sample_dims(out_shape)
    return None if out is None else ops * int(np.prod(out, dtype=np.int64))


def bookkeeping_ops(homogeneous: bool, input_sizes: list, out_size: int) -> int:
    """The wrapper's own operations per sample and step from t = 2 on: accumulate (and ÷t) each
    time-varying input, (×t and) take the difference of the output (module docstring)."""
    per = 1 if homogeneous else 2
    return per * (sum(input_sizes) + out_size)


def wrapper_ops(timesteps: int, dense: int, bookkeeping: int) -> int:
    """Operations of a wrapper over a run of T steps: f alone at t = 1, f and the bookkeeping at
    each later step, T·dense + (T − 1)·bookkeeping."""
    return timesteps * dense + (timesteps - 1) * bookkeeping
