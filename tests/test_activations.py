"""Tests for pmsm_compiler.training.activations: PQA / QCFS forward and STE gradients, validation, swap_relu.

References are independent of the module: float64 numpy for the formula
y = s·clip(floor(x/s + ½), αL, βL), s = λ/L (equations.md §2.1, §7), a float32 numpy emulation of
the op sequence (Div, Add ½, Floor, Clip, Mul) for inputs where float32 rounding matters, and, for
the gradients, §2.2's closed form and autograd of the explicit QCFS-style formula.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pmsm_compiler.training.activations import (
    PQA,
    QCFS,
    ActivationSpec,
    ClipFloat,
    SwapReport,
    integer_bound,
    quantize_reference,
    quantized_activations,
    swap_relu,
)

F32 = np.float32


# ------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------

def step_of(lam: float, levels: int) -> np.float32:
    """s = λ/L as the module computes it: λ rounded to float32, divided in float32."""
    return F32(F32(lam) / F32(levels))


def ref_levels64(x: np.ndarray, lam: float, levels: int, k_min: int, k_max: int) -> np.ndarray:
    """clip(floor(x/s + ½), k_min, k_max) in float64 (exact math for float32 x and s)."""
    s = np.float64(step_of(lam, levels))
    return np.clip(np.floor(x.astype(np.float64) / s + 0.5), k_min, k_max)


def ref_output64(k: np.ndarray, lam: float, levels: int) -> np.ndarray:
    """y = k·s: the exact product rounded once to float32 (what a float32 multiply gives)."""
    return (k * np.float64(step_of(lam, levels))).astype(F32)


def emulate_f32(x: np.ndarray, lam: float, levels: int, k_min: int, k_max: int):
    """The forward op sequence in float32 numpy: Div, Add ½, Floor, Clip, Mul (each rounded)."""
    s = step_of(lam, levels)
    k = np.clip(np.floor((x.astype(F32) / s).astype(F32) + F32(0.5)), F32(k_min), F32(k_max)).astype(F32)
    return k, (k * s).astype(F32)


def run(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x, dtype=F32))).numpy()


def pqa(lam=8.0, levels=8, alpha=-0.25, beta=1.0) -> PQA:
    return PQA(levels=levels, lam=lam, alpha=alpha, beta=beta)


# ------------------------------------------------------------------------------------------------
# PQA forward
# ------------------------------------------------------------------------------------------------

def test_paper_defaults_give_levels_minus2_to_8():
    q = PQA()
    assert (q.levels, float(q.lam.detach()), q.alpha, q.beta) == (8, 8.0, -0.25, 1.0)
    assert (q.k_min, q.k_max) == (-2, 8)
    assert q.threshold == 1.0
    x = np.linspace(-20, 20, 4001, dtype=F32)
    y = run(q, x)
    # λ = L = 8: s = 1, the outputs are exactly the integers -2..8, and every one of them occurs.
    assert set(np.unique(y).tolist()) == set(range(-2, 9))
    np.testing.assert_array_equal(y, ref_output64(ref_levels64(x, 8.0, 8, -2, 8), 8.0, 8))
    # half-up rounding, not half-to-even: 0.5 -> 1, 1.5 -> 2, 2.5 -> 3, -0.5 -> 0, -1.5 -> -1
    np.testing.assert_array_equal(run(q, np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], F32)),
                                  np.array([1, 2, 3, 0, -1, -2], F32))


@pytest.mark.parametrize("lam,levels", [(8.0, 8), (4.0, 8), (2.0, 8), (16.0, 4), (1.0, 4)])
@pytest.mark.parametrize("alpha,beta", [(-0.25, 1.0), (-1.0, 1.0), (-0.5, 0.5)])
def test_pqa_equals_float64_formula_on_exact_grid_with_power_of_two_step(lam, levels, alpha, beta):
    """s a power of two: x = j·s/64 makes x/s and x/s + ½ exact in float32, ties included."""
    q = pqa(lam, levels, alpha, beta)
    s = float(step_of(lam, levels))
    assert s == 2.0 ** round(np.log2(s))
    k_min, k_max = integer_bound(alpha, levels, "α"), integer_bound(beta, levels, "β")
    j = np.arange(64 * (k_min - 3), 64 * (k_max + 3) + 1)
    x = (j * s / 64).astype(F32)
    assert np.array_equal(x.astype(np.float64), j * s / 64)          # exactly representable
    k = ref_levels64(x, lam, levels, k_min, k_max)
    y = run(q, x)
    np.testing.assert_array_equal(y, ref_output64(k, lam, levels))
    np.testing.assert_array_equal(q.levels_of(torch.from_numpy(y)).numpy(), k)
    # the ties themselves (x/s = n + ½) round up, inside the range; clipped outside it
    ties = (j % 64 == 32)
    n = (j[ties] - 32) // 64
    np.testing.assert_array_equal(k[ties], np.clip(n + 1, k_min, k_max))
    assert ties.sum() == (k_max + 3) - (k_min - 3)


@pytest.mark.parametrize("lam", [8.0, 7.3, 0.9, 10.0])
def test_pqa_clips_at_both_ends(lam):
    q = pqa(lam)
    s = float(step_of(lam, 8))
    x = np.array([-1e6, -100.0, (-2 - 0.5) * s, -2 * s, -3 * s, 8 * s, 8.5 * s, 9 * s, 100.0, 1e6,
                  np.finfo(F32).max, -np.finfo(F32).max], F32)
    y = run(q, x)
    k = np.rint(y / F32(s))
    np.testing.assert_array_equal(k, [-2, -2, -2, -2, -2, 8, 8, 8, 8, 8, 8, -2])
    np.testing.assert_array_equal(y, ref_output64(k, lam, 8))
    assert y.min() == F32(-2 * np.float64(step_of(lam, 8))) and y.max() == ref_output64(np.array(8.0), lam, 8)


def test_pqa_ties_with_non_power_of_two_step():
    """λ = 7.3, L = 8: s = fl32(7.3)/8 has 23 significant bits, so among x = (n+½)·s only ±s/2
    are exactly representable; those are exact ties and round half up. The other 'ties' are
    float32 values within an ulp of the boundary: there the module follows its float32 op
    sequence (the one the ONNX function body and the AIF neuron repeat), checked bit for bit."""
    lam, L = 7.3, 8
    q = pqa(lam, L)
    s64 = np.float64(step_of(lam, L))
    n = np.arange(-5, 11)
    x = ((n + 0.5) * s64).astype(F32)
    exact = x.astype(np.float64) == (n + 0.5) * s64
    assert exact.tolist() == [m in (-1, 0) for m in n]
    y = run(q, x)
    k = np.rint(y / F32(s64))
    # exact ties: n + 1
    np.testing.assert_array_equal(k[exact], n[exact] + 1)
    # everything: the float32 op sequence, bit for bit
    k32, y32 = emulate_f32(x, lam, L, -2, 8)
    np.testing.assert_array_equal(y, y32)
    # and the float64 formula wherever x/s is not within float32 rounding of a tie
    k64 = ref_levels64(x, lam, L, -2, 8)
    u = x.astype(np.float64) / s64
    near_tie = np.abs(u - (np.floor(u) + 0.5)) <= 2.0 ** -22 * np.maximum(1.0, np.abs(u))
    np.testing.assert_array_equal(k[~near_tie], k64[~near_tie])
    np.testing.assert_array_equal(y[exact], ref_output64(k64[exact], lam, L))


@pytest.mark.parametrize("lam", [7.3, 8.0, 0.9, 3.3])
def test_pqa_random_inputs_float64_agreement_except_within_an_ulp_of_a_tie(lam):
    """Random float32 inputs: the module agrees with the float32 emulation everywhere and with the
    exact float64 formula everywhere except (possibly) inputs whose x/s lies within float32
    rounding of a level boundary, e.g. x/s one ulp below n + ½, where fl32(x/s + ½) rounds up
    to n + 1 (a property of floor(x + ½) in float32, shared by every engine that uses the op)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * 4 * lam / 8).astype(F32)
    q = pqa(lam)
    y = run(q, x)
    _, y32 = emulate_f32(x, lam, 8, -2, 8)
    np.testing.assert_array_equal(y, y32)
    s64 = np.float64(step_of(lam, 8))
    k64 = ref_levels64(x, lam, 8, -2, 8)
    k = np.rint(y / F32(s64))
    differ = k != k64
    u = x.astype(np.float64) / s64
    near_tie = np.abs(u - (np.floor(u) + 0.5)) <= 2.0 ** -22 * np.maximum(1.0, np.abs(u))
    assert not np.any(differ & ~near_tie)
    assert np.all(np.abs(k - k64) <= 1)


