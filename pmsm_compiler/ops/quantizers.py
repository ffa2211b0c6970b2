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
"""

from __future__ import annotations

from . import parse_function

PQA_BODY = """
PQA <L, alpha, beta> (X, lam) => (Y)
{
    L_int = Constant <value_int: int = @L> ()
    L_f = Cast <to = 1> (L_int)
    step = Div (lam, L_f)
    u = Div (X, step)
    half = Constant <value_float = 0.5> ()
    shifted = Add (u, half)
    level = Floor (shifted)
    alpha_f = Constant <value_float: float = @alpha> ()
    beta_f = Constant <value_float: float = @beta> ()
    k_min_raw = Mul (alpha_f, L_f)
    k_min = Round (k_min_raw)
    k_max_raw = Mul (beta_f, L_f)
    k_max = Round (k_max_raw)
    k = Clip (level, k_min, k_max)
    Y = Mul (k, step)
}
"""

QCFS_BODY = """
QCFS <L> (X, lam) => (Y)
{
    L_int = Constant <value_int: int = @L> ()
    L_f = Cast <to = 1> (L_int)
    step = Div (lam, L_f)
    u = Div (X, step)
    half = Constant <value_float = 0.5> ()
    shifted = Add (u, half)
    level = Floor (shifted)
    zero = Constant <value_float = 0.0> ()
    k = Clip (level, zero, L_f)
    Y = Mul (k, step)
}
"""


def pqa_function():
    return parse_function(PQA_BODY)


def qcfs_function():
    return parse_function(QCFS_BODY)


def quantizer_functions():
    return [pqa_function(), qcfs_function()]
