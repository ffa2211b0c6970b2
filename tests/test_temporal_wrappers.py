"""Every temporal wrapper keeps rate coding's contract at every step, on any integer spike train.

For a non-linear op f on spike traffic the wrapper's outputs o_τ must satisfy, after every step t,

    (1/t)·Σ_{τ≤t} o_τ = f((1/t)·Σ_{τ≤t} x_τ)            (running mean out = f(running mean in))

for ANY spike trains x_τ = k_τ·θ (``pmsm_compiler.ops.temporal``), not only those a constant input
makes. Each op the compiler wraps (``ops.supported.WRAPPED_OPS``: a new one without a case here fails
``test_every_wrapped_op_has_a_case``) is compiled in a graph x → PQA neuron (k ∈ [−4, 4], θ = 3.1/4)
→ [two operands by Gather] → f → y, then driven step by step through the runtime's own step graphs
(``SNNSession.session_for``: the first-step bypass, the fused neuron kernels) with x_t = k_t·θ for
random integers k_t, so that the neuron emits exactly k_t (checked), over t = 1..16, three seeds, both
compile modes. The reference is f in float64 on the exact mean θ·Σk/t.

Tolerance (absolute, on the max over the tensor at step t): a float32 error bound from the values,

    tol_t = C·u·[(t/2 + 2)·g·‖x‖ + n_f·(g·‖m‖ + ‖f(m)‖) + ‖f(m)‖ + max_{τ≤t}‖o_τ‖],   u = 2⁻²⁴, C = 2

with m the exact mean input, ‖x‖ the largest |k_τ·θ| so far and g a bound of f's derivative
(∞-norm) on the data, computed from the values per case (1 for ReLU/max-like ops, e^max for Exp,
1/min² for Reciprocal, K·(‖a‖ + ‖b‖) for a MatMul over K, (2 + √D)·‖γ‖/σ_min for LayerNorm over D, ...):

- the wrapper's input mean: each k·θ rounds (½u·|x|), the running sum S_τ (|S_τ| ≤ τ·‖x‖) rounds
  once per step, S_t/t once: together at most (t/2 + 2)·u·‖x‖, which f turns into g times as much;
- f's own float32 evaluation: n_f roundings on values of size ‖f‖ or g·‖m‖ (1 for exactly rounded
  ops, a few for onnxruntime's approximated transcendental kernels, the length of a reduction);
- F_t = t·f(S_t/t) rounds once (u·‖f‖ on the mean), and each difference o_τ = F_τ − F_{τ−1} once:
  the F's errors telescope, the differences leave at most u·max‖o‖ on the mean.

C = 2 is the margin over this first-order bound; the observed errors are 1-11 % of it on these cases,
and 10⁴ to 10⁶ times below what a broken wrapper does: ``test_broken_wrappers_are_caught`` mutates a
compiled wrapper (÷(t+1) instead of ÷t, one input's history forgotten, the ×t or the previous output
dropped) and requires the same check to fail from t = 2 on. (÷(t+1) is no mutant for LayerNorm:
LN(c·x) = LN(x) for c > 0 up to ε, so it stays within the bound there.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.ops.supported import WRAPPED_OPS
from pmsm_compiler.ops.temporal import HOMOGENEOUS_OPS, MASK_OPS
from pmsm_compiler.runtime import SNNSession

OPSET = 20
STEPS = 16
SEEDS = (0, 1, 2)
BATCH = 3
L, ALPHA, BETA, LAM = 4, -1.0, 1.0, 3.1  # PQA: k ∈ [αL, βL] = [−4, 4], θ = λ/L
K_MIN, K_MAX = int(ALPHA * L), int(BETA * L)
U = 2.0 ** -24  # float32 unit roundoff
C = 2.0

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _f(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _i64(name, value):
    return numpy_helper.from_array(np.asarray(value, np.int64), name)


def _node(op, inputs, output="y", **attrs):
    return helper.make_node(op, inputs, [output], name=f"op_{op}_{output}", **attrs)


def _inf(m):
    return float(np.abs(m).max())


@dataclass
class Case:
    """One wrapped op: its nodes from the neuron output "a" [N, *shape] to "y", the float64 reference
    f of the mean neuron output m, and g(m) (a bound of f's derivative, ∞-norm, on the data)."""

    name: str
    ops: tuple  # the wrapper ops the compile must emit, in graph order (empty: linear, no wrapper)
    shape: tuple  # per-sample shape of the neuron layer
    nodes: list
    ref: object
    gain: object
    n_f: int = 1
    low: object = K_MIN  # spike counts drawn in [low, high] (per element, broadcast to shape)
    high: object = K_MAX
    inits: list = field(default_factory=list)

    @property
    def homogeneous(self):
        """Which of the wrappers take the positively homogeneous form (one time-varying input)."""
        return [op in HOMOGENEOUS_OPS for op in self.ops]


def unary(op, ref, gain, n_f=1, shape=(2, 3), low=K_MIN, **attrs):
    name = op + (f"({', '.join(f'{k}={v}' for k, v in attrs.items())})" if attrs else "")
    return Case(name, (op,), shape, [_node(op, ["a"], **attrs)], ref, gain, n_f, low)


def binary(name, op, nodes, ref, gain, n_f=1, shape=(2, 2, 3), low=K_MIN, inits=()):
    """Two time-varying operands a0 = a[:, 0], a1 = a[:, 1] (Gather: linear, not wrapped)."""
    gathers = [helper.make_node("Gather", ["a", f"i{j}"], [f"a{j}"], name=f"gather{j}", axis=1) for j in (0, 1)]
    return Case(name, (op,), shape, gathers + nodes, lambda m: ref(m[:, 0], m[:, 1]),
                lambda m: gain(m[:, 0], m[:, 1]), n_f, low, K_MAX, [_i64("i0", 0), _i64("i1", 1), *inits])


def with_const(name, op, const, ref, gain, n_f=1, low=K_MIN, first=False):
    """f(a, c) (or f(c, a)) with a constant operand: the op reads real values, so it is wrapped."""
    inputs = ["c", "a"] if first else ["a", "c"]
    return Case(name, (op,), (2, 3), [_node(op, inputs)], ref, gain, n_f, low, K_MAX, [_f("c", const)])


def reduce(op, ref, gain, ops=None, n_f=1):
    return Case(op, (op,) if ops is None else ops, (3, 5), [_node(op, ["a", "axes"], keepdims=1)], ref, gain, n_f,
                inits=[_i64("axes", [-1])])


def gelu(x):
    return x * 0.5 * (1 + _erf(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(x):
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def maxpool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


LN_D = 8
LN_GAMMA = np.random.default_rng(7).uniform(0.5, 1.5, LN_D).astype(np.float32)
LN_BETA = np.random.default_rng(8).uniform(-0.5, 0.5, LN_D).astype(np.float32)
LN_EPS = 1e-5


def layer_norm(x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * LN_GAMMA.astype(np.float64) + LN_BETA.astype(np.float64)


def layer_norm_gain(x):
    sigma = float(np.sqrt(x.var(-1) + LN_EPS).min())
    return (2 + math.sqrt(LN_D)) * float(np.abs(LN_GAMMA).max()) / sigma


PRELU_SLOPE = np.array([[0.1], [0.3]], np.float32)  # [channels, 1]: broadcast over the last axis
SELU_ALPHA, SELU_GAMMA = 1.6732632423543772, 1.0507009873554805  # ONNX's defaults
CELU_ALPHA = 0.7
MISH_MAX_SLOPE = 1.1  # max of d/dx x·tanh(softplus(x)) is 1.0998
THRESHOLD = 1.0
GELU_MAX_SLOPE = 1.13  # max of Φ(x) + x·φ(x) is 1.1289 (the tanh form's is the same to 3 digits)
HARD_SIGMOID_ALPHA = 0.2
CLIP_LO, CLIP_HI = -1.2, 2.0
POW_C = 2.0
CONST = 0.4
NUMERATOR = 1.7
SQRT2 = math.sqrt(2)

CASES = [
    # positively homogeneous (F_t = f(S_t): no step index)
    unary("Relu", lambda m: np.maximum(m, 0), lambda m: 1),
    unary("LeakyRelu", lambda m: np.where(m >= 0, m, 0.1 * m), lambda m: 1, alpha=0.1),
    Case("MaxPool", ("MaxPool",), (2, 4, 4), [_node("MaxPool", ["a"], kernel_shape=[2, 2], strides=[2, 2])],
         maxpool2, lambda m: 1),
    Case("GlobalMaxPool", ("GlobalMaxPool",), (2, 4, 4), [_node("GlobalMaxPool", ["a"])],
         lambda m: m.max(axis=(2, 3), keepdims=True), lambda m: 1),
    reduce("ReduceMax", lambda m: m.max(-1, keepdims=True), lambda m: 1),
    reduce("ReduceL1", lambda m: np.abs(m).sum(-1, keepdims=True), lambda m: 5, n_f=5),
    reduce("ReduceMin", lambda m: m.min(-1, keepdims=True), lambda m: 1),
    Case("PRelu", ("PRelu",), (2, 3), [_node("PRelu", ["a", "slope"])],
         lambda m: np.where(m >= 0, m, PRELU_SLOPE.astype(np.float64) * m), lambda m: 1,
         inits=[_f("slope", PRELU_SLOPE)]),  # one slope per channel
    # general form (F_t = t·f(S_t/t))
    unary("Abs", np.abs, lambda m: 1),
    unary("Sigmoid", lambda m: 1 / (1 + np.exp(-m)), lambda m: 0.25, n_f=4),
    unary("Tanh", np.tanh, lambda m: 1, n_f=4),
    unary("Erf", _erf, lambda m: 2 / math.sqrt(math.pi), n_f=4),
    unary("Gelu", gelu, lambda m: GELU_MAX_SLOPE, n_f=6),
    unary("Gelu", gelu_tanh, lambda m: GELU_MAX_SLOPE, n_f=8, approximate="tanh"),
    unary("Exp", np.exp, lambda m: math.exp(m.max()), n_f=4),
    unary("Softplus", lambda m: np.logaddexp(0, m), lambda m: 1, n_f=4),
    unary("HardSigmoid", lambda m: np.clip(HARD_SIGMOID_ALPHA * m + 0.5, 0, 1), lambda m: HARD_SIGMOID_ALPHA, n_f=2,
          alpha=HARD_SIGMOID_ALPHA, beta=0.5),
    unary("HardSwish", lambda m: m * np.clip(m / 6 + 0.5, 0, 1), lambda m: 1.5, n_f=4),
    unary("Elu", lambda m: np.where(m > 0, m, np.expm1(m)), lambda m: 1, n_f=4),
    unary("Selu", lambda m: SELU_GAMMA * np.where(m > 0, m, SELU_ALPHA * np.expm1(m)),
          lambda m: SELU_GAMMA * SELU_ALPHA, n_f=5),
    unary("Celu", lambda m: np.maximum(m, 0) + np.minimum(0, CELU_ALPHA * np.expm1(m / CELU_ALPHA)), lambda m: 1,
          n_f=5, alpha=CELU_ALPHA),
    unary("Mish", lambda m: m * np.tanh(np.logaddexp(0, m)), lambda m: MISH_MAX_SLOPE, n_f=6),
    unary("Softsign", lambda m: m / (1 + np.abs(m)), lambda m: 1, n_f=3),
    # a step at α: no mean input θ·j/t (t <= STEPS) comes within rounding of it, so no flip
    unary("ThresholdedRelu", lambda m: np.where(m > THRESHOLD, m, 0), lambda m: 1, alpha=THRESHOLD),
    unary("Sqrt", np.sqrt, lambda m: 0.5 / math.sqrt(m.min()), low=1),
    unary("Log", np.log, lambda m: 1 / m.min(), n_f=4, low=1),
    unary("Reciprocal", lambda m: 1 / m, lambda m: 1 / m.min() ** 2, low=1),
    Case("Clip", ("Clip",), (2, 3), [_node("Clip", ["a", "lo", "hi"])], lambda m: np.clip(m, CLIP_LO, CLIP_HI),
         lambda m: 1, inits=[_f("lo", CLIP_LO), _f("hi", CLIP_HI)]),
    with_const("Pow(a, 2)", "Pow", POW_C, lambda m: m ** POW_C, lambda m: POW_C * _inf(m), n_f=4),
    with_const("Max(a, c)", "Max", CONST, lambda m: np.maximum(m, CONST), lambda m: 1),
    with_const("Min(a, c)", "Min", CONST, lambda m: np.minimum(m, CONST), lambda m: 1),
    with_const("Div(c, a)", "Div", NUMERATOR, lambda m: NUMERATOR / m, lambda m: NUMERATOR / m.min() ** 2,
               low=1, first=True),
    Case("Softmax", ("Softmax",), (3, 5), [_node("Softmax", ["a"], axis=-1)], softmax, lambda m: 1, n_f=8),
    Case("LogSoftmax", ("LogSoftmax",), (3, 5), [_node("LogSoftmax", ["a"], axis=-1)], log_softmax, lambda m: 2,
         n_f=8),
    Case("LayerNormalization", ("LayerNormalization",), (3, LN_D),
         [_node("LayerNormalization", ["a", "gamma", "beta"], axis=-1, epsilon=LN_EPS)], layer_norm, layer_norm_gain,
         n_f=2 * LN_D, inits=[_f("gamma", LN_GAMMA), _f("beta", LN_BETA)]),
    # two time-varying operands
    binary("Mul(a, b)", "Mul", [_node("Mul", ["a0", "a1"])], lambda a, b: a * b,
           lambda a, b: _inf(a) + _inf(b)),
    binary("Div(a, b)", "Div", [_node("Div", ["a0", "a1"])], lambda a, b: a / b,
           lambda a, b: 1 / b.min() + _inf(a) / b.min() ** 2, low=np.array([K_MIN, 1]).reshape(2, 1, 1)),
    binary("Max(a, b)", "Max", [_node("Max", ["a0", "a1"])], np.maximum, lambda a, b: 1),
    binary("Min(a, b)", "Min", [_node("Min", ["a0", "a1"])], np.minimum, lambda a, b: 1),
    binary("Pow(a, b)", "Pow", [_node("Pow", ["a0", "a1"])], lambda a, b: a ** b,
           lambda a, b: _inf(b * a ** (b - 1)) + _inf(a ** b * np.log(a)), n_f=8,
           low=np.array([1, K_MIN]).reshape(2, 1, 1)),
    # q·kᵀ of attention: [3, 4] × [4, 3], K = 4
    binary("MatMul(a, b^T)", "MatMul",
           [helper.make_node("Transpose", ["a1"], ["a1t"], name="transpose", perm=[0, 2, 1]),
            _node("MatMul", ["a0", "a1t"])],
           lambda a, b: a @ np.swapaxes(b, 1, 2), lambda a, b: 4 * (_inf(a) + _inf(b)), n_f=4, shape=(2, 3, 4)),
    # an exporter's GELU: x·½·(1 + erf(x/√2)): an Erf wrapper, then x times it (two time-varying operands);
    # the running means compose through the linear ops between them
    Case("GELU as Erf", ("Erf", "Mul"), (2, 3),
         [helper.make_node("Div", ["a", "sqrt2"], ["s"], name="scale"), _node("Erf", ["s"], "e"),
          helper.make_node("Add", ["e", "one"], ["e1"], name="plus1"), _node("Mul", ["a", "e1"], "p"),
          helper.make_node("Mul", ["p", "half"], ["y"], name="half")],
         gelu, lambda m: GELU_MAX_SLOPE, n_f=8, inits=[_f("sqrt2", SQRT2), _f("one", 1.0), _f("half", 0.5)]),
    # comparisons of spikes with the op that makes numbers of their mask: one function of numbers
    # each (ops.temporal.REGION_DOMAIN). No running mean θ·j/t (t <= STEPS) comes within rounding of
    # a threshold here (0, 0.4, 0.5), so the steps of these functions stay put.
    Case("Where(a > 0, a, 0.1·a)", ("Greater_Where",), (2, 3),
         [helper.make_node("Greater", ["a", "zero"], ["m"], name="gt"),
          helper.make_node("Mul", ["a", "slope"], ["sa"], name="scaled"), _node("Where", ["m", "a", "sa"])],
         lambda m: np.where(m > 0, m, 0.1 * m), lambda m: 1, inits=[_f("zero", 0.0), _f("slope", 0.1)]),
    Case("Where(a < c, c, a)", ("Less_Where",), (2, 3),
         [helper.make_node("Less", ["a", "c"], ["m"], name="lt"), _node("Where", ["m", "c", "a"])],
         lambda m: np.maximum(m, CONST), lambda m: 1, inits=[_f("c", CONST)]),
    Case("a·Cast(a >= 0.5)", ("GreaterOrEqual_Cast", "Mul"), (2, 3),
         [helper.make_node("GreaterOrEqual", ["a", "half"], ["m"], name="ge"),
          helper.make_node("Cast", ["m"], ["mf"], name="mask", to=TensorProto.FLOAT), _node("Mul", ["a", "mf"])],
         lambda m: m * (m >= 0.5), lambda m: 1, inits=[_f("half", 0.5)]),
    # masks combined by logical ops: the comparisons, the And (or Not) and the Cast (or Where) in one function
    Case("a·Cast(a > -0.5 and a < 1.5)", ("Greater_Less_And_Cast", "Mul"), (2, 3),
         [helper.make_node("Greater", ["a", "lo"], ["above"], name="gt"),
          helper.make_node("Less", ["a", "hi"], ["below"], name="lt"),
          helper.make_node("And", ["above", "below"], ["inside"], name="and"),
          helper.make_node("Cast", ["inside"], ["mf"], name="mask", to=TensorProto.FLOAT), _node("Mul", ["a", "mf"])],
         lambda m: m * ((m > -0.5) & (m < 1.5)), lambda m: 1, inits=[_f("lo", -0.5), _f("hi", 1.5)]),
    Case("Where(not a > 0, 0.1·a, a)", ("Greater_Not_Where",), (2, 3),
         [helper.make_node("Greater", ["a", "zero"], ["m"], name="gt"), helper.make_node("Not", ["m"], ["n"], name="not"),
          helper.make_node("Mul", ["a", "slope"], ["sa"], name="scaled"), _node("Where", ["n", "sa", "a"])],
         lambda m: np.where(m > 0, m, 0.1 * m), lambda m: 1, inits=[_f("zero", 0.0), _f("slope", 0.1)]),
    # in GENERAL_OPS, but linear in their data input: never wrapped (the definition holds all the same)
    reduce("ReduceMean", lambda m: m.mean(-1, keepdims=True), lambda m: 1, ops=(), n_f=5),
    reduce("ReduceSum", lambda m: m.sum(-1, keepdims=True), lambda m: 5, ops=(), n_f=5),
]


def build(case: Case) -> onnx.ModelProto:
    """x [N, *shape] → PQA (the neuron) → a → case.nodes → y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *case.shape])
    out_shape = case.ref(np.ones((1, *case.shape))).shape[1:]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])
    nodes = [helper.make_node("PQA", ["x", "lam"], ["a"], name="act", domain="pmsm", L=L, alpha=ALPHA, beta=BETA),
             *case.nodes]
    graph = helper.make_graph(nodes, "g", [x], [y], [_f("lam", LAM), *case.inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


_compiled = {}


def compiled(case: Case, mode: str):
    key = (case.name, mode)
    if key not in _compiled:
        _compiled[key] = compile_model(build(case), mode=mode)
    return _compiled[key]


def spike_trains(case: Case, seed: int, steps: int = STEPS) -> np.ndarray:
    """int64 [steps, N, *shape]: k_t drawn uniformly in [low, high] per element and step."""
    rng = np.random.default_rng(seed)
    shape = (steps, BATCH, *case.shape)
    low, high = np.broadcast_to(case.low, case.shape), np.broadcast_to(case.high, case.shape)
    return (low + np.floor(rng.random(shape) * (high - low + 1))).astype(np.int64)


def drive(session: SNNSession, inputs):
    """The runtime's step graphs over a time-varying input: ``inputs[t−1]`` at step t, every state
    carried from step to step as ``run_batch`` carries it (step 1: the first-step variant with the
    wrappers bypassed). Yields each step's outputs, the neurons' spikes included."""
    info = session.info
    assert session.prologue is None  # nothing static to split off: the step reads x itself
    taps = tuple(layer.spike_tensor for layer in info.layers)
    states = {}
    for t, x in enumerate(inputs, start=1):
        step = session.session_for(first=t == 1, last=False, extra_outputs=taps)
        feeds = {session.input_name: x, **states}
        if info.time_input:
            feeds[info.time_input] = np.array([t], np.float32)
        wanted = {i.name for i in step.get_inputs()}
        out = dict(zip([o.name for o in step.get_outputs()],
                       step.run(None, {k: v for k, v in feeds.items() if k in wanted})))
        states = {s.input: out[s.output] for s in info.states}
        yield out


def check_running_means(case: Case, session: SNNSession, ks: np.ndarray) -> float:
    """Drive the spike trains ``ks`` [T, N, *shape] through the session; after every step t require
    |mean_{τ≤t} y_τ − f(θ·mean_{τ≤t} k_τ)| ≤ tol_t (module docstring). Returns the largest
    error / tolerance seen."""
    (layer,) = session.info.layers
    theta_in, theta_out = np.float32(layer.theta), float(np.float32(layer.theta_out))
    output = session.info.outputs[0]
    sum_k, sum_y, max_x, max_o, worst = 0, 0.0, 0.0, 0.0, 0.0
    for t, out in enumerate(drive(session, ks.astype(np.float32) * theta_in), start=1):
        # x_t = k_t·θ makes the neuron emit exactly k_t: m = ½ + k_t, floor k_t, u back to ½
        np.testing.assert_array_equal(out[layer.spike_tensor], ks[t - 1], err_msg=f"spikes at t={t}")
        sum_k = sum_k + ks[t - 1]
        y = out[output]
        sum_y = sum_y + y.astype(np.float64)
        max_o = max(max_o, _inf(y))
        max_x = max(max_x, _inf(ks[t - 1]) * theta_out)
        m = sum_k * theta_out / t
        ref = case.ref(m)
        g, f = case.gain(m), _inf(ref)
        err = _inf(sum_y / t - ref)
        tol = C * U * ((t / 2 + 2) * g * max_x + case.n_f * (g * _inf(m) + f) + f + max_o)
        assert err <= tol, f"{case.name}: at t={t} the running mean is off by {err:.3g} > {tol:.3g}"
        worst = max(worst, err / tol)
    return worst


# ------------------------------------------------------------------------------------------

def test_every_wrapped_op_has_a_case():
    """A newly supported non-linear op fails here until it has a case above."""
    covered = {op for case in CASES for op in case.ops} | {case.name for case in CASES if not case.ops}
    assert WRAPPED_OPS <= covered, f"no running-mean case for {sorted(WRAPPED_OPS - covered)}"
    regions = {op for case in CASES for op in case.ops if op.endswith(("_Where", "_Cast"))}
    assert all(set(r.split("_")[:-1]) <= MASK_OPS for r in regions)
    assert covered <= WRAPPED_OPS | regions


@pytest.mark.parametrize("mode", ["folded", "exact"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_running_mean_of_output_is_op_of_running_mean(case, mode):
    snn = compiled(case, mode)
    wrappers = snn.info.wrappers
    assert [w.op for w in wrappers] == list(case.ops)
    assert [w.homogeneous for w in wrappers] == case.homogeneous
    assert (snn.info.time_input is not None) == (not all(case.homogeneous))
    session = SNNSession(snn.model)
    for seed in SEEDS:
        check_running_means(case, session, spike_trains(case, seed))


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("Softmax", "MaxPool", "MatMul(a, b^T)")],
                         ids=lambda c: c.name)
def test_driver_is_the_runtime_loop(case):
    """Under rate coding (the same x every step) the driver above gives what ``run_batch`` gives,
    bit for bit: it runs the same step graphs with the same states."""
    snn = compiled(case, "folded")
    session = SNNSession(snn.model)
    x = spike_trains(case, 5, steps=1)[0].astype(np.float32) * np.float32(snn.info.layers[0].theta)
    ran = session.run_batch(x, 5, keep_outputs=True).outputs_by_t
    driven = [out[snn.info.outputs[0]] for out in drive(session, [x] * 5)]
    np.testing.assert_array_equal(ran, np.stack(driven))


# (dense ops, bookkeeping ops) per sample and step of each wrapper, by hand from the module docstring of
# ops.temporal: n = input elements, n_out = output elements; bookkeeping (n_in + n_out) for the homogeneous
# form, 2·(Σ n_in + n_out) for the general one
UNARY = (2 * 3, 2 * (6 + 6))  # (2, 3): 1 op per element; 24
DENSE = {
    # comparison regions: compare and select per element; the running sums of every time-varying input
    "Where(a > 0, a, 0.1·a)": (2 * 6, 2 * (6 + 6 + 6)),
    # folded: the Less reads a in real values, the Where selects a in spike units (and c/θ): two sums
    "Where(a < c, c, a)": {"exact": (2 * 6, 2 * (6 + 6)), "folded": (2 * 6, 2 * (6 + 6 + 6))},
    "a·Cast(a >= 0.5)": [(2 * 6, 2 * (6 + 6)), (6, 2 * (6 + 6 + 6))],  # the mask, then a times it
    "GELU as Erf": [(6, 24), (6, 36)],  # Erf, a·erf
    # 4 and 3 ops per element (two comparisons, And, Cast; Greater, Not, Where)
    "a·Cast(a > -0.5 and a < 1.5)": [(4 * 6, 2 * (6 + 6)), (6, 36)],
    "Where(not a > 0, 0.1·a, a)": (3 * 6, 2 * (6 + 6 + 6)),
    "Relu": (6, 12), "LeakyRelu(alpha=0.1)": (2 * 6, 12),
    "MaxPool": (8 * 3, 32 + 8),  # (2, 4, 4) → (2, 2, 2): 3 comparisons per output
    "GlobalMaxPool": (32 - 2, 32 + 2), "ReduceMax": (15 - 3, 15 + 3), "ReduceMin": (15 - 3, 15 + 3),
    "ReduceL1": (15 + 15 - 3, 2 * (15 + 3)),  # |x| per element, then the sums; the general form
    "Abs": UNARY, "Sigmoid": (3 * 6, 24), "Tanh": UNARY, "Erf": UNARY, "Gelu": (5 * 6, 24),
    "Gelu(approximate=tanh)": (9 * 6, 24), "Exp": UNARY, "Softplus": (3 * 6, 24),
    "HardSigmoid(alpha=0.2, beta=0.5)": (4 * 6, 24), "HardSwish": (5 * 6, 24),
    "PRelu": (2 * 6, 12), "Elu": (4 * 6, 24), "Selu": (5 * 6, 24), "Celu(alpha=0.7)": (6 * 6, 24),
    "Mish": (5 * 6, 24), "Softsign": (3 * 6, 24), "ThresholdedRelu(alpha=1.0)": (2 * 6, 24), "Sqrt": UNARY, "Log": UNARY,
    "Reciprocal": UNARY, "Clip": (2 * 6, 24), "Pow(a, 2)": UNARY, "Max(a, c)": UNARY, "Min(a, c)": UNARY,
    "Div(c, a)": UNARY,
    "Softmax": (5 * 15, 2 * (15 + 15)), "LogSoftmax": (5 * 15 + 3, 60),
    "LayerNormalization": (7 * 24 + 5 * 3, 2 * (24 + 24)),  # 3 rows of 8, with a bias
    "Mul(a, b)": (6, 2 * (6 + 6 + 6)), "Div(a, b)": (6, 36), "Max(a, b)": (6, 36), "Min(a, b)": (6, 36),
    "Pow(a, b)": (6, 36),
    "MatMul(a, b^T)": (9 * 4, 2 * (12 + 12 + 9)),  # [3, 4] × [4, 3]: 9 outputs × K = 4 MACs
}


def test_every_case_has_its_dense_ops():
    wrapped = [case.name for case in CASES if case.ops]
    assert sorted(DENSE) == sorted(wrapped)


@pytest.mark.parametrize("case", [c for c in CASES if c.ops], ids=lambda c: c.name)
def test_dense_ops_of_each_wrapper(case):
    """The compiler records what each wrapper computes every step, as the formulas say."""
    for mode in ("folded", "exact"):
        expected = DENSE[case.name]
        expected = expected[mode] if isinstance(expected, dict) else expected
        expected = [expected] if len(case.ops) == 1 else expected
        got = [(w.dense_ops, w.bookkeeping_ops) for w in compiled(case, mode).info.wrappers]
        assert got == expected, mode


# ------------------------------------------------------------------------------------------
# the check fails on a broken wrapper
# ------------------------------------------------------------------------------------------

def _wrapper_node(model, label, role):
    (node,) = [n for n in model.graph.node if n.name.startswith(f"{label}/{role}")]
    return node


def divide_by_t_plus_1(model, label):
    """The average takes S_t/(t + 1): an off-by-one step index."""
    node = _wrapper_node(model, label, "average0")
    model.graph.initializer.append(_f("mutant.one", [1.0]))
    # reads a graph input and a constant only: first in topological order
    model.graph.node.insert(0, helper.make_node("Add", [node.input[1], "mutant.one"], ["mutant.t1"], name="mutant"))
    node.input[1] = "mutant.t1"


def forget_history(index):
    def mutate(model, label):
        """S_t = x_t: input ``index``'s running sum forgets its past."""
        node = _wrapper_node(model, label, f"accumulate{index}")
        node.op_type, node.input[:] = "Identity", [node.input[1]]
    mutate.__name__ = f"forget_history_of_input_{index}"
    return mutate


def drop_times_t(model, label):
    """F_t = f(S_t/t): the cumulative output not scaled back by t."""
    node = _wrapper_node(model, label, "times_t")
    node.op_type, node.input[:] = "Identity", [node.input[0]]


def drop_previous(model, label):
    """out_t = F_t: the previous cumulative output not subtracted."""
    node = _wrapper_node(model, label, "difference")
    node.op_type, node.input[:] = "Identity", [node.input[0]]


MUTATIONS = [
    ("Softmax", divide_by_t_plus_1), ("Softmax", forget_history(0)), ("Softmax", drop_times_t),
    # not ÷(t + 1) for LayerNorm: LN(c·x) = LN(x) for c > 0 up to ε, so that off-by-one is (nearly) harmless there
    ("Softmax", drop_previous), ("LayerNormalization", forget_history(0)), ("LayerNormalization", drop_previous),
    ("MaxPool", forget_history(0)),
    ("MaxPool", drop_previous), ("MatMul(a, b^T)", forget_history(1)), ("MatMul(a, b^T)", divide_by_t_plus_1),
    ("Exp", drop_times_t),
]


@pytest.mark.parametrize("mode", ["folded", "exact"])
@pytest.mark.parametrize("name, mutate", MUTATIONS, ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_broken_wrappers_are_caught(name, mutate, mode):
    """The check above is not vacuous: each of these mutants breaks it (from t = 2 on: the first step
    bypasses the wrapper, so t = 1 still passes)."""
    case = next(c for c in CASES if c.name == name)
    snn = compiled(case, mode)
    model = onnx.ModelProto()
    model.CopyFrom(snn.model)
    mutate(model, snn.info.wrappers[0].name)
    onnx.checker.check_model(model)
    with pytest.raises(AssertionError, match=r"at t=\d+ the running mean is off") as info:
        check_running_means(case, SNNSession(model), spike_trains(case, 0))
    assert "at t=1 " not in str(info.value)