def test_just_below_the_first_tie_rounds_up_in_float32():
    """Documents the float32 behaviour of the op order (Div, Add ½, Floor), shared by the ONNX
    function body and the AIF neuron: for x/s = nextafter(½, −∞) = ½ − 2⁻²⁵, x/s + ½ = 1 − 2⁻²⁵
    is not a float32 and rounds (to even) to 1, so the level is 1 where the exact formula gives 0.
    Just below every other tie (n + ½, n ≥ 1, and the negative ties) the sum is representable and
    the level is exact."""
    q = pqa(8.0)  # s = 1
    ties = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5], F32)
    below = np.nextafter(ties, F32(-np.inf))
    above = np.nextafter(ties, F32(np.inf))
    k_below = np.rint(run(q, below))
    np.testing.assert_array_equal(k_below, [1, 1, 2, 3, -1, -2])                      # float32
    np.testing.assert_array_equal(ref_levels64(below, 8.0, 8, -2, 8), [0, 1, 2, 3, -1, -2])  # exact
    np.testing.assert_array_equal(k_below, emulate_f32(below, 8.0, 8, -2, 8)[0])
    np.testing.assert_array_equal(np.rint(run(q, above)), [1, 2, 3, 4, 0, -1])
    np.testing.assert_array_equal(np.rint(run(q, ties)), [1, 2, 3, 4, 0, -1])


