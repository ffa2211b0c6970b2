r"""Information-entropy analysis of PQA quantization (paper Eqs. 12-23).

All entropies are in **nats**; every ratio reported here is base-invariant.

Batch-norm output (Eqs. 12-14)
------------------------------
A BN output is modelled as ``z ~ N(0, 1)`` with density ``phi``.  Its differential entropy is::

    H_BN = -∫ phi(x) log phi(x) dx = ∫ phi(x) [½ log(2π) + x²/2] dx
         = ½ log(2π) + ½ = ½ log(2πe)  ≈ 1.4189 nats (2.0471 bits)

ReLU (Eqs. 17-19)
-----------------
For ``L -> ∞, λ -> ∞`` PQA/QA becomes ReLU; the output ``y = max(0, z)`` has the mixed density
``p(y) = ½ δ(y) + phi(y) 1[y > 0]`` and::

    H_ReLU = -½ log ½ - ∫_0^∞ phi(y) log phi(y) dy = ½ log 2 + ¼ log(2πe) ≈ 1.0560 nats

so ``H_ReLU / H_BN = 0.744`` (74.4 %).  The paper states "≈ 69 %"; that number does **not**
follow from a consistent computation.  It is reproduced exactly (0.690) only by a units slip:
the δ term and the ``¼ log 2π`` constant in bits but the ``x²/2`` term left in nats
(``(0.5 + ¼ log2(2π) + ¼) / 2.0471``; see :func:`relu_ratio_mixed_units`).  We report 0.744.

PQA (Eqs. 20-23)
----------------
PQA with ``L`` levels, range ``λ`` and clipping bounds ``α ≤ 0 < β`` maps ``z`` to the integer
``k = clip(⌊zL/λ + ½⌋, k_min, k_max)`` with ``k_min = αL``, ``k_max = βL``.  With ``c = λ/L``
(Eq. 23) and ``Φ`` the standard normal CDF, the clipped PMF (Eq. 21) is::

    P(k_min) = Φ((k_min + ½) c)
    P(k)     = Φ((k + ½) c) - Φ((k - ½) c)          k_min < k < k_max
    P(k_max) = 1 - Φ((k_max - ½) c)

and the (discrete Shannon) entropy (Eq. 22, with 0·log 0 = 0) is::

    H_PQA = -Σ_{k=k_min}^{k_max} P(k) log P(k)

The figure of merit is ``H_PQA / H_BN``.  Limits: for ``λ/L -> 0`` the mass splits ½/½ onto the
two clip levels, so the ratio tends to ``log 2 / H_BN = 0.4885``; for ``λ/L -> ∞`` all mass is
at ``k = 0`` and the ratio tends to 0.

Hyperparameter choice (grid search, paper Fig. 2)
-------------------------------------------------
The grid is ``α ∈ {-1/L, -2/L, …, -1}`` × ``β ∈ {1/L, …, 1}`` at fixed ``L, λ``.  The paper calls
a ratio below 1 "information loss", a ratio ≈ 1 "lossless" and a ratio above 1 "added noise".
The selection rule used here (:data:`RULE`):

1. minimise ``|ratio - 1|`` over the grid;
2. among the points whose ``|ratio - 1|`` is within ``TIE_TOL = 1e-3`` of that minimum, prefer the
   narrowest quantization range (smallest ``β - α``, i.e. fewest levels), then the larger ``β``,
   then the ``α`` closest to 0 — the cheapest range that reaches the lossless phase.

For ``L = λ = 8`` this rule picks ``(α, β) = (-0.25, 0.25)`` with ratio 0.998, **not** the paper's
``(-0.25, 1)`` (ratio 1.013): at ``α = -0.25`` every ``β ≥ 0.5`` gives 1.013, and ``β = 0.25`` is
closer to 1.  The paper's point is reproduced by the same rule restricted to ``β = 1`` (the ReLU /
QCFS upper bound, the protocol of the paper's Fig. 3(a): fix ``β = 1``, sweep ``α``); this is
reported as ``best_at_beta_1``, and the paper's point itself as ``paper_choice``.  Entropy alone
does not see that a small ``β`` clips large activations; the accuracy-driven choice of the paper
is therefore kept visible rather than overwritten.

Pure Python ``math`` + numpy; no scipy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Sequence

import numpy as np

from pmsm_compiler.defaults import PQA_ALPHA, PQA_BETA, PQA_LAMBDA, PQA_LEVELS
from pmsm_compiler.errors import InputError

__all__ = [
    "PAPER_CHOICE",
    "PAPER_RELU_RATIO",
    "RULE",
    "TIE_TOL",
    "GridResult",
    "grid_search",
    "h_bn",
    "h_pqa",
    "h_relu",
    "lambda_sweep",
    "pqa_pmf",
    "pqa_ratio",
    "relu_ratio",
    "relu_ratio_mixed_units",
]

#: The paper's stated H_ReLU / H_BN ("≈ 69 %"); not reproducible consistently (see module doc).
PAPER_RELU_RATIO = 0.69
#: The paper's chosen PQA clipping bounds for L = λ = 8 (Table 4).
PAPER_CHOICE = (PQA_ALPHA, PQA_BETA)
#: Tie tolerance on |ratio - 1| used by the grid-search selection rule.
TIE_TOL = 1e-3
#: Human-readable selection rule (printed by the CLI and stored in the JSON).
RULE = (
    "minimise |H_PQA/H_BN - 1| (ratio ~ 1 = lossless phase; < 1 loses information, > 1 adds "
    f"noise); among points within {TIE_TOL:g} of the minimum |ratio - 1|, prefer the narrowest "
    "range (smallest beta - alpha, fewest levels), then the larger beta, then alpha closest to 0"
)

_INT_TOL = 1e-9
_SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------------------------
# Gaussian helpers (erfc keeps both tails accurate)
# --------------------------------------------------------------------------------------------


def _phi_cdf(x: float) -> float:
    """Standard normal CDF Φ(x) = ½ (1 + erf(x/√2)), computed as ½ erfc(-x/√2)."""
    return 0.5 * math.erfc(-x / _SQRT2)


def _phi_sf(x: float) -> float:
    """Upper tail 1 - Φ(x) = ½ erfc(x/√2), accurate for large x."""
    return 0.5 * math.erfc(x / _SQRT2)


def _interval_mass(a: float, b: float) -> float:
    """Φ(b) - Φ(a) for a < b, using whichever tail avoids cancellation."""
    if a >= 0.0:
        return _phi_sf(a) - _phi_sf(b)
    return _phi_cdf(b) - _phi_cdf(a)


def _entropy(probs: np.ndarray) -> float:
    """-Σ p log p in nats with 0·log 0 = 0."""
    p = np.asarray(probs, dtype=float)
    p = p[p > 0.0]
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_levels(levels) -> int:
    if isinstance(levels, bool) or not isinstance(levels, Integral):
        if isinstance(levels, Real) and float(levels).is_integer():
            levels = int(levels)
        else:
            raise InputError(f"levels must be an integer >= 1, got {levels!r}")
    levels = int(levels)
    if levels < 1:
        raise InputError(f"levels must be an integer >= 1, got {levels}")
    return levels


def _check_lam(lam) -> float:
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise InputError(f"lam (λ) must be a positive finite number, got {lam!r}") from None
    if not math.isfinite(lam) or lam <= 0.0:
        raise InputError(f"lam (λ) must be a positive finite number, got {lam:g}")
    return lam


def _check_bounds(alpha, beta, levels: int) -> tuple[int, int]:
    try:
        alpha, beta = float(alpha), float(beta)
    except (TypeError, ValueError):
        raise InputError(f"alpha and beta must be numbers, got {alpha!r}, {beta!r}") from None
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise InputError(f"alpha and beta must be finite, got {alpha:g}, {beta:g}")
    if not (alpha <= 0.0 < beta):
        raise InputError(f"need alpha <= 0 < beta, got alpha={alpha:g}, beta={beta:g}")
    ks = []
    for name, v in (("alpha", alpha), ("beta", beta)):
        x = v * levels
        k = round(x)
        if abs(x - k) > _INT_TOL:
            raise InputError(
                f"{name}*L must be an integer (clip level on the L={levels} grid), "
                f"got {name}={v:g} -> {name}*L={x:g}"
            )
        ks.append(int(k))
    return ks[0], ks[1]


# --------------------------------------------------------------------------------------------
# Entropies
# --------------------------------------------------------------------------------------------


def h_bn() -> float:
    """Differential entropy of N(0, 1), Eq. 14: ½ log(2πe) ≈ 1.4189 nats."""
    return 0.5 * math.log(2.0 * math.pi * math.e)


def h_relu() -> float:
    """Entropy of ReLU(N(0, 1)), Eq. 19: ½ log 2 + ¼ log(2πe) ≈ 1.0560 nats.

    (Discrete part ½·δ contributes -½ log ½; the continuous half contributes ½ H_BN.)
    """
    return 0.5 * math.log(2.0) + 0.25 * math.log(2.0 * math.pi * math.e)


def relu_ratio() -> float:
    """H_ReLU / H_BN ≈ 0.744 (74.4 %).

    The paper states "≈ 69 %"; that does not follow from a consistent computation of Eq. 19 —
    it is the result of mixing bits and nats (see :func:`relu_ratio_mixed_units`).
    """
    return h_relu() / h_bn()


def relu_ratio_mixed_units() -> float:
    """The paper's 0.690, reproduced by the units slip (for documentation only; do not use).

    δ term (0.5 bit) and ¼·log2(2π) in bits, but the x²/2 term left in nats (¼ instead of
    ¼·log2 e), divided by the correct H_BN in bits.
    """
    h_bn_bits = h_bn() / math.log(2.0)
    return (0.5 + 0.25 * math.log2(2.0 * math.pi) + 0.25) / h_bn_bits


def pqa_pmf(alpha: float, beta: float, lam: float, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Clipped PQA PMF, Eq. 21.

    Returns ``(ks, probs)`` with ``ks = k_min … k_max`` (``k_min = αL``, ``k_max = βL``) and the
    probability of each integer level for ``z ~ N(0, 1)``.  Requires ``α ≤ 0 < β`` with ``αL`` and
    ``βL`` integers (within 1e-9), ``λ > 0`` and ``L ≥ 1``; raises :class:`InputError` otherwise.
    """
    levels = _check_levels(levels)
    lam = _check_lam(lam)
    k_min, k_max = _check_bounds(alpha, beta, levels)
    c = lam / levels
    ks = np.arange(k_min, k_max + 1)
    probs = np.empty(ks.shape, dtype=float)
    for i, k in enumerate(ks):
        if k == k_min:
            probs[i] = _phi_cdf((k + 0.5) * c)
        elif k == k_max:
            probs[i] = _phi_sf((k - 0.5) * c)
        else:
            probs[i] = _interval_mass((k - 0.5) * c, (k + 0.5) * c)
    return ks, probs


