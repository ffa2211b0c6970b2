"""Spiking neurons in threshold units: ``pmsm::AIF`` (PMSM), ``pmsm::AIFHalfEven`` (PMSM for
sources that round half to even: QuantizeLinear) and ``pmsm::IF`` (QCFS baseline).

Both keep the membrane in threshold units, u = v/θ, so the threshold is 1 and the first step
repeats the quantizer's own float operations (onnx-findings.md, "Exactness at T=1"). A neuron is
composed of three parts, each a function below and a few nodes of the ONNX body:

    integrate   m(t) = u(t−1) + I(t)                     I = input current in threshold units
    fire        AIF: k(t) = clip(floor(m(t)), s_min, s_max)   signed multi-spike count
                IF:  k(t) = 1[m(t) ≥ 1]                       binary spike
    reset       u(t) = m(t) − k(t)                       soft reset (subtract what fired)

    u(0) = ½  (supplied by the runtime as a broadcast state tensor)

AIF with θ = λ/L, s_min = αL, s_max = βL and u(0) = ½ reproduces PQA at t = 1 exactly:
k(1) = clip(floor(½ + z/θ), αL, βL) = PQA level (equations.md §3.2). The output PSP is k·θ; in the
folded (hardware) form the θ's are absorbed into the weights and the neuron emits k itself.

AIFHalfEven is the AIF neuron for a source that rounds half to even (``QuantizeLinear``:
q = saturate(rint(x/s) + zp)). Its membrane starts at 0 instead of ½ and it fires the nearest
integer, ties to even (ONNX ``Round``):

    fire        AIFHalfEven: k(t) = clip(round_half_even(m(t)), s_min, s_max),   u(0) = 0

At t = 1, m = 0 + x/s = x/s exactly, so k(1) = clip(rint(x/s)) is QuantizeLinear's level bit for
bit, ties included. (The AIF form floor(½ + x/s) differs on ties, and adding ½ in float32 can
itself round a value just below a half up.) For T > 1 the two neurons have the same dynamics up
to the ½ offset of the membrane: the residual u stays in [−½, ½] instead of [0, 1).

IF with θ = λ (QCFS, Bu et al. 2022) emits at most one spike per step: at t = 1 it outputs
λ·1[z ≥ λ/2], a 1-bit code, which is why QCFS is lossy at the first timestep.
"""

from __future__ import annotations

import numpy as np

from . import parse_function

_CLIP_LEVEL = """
    lo_int = Constant <value_int: int = @s_min> ()
    hi_int = Constant <value_int: int = @s_max> ()
    lo = CastLike (lo_int, m)
    hi = CastLike (hi_int, m)
    K = Clip (level, lo, hi)"""
_FIRE = {
    "AIF": """
    level = Floor (m)""" + _CLIP_LEVEL,
    "AIFHalfEven": """
    level = Round (m)""" + _CLIP_LEVEL,
    "IF": """
    one = Constant <value_float = 1.0> ()
    one_t = CastLike (one, m)
    fired = GreaterOrEqual (m, one_t)
    K = CastLike (fired, m)""",
}
_ATTRS = {"AIF": " <s_min, s_max>", "AIFHalfEven": " <s_min, s_max>", "IF": ""}


def _neuron_body(kind: str, reset: bool) -> str:
    """integrate → fire → (soft reset). Without the reset (the ``*Final`` variants, for the last
    timestep, whose next membrane nobody reads) the body has no U_next: onnxruntime inlines a
    function's whole body, so an unused output would still be computed."""
    name = kind if reset else kind + "Final"
    outputs = "K, U_next" if reset else "K"
    tail = "\n    U_next = Sub (m, K)" if reset else ""
    return f"{name}{_ATTRS[kind]} (I, U) => ({outputs})\n{{\n    m = Add (U, I){_FIRE[kind]}{tail}\n}}\n"


NEURON_OPS = ("AIF", "AIFHalfEven", "IF")
AIF_BODY = _neuron_body("AIF", reset=True)
IF_BODY = _neuron_body("IF", reset=True)
AIF_FINAL_BODY = _neuron_body("AIF", reset=False)
IF_FINAL_BODY = _neuron_body("IF", reset=False)
FINAL_STEP_OPS = {op: op + "Final" for op in NEURON_OPS}

INITIAL_MEMBRANE = 0.5
#: u(0) per neuron op: ½ makes floor(½ + x/θ) round half up; the half-even neuron starts at 0.
INITIAL_MEMBRANES = {"AIF": INITIAL_MEMBRANE, "AIFHalfEven": 0.0, "IF": INITIAL_MEMBRANE}
#: The neuron op that reproduces a source's rounding of x/θ at t = 1.
AIF_OP_FOR_ROUNDING = {"half_up": "AIF", "half_even": "AIFHalfEven"}


def aif_function():
    return parse_function(AIF_BODY)


def if_function():
    return parse_function(IF_BODY)


def neuron_functions():
    return [parse_function(_neuron_body(op, reset=True)) for op in NEURON_OPS]


def final_step_functions():
    return [parse_function(_neuron_body(op, reset=False)) for op in NEURON_OPS]


# ----------------------------------------------------------------------------------------------
# numpy reference, part by part (used by tests and as an independent simulation)
# ----------------------------------------------------------------------------------------------

def integrate(u: np.ndarray, current: np.ndarray) -> np.ndarray:
    return u + current


def fire_multi(m: np.ndarray, s_min: int, s_max: int) -> np.ndarray:
    return np.clip(np.floor(m), s_min, s_max)


def fire_multi_half_even(m: np.ndarray, s_min: int, s_max: int) -> np.ndarray:
    return np.clip(np.rint(m), s_min, s_max)


def fire_binary(m: np.ndarray) -> np.ndarray:
    return (m >= 1).astype(m.dtype)


def soft_reset(m: np.ndarray, k: np.ndarray) -> np.ndarray:
    return m - k


class AIFNeuron:
    """Numpy AIF layer: ``step(current)`` returns the spike counts k (signed integers as floats)."""

    def __init__(self, s_min: int, s_max: int, dtype=np.float32):
        self.s_min, self.s_max, self.dtype = int(s_min), int(s_max), dtype
        self.u = None

    def reset(self):
        self.u = None

    def step(self, current: np.ndarray) -> np.ndarray:
        u = self.u if self.u is not None else self.dtype(INITIAL_MEMBRANE)
        m = integrate(u, current.astype(self.dtype, copy=False))
        k = fire_multi(m, self.s_min, self.s_max)
        self.u = soft_reset(m, k)
        return k


class AIFHalfEvenNeuron(AIFNeuron):
    """Numpy AIF layer for sources that round half to even (u(0) = 0, fire = rint)."""

    def step(self, current: np.ndarray) -> np.ndarray:
        u = self.u if self.u is not None else self.dtype(INITIAL_MEMBRANES["AIFHalfEven"])
        m = integrate(u, current.astype(self.dtype, copy=False))
        k = fire_multi_half_even(m, self.s_min, self.s_max)
        self.u = soft_reset(m, k)
        return k


class IFNeuron(AIFNeuron):
    """Numpy IF layer (QCFS): binary spikes, soft reset."""

    def __init__(self, dtype=np.float32):
        super().__init__(0, 1, dtype)

    def step(self, current: np.ndarray) -> np.ndarray:
        u = self.u if self.u is not None else self.dtype(INITIAL_MEMBRANE)
        m = integrate(u, current.astype(self.dtype, copy=False))
        k = fire_binary(m)
        self.u = soft_reset(m, k)
        return k