def test_forward_matches_quantize_reference_and_dtype():
    rng = np.random.default_rng(1)
    x = torch.from_numpy((rng.standard_normal((4, 3, 5, 5)) * 5).astype(F32))
    q = pqa(7.3)
    with torch.no_grad():
        y = q(x)
        ref = quantize_reference(x, q.lam, q.levels, q.k_min, q.k_max)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    # float64 input is computed in λ's dtype (float32)
    assert q(x.double()).dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# QCFS forward
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lam,levels", [(8.0, 8), (4.0, 4), (7.3, 8), (2.0, 15)])
def test_qcfs_forward_range_0_to_L(lam, levels):
    q = QCFS(levels=levels, lam=lam)
    assert (q.k_min, q.k_max, q.alpha, q.beta) == (0, levels, 0.0, 1.0)
    s64 = np.float64(step_of(lam, levels))
    j = np.arange(-64 * 3, 64 * (levels + 3) + 1)
    x = (j * s64 / 64).astype(F32)
    y = run(q, x)
    k32, y32 = emulate_f32(x, lam, levels, 0, levels)
    np.testing.assert_array_equal(y, y32)
    k = np.rint(y / F32(s64))
    assert k.min() == 0 and k.max() == levels
    exact = x.astype(np.float64) == j * s64 / 64
    k64 = ref_levels64(x, lam, levels, 0, levels)
    u = x.astype(np.float64) / s64
    near_tie = np.abs(u - (np.floor(u) + 0.5)) <= 2.0 ** -22 * np.maximum(1.0, np.abs(u))
    np.testing.assert_array_equal(k[~near_tie], k64[~near_tie])
    if s64 == 2.0 ** round(np.log2(s64)):
        assert exact.all()
        np.testing.assert_array_equal(y, ref_output64(k64, lam, levels))
    # ties: half up; negatives: 0; above λ: L
    ties = exact & (j % 64 == 32)
    np.testing.assert_array_equal(k[ties], np.clip((j[ties] - 32) // 64 + 1, 0, levels))
    np.testing.assert_array_equal(np.rint(run(q, np.array([-1e9, -s64, 1e9], F32)) / F32(s64)), [0, 0, levels])


# ------------------------------------------------------------------------------------------------
# STE gradients
# ------------------------------------------------------------------------------------------------

def floor_ste(t: torch.Tensor) -> torch.Tensor:
    return t + (torch.floor(t) - t).detach()


def explicit_formula(x, lam, levels, alpha, beta):
    """λ·floor_ste(L·clamp(x/λ, α, β) + ½)/L, the QCFS-code form (equations.md §2.1, §2.2)."""
    return lam * floor_ste(levels * torch.clamp(x / lam, alpha, beta) + 0.5) / levels


def grad_inputs(lam, levels, alpha, beta, seed=0, n=20_000):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * (1.5 * lam)
    # the range boundaries themselves and their float32 neighbours
    lo, hi = F32(alpha) * F32(lam), F32(beta) * F32(lam)
    special = np.array([lo, hi, np.nextafter(lo, F32(-np.inf)), np.nextafter(lo, F32(np.inf)),
                        np.nextafter(hi, F32(-np.inf)), np.nextafter(hi, F32(np.inf)), 0.0], F32)
    x = torch.cat([x, torch.from_numpy(special)])
    g = torch.randn(x.shape, generator=gen)
    return x, g


@pytest.mark.parametrize("cls,lam,alpha,beta", [
    (PQA, 8.0, -0.25, 1.0), (PQA, 7.3, -0.25, 1.0), (PQA, 3.0, -1.0, 0.5), (PQA, 0.9, -0.5, 1.0),
    (QCFS, 8.0, 0.0, 1.0), (QCFS, 7.3, 0.0, 1.0),
])
def test_ste_gradients(cls, lam, alpha, beta):
    levels = 8
    q = cls(levels=levels, lam=lam) if cls is QCFS else cls(levels=levels, lam=lam, alpha=alpha, beta=beta)
    x, g = grad_inputs(lam, levels, alpha, beta)
    xr = x.clone().requires_grad_(True)
    y = q(xr)
    y.backward(g)
    gx, glam = xr.grad.numpy(), float(q.lam.grad)

    # ∂y/∂x = 1 on the closed range [αλ, βλ], 0 outside
    x64 = x.numpy().astype(np.float64)
    lam32 = np.float64(F32(lam))
    lo, hi = np.float64(F32(alpha) * F32(lam)), np.float64(F32(beta) * F32(lam))
    inside = (x64 >= lo) & (x64 <= hi)
    np.testing.assert_array_equal(gx, np.where(inside, g.numpy(), 0.0))
    assert inside[-7:].tolist() == [True, True, False, True, True, False, True]

    # ∂y/∂λ = Σ g·(q − u·1[inside]), q = y/λ, u = x/λ, in float64 (equations.md §2.2)
    q64 = y.detach().numpy().astype(np.float64) / lam32
    u64 = x64 / lam32
    g64 = g.numpy().astype(np.float64)
    ref = np.sum(g64 * (q64 - u64 * inside))
    scale = np.sum(np.abs(g64) * (np.abs(q64) + np.abs(u64)))
    assert abs(glam - ref) <= 1e-6 * scale, (glam, ref, scale)

    # autograd of the explicit formula: same ∂y/∂x, same ∂y/∂λ (up to float32 summation)
    lam_t = torch.tensor(float(F32(lam)), requires_grad=True)
    xe = x.clone().requires_grad_(True)
    ye = explicit_formula(xe, lam_t, levels, alpha, beta)
    ye.backward(g)
    # The explicit form decides "inside" on u = x/λ in float32; the module on x vs αλ. They agree
    # except where x/λ underflows: x = −1e-45 (QCFS, α = 0) gives u = −0, "inside" for clamp.
    u32 = (x / lam_t.detach()).numpy()
    inside_e = (u32 >= F32(alpha)) & (u32 <= F32(beta))
    assert np.all(np.abs(x.numpy()[inside_e != inside]) < 1e-37)
    same = inside_e == inside
    # (λ·L·(1/λ)/L in float32 is 1 up to an ulp or two)
    np.testing.assert_allclose(xe.grad.numpy()[same], gx[same], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(xe.grad.numpy() != 0, inside_e & (g.numpy() != 0))
    # forward values agree except where L·(x/λ) and x/(λ/L) round differently at a tie
    mismatch = (ye.detach() != y.detach()).float().mean().item()
    assert mismatch <= 1e-3
    assert abs(float(lam_t.grad) - glam) <= 1e-5 * scale


def test_lambda_gradient_sign_outside_the_range():
    """Above the range ∂y/∂λ = β, below it α, per element (equations.md §2.2)."""
    q = pqa(8.0)
    x = torch.tensor([100.0, -100.0])
    for i, expected in enumerate([1.0, -0.25]):
        q.lam.grad = None
        y = q(x)
        y[i].backward()
        assert float(q.lam.grad) == expected


def test_fixed_lambda_has_no_gradient():
    q = PQA(learn_lambda=False)
    x = torch.randn(10, requires_grad=True)
    q(x).sum().backward()
    assert q.lam.grad is None and x.grad is not None


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=0.1), "PQA needs α ≤ 0 < β"),
    (dict(alpha=1.0), "PQA needs α ≤ 0 < β"),
    (dict(beta=0.0), "PQA needs α ≤ 0 < β"),
    (dict(beta=-0.5), "PQA needs α ≤ 0 < β"),
    (dict(alpha=-0.3), "integer"),                  # αL = −2.4
    (dict(beta=0.9), "integer"),                    # βL = 7.2
    (dict(alpha=-0.2, levels=4), "integer"),        # αL = −0.8
    (dict(lam=0.0), "λ must be > 0"),
    (dict(lam=-1.0), "λ must be > 0"),
    (dict(lam=float("nan")), "λ must be > 0"),
    (dict(levels=0, alpha=-1.0), "L must be >= 1"),
])
def test_pqa_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PQA(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lam=0.0), "λ must be > 0"), (dict(lam=-2.0), "λ must be > 0"), (dict(levels=0), "L must be >= 1"),
])
def test_qcfs_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QCFS(**kwargs)