def h_pqa(alpha: float, beta: float, lam: float, levels: int) -> float:
    """Entropy of the PQA output in nats, Eq. 22 (0·log 0 = 0)."""
    return _entropy(pqa_pmf(alpha, beta, lam, levels)[1])


def pqa_ratio(alpha: float, beta: float, lam: float, levels: int) -> float:
    """H_PQA / H_BN (base-invariant)."""
    return h_pqa(alpha, beta, lam, levels) / h_bn()


def lambda_sweep(alpha: float, beta: float, levels: int, lams: Sequence[float]) -> list[float]:
    """H_PQA / H_BN for each λ in ``lams``.

    Limits: λ/L -> 0 gives log 2 / H_BN ≈ 0.4885 (mass ½/½ on the two clip levels);
    λ/L -> ∞ gives 0 (all mass at k = 0).
    """
    return [pqa_ratio(alpha, beta, lam, levels) for lam in lams]


# --------------------------------------------------------------------------------------------
# Grid search (Fig. 2)
# --------------------------------------------------------------------------------------------


@dataclass
class GridResult:
    """Result of :func:`grid_search`; ``to_dict()`` is JSON-ready."""

    levels: int
    lam: float
    h_bn: float
    h_relu: float
    relu_ratio: float
    alphas: list[float]
    betas: list[float]
    grid: list[dict]
    best: dict
    best_at_beta_1: dict
    paper_choice: dict
    rule: str = RULE
    tie_tol: float = TIE_TOL
    ratios: np.ndarray = field(default=None, repr=False)  # shape (len(alphas), len(betas))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("ratios")
        return d


