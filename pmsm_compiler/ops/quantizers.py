"""ANN quantizers ``pmsm::PQA`` and ``pmsm::QCFS`` as ONNX functions.

PQA (paper Eq. 2), attributes L (int), alpha, beta (floats, fractions of λ), inputs X, lam::

    s = λ / L
    k = Clip( Floor( X / s + 0.5 ), round(αL), round(βL) )
    Y = k · s

QCFS (Bu et al. 2022), attribute L: the same with the clip range [0, L].

The body's op order (Div, Add 0.5, Floor, Clip, Mul) is the one the PyTorch module uses and the
one the AIF neuron's first step repeats (u = 0.5 + X/θ, Floor, Clip), so the three agree bit for
bit on the same input. The bounds are computed as Round(α·L) so that a float attribute such as
α = −1/3 with L = 3 still gives the integer level −1.

Both bodies come from one template, as the neuron bodies in ``neurons`` do: quantize, clip to the
quantizer's range (the only part that differs), dequantize (tests/test_ops_quantizers.py holds the
expected bodies node for node).
"""

from __future__ import annotations

from . import parse_function

# Each quantizer is composed of three parts: quantize (level = Floor(X/s + ½), s = λ/L), the clip
# range (its own nodes and the names of its bounds) and dequantize (Y = k·s).
_QUANTIZE = """
    L_int = Constant <value_int: int = @L> ()
    L_f = Cast <to = 1> (L_int)
    step = Div (lam, L_f)
    u = Div (X, step)
    half = Constant <value_float = 0.5> ()
    shifted = Add (u, half)
    level = Floor (shifted)"""
# name -> (attributes, nodes computing the bounds, lower bound, upper bound)
_CLIP_RANGE = {
    "PQA": (" <L, alpha, beta>", """
    alpha_f = Constant <value_float: float = @alpha> ()
    beta_f = Constant <value_float: float = @beta> ()
    k_min_raw = Mul (alpha_f, L_f)
    k_min = Round (k_min_raw)
    k_max_raw = Mul (beta_f, L_f)
    k_max = Round (k_max_raw)""", "k_min", "k_max"),
    "QCFS": (" <L>", """
    zero = Constant <value_float = 0.0> ()""", "zero", "L_f"),
}


def _quantizer_body(name: str) -> str:
    """quantize → clip to the quantizer's range → dequantize."""
    attrs, bounds, lo, hi = _CLIP_RANGE[name]
    return (f"{name}{attrs} (X, lam) => (Y)\n{{{_QUANTIZE}{bounds}\n"
            f"    k = Clip (level, {lo}, {hi})\n    Y = Mul (k, step)\n}}\n")


QUANTIZER_OPS = ("PQA", "QCFS")
PQA_BODY = _quantizer_body("PQA")
QCFS_BODY = _quantizer_body("QCFS")


def pqa_function():
    return parse_function(PQA_BODY)


def qcfs_function():
    return parse_function(QCFS_BODY)


def quantizer_functions():
    return [parse_function(_quantizer_body(op)) for op in QUANTIZER_OPS]