def test_unsigned_pqa_alpha_zero_equals_qcfs():
    """α = 0 is the unsigned PQA (levels 0..βL, used by the ViT after softmax and in the MLP):
    with β = 1 it is the QCFS map, bit for bit, gradients included."""
    for lam, levels in [(8.0, 8), (1.0, 15), (7.3, 8)]:
        p, q = PQA(levels=levels, lam=lam, alpha=0.0, beta=1.0), QCFS(levels=levels, lam=lam)
        assert (p.k_min, p.k_max) == (0, levels)
        x = torch.randn(5000) * lam
        xp, xq = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        yp, yq = p(xp), q(xq)
        assert torch.equal(yp, yq)
        g = torch.randn(5000)
        yp.backward(g)
        yq.backward(g)
        assert torch.equal(xp.grad, xq.grad) and torch.equal(p.lam.grad, q.lam.grad)


def test_valid_fractional_bounds_and_specs():
    q = PQA(levels=3, alpha=-1 / 3, beta=2 / 3)      # αL, βL integers up to float rounding
    assert (q.k_min, q.k_max) == (-1, 2)
    assert isinstance(ActivationSpec("qcfs").make(), QCFS)
    assert isinstance(ActivationSpec("relu").make(), nn.ReLU)
    with pytest.raises(ValueError, match="unknown activation"):
        ActivationSpec("gelu").make()