def _select(points: list[dict], tie_tol: float = TIE_TOL) -> dict:
    """Apply :data:`RULE` to a list of ``{alpha, beta, ratio}`` points."""
    dev_min = min(abs(p["ratio"] - 1.0) for p in points)
    cands = [p for p in points if abs(p["ratio"] - 1.0) <= dev_min + tie_tol]
    cands.sort(key=lambda p: (round(p["beta"] - p["alpha"], 12), -p["beta"], abs(p["alpha"])))
    return dict(cands[0])


def grid_search(levels: int = PQA_LEVELS, lam: float = PQA_LAMBDA) -> GridResult:
    """H_PQA / H_BN over α ∈ {-1/L, …, -1} × β ∈ {1/L, …, 1} and the selected point.

    Selection rule (:data:`RULE`): minimise ``|ratio - 1|``; among points within ``TIE_TOL``
    (1e-3) of that minimum, prefer the narrowest range (smallest ``β - α``), then the larger
    ``β``, then ``α`` closest to 0.  ``best_at_beta_1`` applies the same rule on the ``β = 1``
    column only (the paper's Fig. 3(a) protocol).  ``paper_choice`` is the paper's
    ``(α, β) = (-0.25, 1)`` with its ratio (``None`` when ``-0.25·L`` is not an integer).

    For L = λ = 8 the rule selects (-0.25, 0.25) with ratio 0.998; ``best_at_beta_1`` and
    ``paper_choice`` are (-0.25, 1) with ratio 1.013.

    Cost is O(L²): the interior terms of Eq. 22 are shared via a prefix sum.
    """
    levels = _check_levels(levels)
    lam = _check_lam(lam)
    L, c = levels, lam / levels
    hbn = h_bn()

    # Unclipped level masses and their -p log p for k = -L … L (prefix sums for the interior).
    ks = np.arange(-L, L + 1)
    p_int = np.array([_interval_mass((k - 0.5) * c, (k + 0.5) * c) for k in ks])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p_int > 0.0, -p_int * np.log(np.where(p_int > 0.0, p_int, 1.0)), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(t)])  # cum[j] = Σ t[:j]

    def edge(p: float) -> float:
        return -p * math.log(p) if p > 0.0 else 0.0

    alphas = [-i / L for i in range(1, L + 1)]
    betas = [j / L for j in range(1, L + 1)]
    ratios = np.empty((L, L))
    grid: list[dict] = []
    for ia, i in enumerate(range(1, L + 1)):
        k_min = -i
        h_lo = edge(_phi_cdf((k_min + 0.5) * c))
        for jb, j in enumerate(range(1, L + 1)):
            k_max = j
            # interior k_min+1 … k_max-1  ->  indices (k + L)
            interior = cum[k_max - 1 + L + 1] - cum[k_min + 1 + L]
            h = h_lo + interior + edge(_phi_sf((k_max - 0.5) * c))
            r = float(h / hbn) + 0.0
            ratios[ia, jb] = r
            grid.append({"alpha": alphas[ia], "beta": betas[jb], "ratio": r})

    best = _select(grid)
    best_b1 = _select([p for p in grid if p["beta"] == 1.0])

    pa, pb = PAPER_CHOICE
    try:
        paper_ratio = pqa_ratio(pa, pb, lam, L)
    except InputError:
        paper_ratio = None
    paper = {"alpha": pa, "beta": pb, "ratio": paper_ratio}

    return GridResult(
        levels=L,
        lam=lam,
        h_bn=hbn,
        h_relu=h_relu(),
        relu_ratio=relu_ratio(),
        alphas=alphas,
        betas=betas,
        grid=grid,
        best=best,
        best_at_beta_1=best_b1,
        paper_choice=paper,
        ratios=ratios,
    )