# ------------------------------------------------------------------------------------------------
# ClipFloat: PQA's range without rounding, for pre-training
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lam,alpha", [(2.0, -0.25), (2.0, 0.0), (0.7, -0.5)])
def test_clip_float_is_clip_to_the_pqa_range_with_its_gradient(lam, alpha):
    c = ClipFloat(lam=lam, alpha=alpha, beta=1.0)
    x = (torch.randn(20000) * 2 * lam).requires_grad_(True)
    y = c(x)
    assert torch.equal(y, torch.clamp(x.detach(), alpha * lam, lam))
    y.backward(torch.ones_like(y))
    inside = (x.detach() > alpha * lam) & (x.detach() < lam)
    assert torch.equal(x.grad, inside.float())
    assert not c.lam.requires_grad and "lam" in dict(c.named_buffers())


def test_clip_float_bounds_follow_a_loaded_or_set_lambda():
    c = ClipFloat(lam=2.0)
    c.load_state_dict({"lam": torch.tensor(4.0)})
    x = torch.tensor([-3.0, -0.9, 3.9, 5.0])
    assert torch.equal(c(x), torch.tensor([-1.0, -0.9, 3.9, 4.0]))
    c.lam.fill_(1.0)                                 # set in place, as a λ calibration does
    assert torch.equal(c(x), torch.tensor([-0.25, -0.25, 1.0, 1.0]))


def test_pqa_with_the_clip_lambda_only_rounds_the_clip_output():
    """What fine-tuning from a clip pre-training starts from: the same range, rounded to λ/L."""
    c, q = ClipFloat(lam=2.0, alpha=-0.25), PQA(levels=8, lam=5.0, alpha=-0.25)
    q.load_state_dict(c.state_dict())               # the λ buffer becomes PQA's λ parameter
    assert float(q.lam.detach()) == 2.0 and q.lam.requires_grad
    x = torch.randn(20000) * 3
    with torch.no_grad():
        assert (q(x) - c(x)).abs().max() <= 2.0 / 8 / 2 + 1e-6
    assert ActivationSpec("clip", lam=2.0, alpha=0.0).make().extra_repr() == "λ=2, α=0, β=1"
    with pytest.raises(ValueError, match="clip needs α ≤ 0 < β"):
        ActivationSpec("clip", alpha=0.5).make()


# ------------------------------------------------------------------------------------------------
# swap_relu on third-party-style models
# ------------------------------------------------------------------------------------------------

class ResidualBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.inner = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU())

    def forward(self, x):
        return self.relu(self.inner(self.conv(x)) + x)


class NestedModules(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.block = ResidualBlock(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 6), nn.ReLU())

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = torch.relu(x * 2.0 - 1.0)
        return self.fc(x.mean((2, 3))).relu()


def functional_reference(model: Functional, acts, x):
    """Functional.forward with the three relus replaced by the given quantizers, by hand."""
    x = acts[0](model.conv(x))
    x = acts[1](x * 2.0 - 1.0)
    return acts[2](model.fc(x.mean((2, 3))))


class HelperMethod(nn.Module):
    """A functional relu hidden in a helper method that forward() calls."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def _act(self, x):
        return F.relu(x)

    def forward(self, x):
        return self._act(self.fc(x))


class DataDependent(nn.Module):
    """Data-dependent control flow around F.relu: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:
            return F.relu(h)
        return F.relu(-h)


class DataDependentModuleReLU(nn.Module):
    """Untraceable too, but its only ReLU is a module: swapped, nothing to report."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.relu = nn.ReLU()

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:
            h = -h
        return self.relu(h)


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.inner(x))


class OtherActivations(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 5)
        self.r6 = nn.ReLU6()
        self.seq = nn.Sequential(nn.Linear(5, 5), nn.LeakyReLU(0.1), nn.ReLU())
        self.fc2 = nn.Linear(5, 5)

    def forward(self, x):
        return self.fc2(self.seq(self.r6(self.fc1(x))))


def quantizer_outputs(model, x):
    """(name, module, output) of every quantizer in one forward pass."""
    seen = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: seen.append((n, mod, o.detach())))
               for n, m in quantized_activations(model)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def assert_on_grid(seen):
    assert seen
    for name, mod, out in seen:
        k = out / (mod.lam.detach() / mod.levels)
        assert torch.equal(k, torch.round(k)), name
        assert k.min() >= mod.k_min and k.max() <= mod.k_max, name


def test_swap_nested_modules():
    torch.manual_seed(0)
    model = NestedModules().eval()
    keys_before = set(model.state_dict())
    report = swap_relu(model)
    assert isinstance(report, SwapReport)
    assert report.swapped == ["stem.2", "block.relu", "block.inner.1", "head.2"]
    assert report.not_swapped == []
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    names = [n for n, _ in quantized_activations(model)]
    assert names == ["stem.2", "block.relu", "block.inner.1", "head.2"]
    assert all(isinstance(m, PQA) for _, m in quantized_activations(model))
    # every quantizer gets its own λ; the checkpoint keys are the old ones plus the λ's
    assert set(model.state_dict()) == keys_before | {f"{n}.lam" for n in names}
    x = torch.randn(3, 3, 8, 8) * 4
    out, seen = quantizer_outputs(model, x)
    # execution order: the inner Sequential's ReLU runs before the block's own
    assert [n for n, _, _ in seen] == ["stem.2", "block.inner.1", "block.relu", "head.2"]
    assert_on_grid(seen)
    torch.testing.assert_close(out, seen[-1][2], rtol=0, atol=0)
    assert "swapped 4 ReLU(s)" in str(report)


def test_swap_with_qcfs_spec():
    model = NestedModules()
    report = swap_relu(model, act=ActivationSpec("qcfs", levels=4, lam=2.0))
    acts = [m for _, m in quantized_activations(model)]
    assert len(report.swapped) == 4 and all(isinstance(m, QCFS) for m in acts)
    assert all(m.levels == 4 and float(m.lam.detach()) == 2.0 for m in acts)


def test_swap_functional_relus():
    torch.manual_seed(1)
    model = Functional().eval()
    keys_before = set(model.state_dict())
    report = swap_relu(model)
    assert report.swapped == ["pmsm_act0 (functional relu)", "pmsm_act1 (functional relu)",
                              "pmsm_act2 (functional relu)"]
    assert report.not_swapped == []
    acts = [m for _, m in quantized_activations(model)]
    assert len(acts) == 3
    assert set(model.state_dict()) == keys_before | {"pmsm_act0.lam", "pmsm_act1.lam", "pmsm_act2.lam"}
    x = torch.randn(2, 3, 6, 6) * 3
    out, seen = quantizer_outputs(model, x)
    assert [n for n, _, _ in seen] == ["pmsm_act0", "pmsm_act1", "pmsm_act2"]
    assert_on_grid(seen)
    with torch.no_grad():
        torch.testing.assert_close(out, functional_reference(model, acts, x), rtol=0, atol=0)
    # negative outputs exist: the ReLUs really are gone (PQA has α < 0)
    assert any((o < 0).any() for _, _, o in seen)
    # each quantizer has its own λ: changing one changes only its output
    acts[2].lam.data.fill_(3.0)
    _, seen2 = quantizer_outputs(model, x)
    assert torch.equal(seen2[0][2], seen[0][2]) and not torch.equal(seen2[2][2], seen[2][2])
    # the swapped model trains (gradients reach the λ's) and survives deepcopy
    model.train()
    model(x).sum().backward()
    assert all(a.lam.grad is not None for a in acts)
    clone = copy.deepcopy(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model.eval()(x), rtol=0, atol=0)
        clone.pmsm_act2.lam.fill_(5.0)
        assert not torch.equal(clone(x), model(x))


def test_swap_functional_relu_in_helper_method():
    model = Wrapper(HelperMethod())
    report = swap_relu(model)
    assert report.swapped == ["act", "inner.pmsm_act0 (functional relu)"]
    assert report.not_swapped == []
    x = torch.randn(4, 5) * 8
    _, seen = quantizer_outputs(model, x)
    assert [n for n, _, _ in seen] == ["inner.pmsm_act0", "act"]
    assert_on_grid(seen)


def test_untraceable_functional_relu_is_reported():
    torch.manual_seed(2)
    model = Wrapper(DataDependent())
    x = torch.randn(4, 5)
    with torch.no_grad():
        before = model.inner(x)
    report = swap_relu(model)
    assert report.swapped == ["act"]
    assert len(report.not_swapped) == 1
    entry = report.not_swapped[0]
    assert entry.startswith("inner:") and "not traceable" in entry
    assert "could not swap 1" in str(report) and "inner" in str(report)
    with torch.no_grad():  # the untraceable module is left as it was
        torch.testing.assert_close(model.inner(x), before, rtol=0, atol=0)


def test_untraceable_module_without_functional_relu_is_not_reported():
    model = DataDependentModuleReLU()
    report = swap_relu(model)
    assert report.swapped == ["relu"]
    assert report.not_swapped == []


def test_other_activations_are_reported_not_swapped():
    model = OtherActivations()
    report = swap_relu(model)
    assert report.swapped == ["seq.2"]
    assert len(report.not_swapped) == 2
    assert report.not_swapped[0].startswith("r6 (ReLU6")
    assert report.not_swapped[1].startswith("seq.1 (LeakyReLU")
    assert isinstance(model.r6, nn.ReLU6) and isinstance(model.seq[1], nn.LeakyReLU)
    assert isinstance(model.seq[2], PQA)
    _, seen = quantizer_outputs(model, torch.randn(3, 5) * 4)
    assert_on_grid(seen)


def test_swap_on_model_without_relu():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    report = swap_relu(model)
    assert report.swapped == [] and report.not_swapped == []
    assert str(report) == "swapped 0 ReLU(s)"
