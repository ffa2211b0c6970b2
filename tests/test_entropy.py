"""Entropy analysis (paper §5, Eqs. 12-23) and the ``pmsm-entropy`` CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from pmsm_compiler import entropy as ent
from pmsm_compiler.cli.entropy import main
from pmsm_compiler.errors import InputError

H_BN = 0.5 * math.log(2 * math.pi * math.e)


# ----------------------------------------------------------------------------- closed forms


def test_h_bn():
    assert ent.h_bn() == pytest.approx(H_BN, abs=1e-15)
    assert ent.h_bn() == pytest.approx(1.4189, abs=1e-4)


def test_h_relu_and_ratio():
    assert ent.h_relu() == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(2 * math.pi * math.e))
    assert ent.h_relu() == pytest.approx(1.0560, abs=1e-4)
    assert round(ent.relu_ratio(), 3) == 0.744
    # the paper's "69 %" only comes from the bits/nats slip documented in equations.md §5.2
    assert round(ent.relu_ratio_mixed_units(), 3) == 0.690
    assert ent.PAPER_RELU_RATIO == 0.69


def test_h_relu_matches_numeric_integral():
    # -½ log ½ - ∫_0^∞ φ log φ, integrated numerically (trapezoid on a fine grid)
    y = np.linspace(0.0, 12.0, 200_001)
    phi = np.exp(-0.5 * y**2) / math.sqrt(2 * math.pi)
    integrand = -phi * np.log(phi)
    cont = float(np.sum((integrand[1:] + integrand[:-1]) * 0.5 * np.diff(y)))
    assert ent.h_relu() == pytest.approx(0.5 * math.log(2) + cont, abs=1e-8)


# ----------------------------------------------------------------------------- PQA PMF / entropy


def test_pmf_matches_equations_md():
    ks, p = ent.pqa_pmf(-0.25, 1.0, 8.0, 8)
    assert list(ks) == list(range(-2, 9))
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(p >= 0)
    expected = {-2: 0.0668, -1: 0.2417, 0: 0.3829, 1: 0.2417, 2: 0.0606, 3: 0.0060, 4: 0.0002}
    for k, v in expected.items():
        assert round(float(p[k + 2]), 4) == v, k


@pytest.mark.parametrize(
    "alpha,beta,lam,levels",
    [(-0.25, 1, 8, 8), (0, 1, 8, 8), (-1, 1, 0.01, 8), (-0.5, 0.5, 100, 4), (-1, 1, 3, 1)],
)
def test_pmf_sums_to_one(alpha, beta, lam, levels):
    ks, p = ent.pqa_pmf(alpha, beta, lam, levels)
    assert ks[0] == round(alpha * levels) and ks[-1] == round(beta * levels)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(p >= 0)


def test_ratio_paper_point_and_qcfs():
    assert ent.h_pqa(-0.25, 1.0, 8.0, 8) == pytest.approx(1.4373, abs=1e-4)
    assert round(ent.pqa_ratio(-0.25, 1.0, 8.0, 8), 3) == 1.013
    assert round(ent.pqa_ratio(0.0, 1.0, 8.0, 8), 3) == 0.564


def test_lambda_limits():
    small = ent.lambda_sweep(-0.25, 1.0, 8, [1e-4])[0]
    assert small == pytest.approx(math.log(2) / H_BN, abs=1e-3)
    assert round(math.log(2) / H_BN, 4) == 0.4885
    big = ent.lambda_sweep(-0.25, 1.0, 8, [1e3, 1e4])
    assert all(0.0 <= r < 1e-6 for r in big)
    # the sweep quoted in equations.md §5.3 (α = -0.25, β = 1, L = 8)
    r = ent.lambda_sweep(-0.25, 1.0, 8, [0.01, 0.1, 1.0, 8.0, 80.0])
    assert [round(x, 2) for x in r[:3]] == [0.51, 0.66, 1.35]
    assert round(r[3], 3) == 1.013 and round(r[4], 3) == 0.0


@pytest.mark.parametrize(
    "args,match",
    [
        ((-0.3, 1.0, 8.0, 8), "alpha\\*L must be an integer"),
        ((-0.25, 0.3, 8.0, 8), "beta\\*L must be an integer"),
        ((0.25, 1.0, 8.0, 8), "alpha <= 0 < beta"),
        ((-0.25, 0.0, 8.0, 8), "alpha <= 0 < beta"),
        ((-0.25, -0.125, 8.0, 8), "alpha <= 0 < beta"),
        ((-0.25, 1.0, 0.0, 8), "lam"),
        ((-0.25, 1.0, -1.0, 8), "lam"),
        ((-0.25, 1.0, float("nan"), 8), "lam"),
        ((-0.25, 1.0, 8.0, 0), "levels"),
        ((-0.25, 1.0, 8.0, 2.5), "levels"),
    ],
)
def test_validation(args, match):
    with pytest.raises(InputError, match=match):
        ent.pqa_pmf(*args)
    with pytest.raises(InputError):
        ent.h_pqa(*args)


def test_validation_tolerance():
    # αL within 1e-9 of an integer is accepted
    ks, _ = ent.pqa_pmf(-0.25 + 1e-12, 1.0, 8.0, 8)
    assert ks[0] == -2


def test_grid_search_validation():
    with pytest.raises(InputError):
        ent.grid_search(levels=0)
    with pytest.raises(InputError):
        ent.grid_search(lam=0.0)


# ----------------------------------------------------------------------------- grid search


def test_grid_matches_direct_computation():
    res = ent.grid_search(8, 8.0)
    assert len(res.grid) == 64
    assert res.alphas == [-i / 8 for i in range(1, 9)]
    assert res.betas == [j / 8 for j in range(1, 9)]
    for p in res.grid:
        assert p["ratio"] == pytest.approx(ent.pqa_ratio(p["alpha"], p["beta"], 8.0, 8), abs=1e-12)
    assert res.ratios.shape == (8, 8)
    # the table in equations.md §5.3
    assert [round(x, 3) for x in res.ratios[1]] == [0.884, 0.998, 1.012] + [1.013] * 5
    assert [round(x, 3) for x in res.ratios[0]] == [0.770, 0.884] + [0.899] * 6
    assert [round(x, 3) for x in res.ratios[7]] == [0.899, 1.013, 1.027] + [1.028] * 5


def test_grid_selection_rule():
    res = ent.grid_search(8, 8.0)
    # honest result of the closest-to-1 rule: (-0.25, 0.25), ratio 0.998 — not the paper's point
    assert res.best["alpha"] == -0.25 and res.best["beta"] == 0.25
    assert round(res.best["ratio"], 3) == 0.998
    # the paper's protocol (β = 1 fixed, sweep α) reproduces its choice
    assert (res.best_at_beta_1["alpha"], res.best_at_beta_1["beta"]) == (-0.25, 1.0)
    assert res.paper_choice["alpha"] == -0.25 and res.paper_choice["beta"] == 1.0
    assert round(res.paper_choice["ratio"], 3) == 1.013
    assert res.h_bn == pytest.approx(H_BN)
    assert round(res.relu_ratio, 3) == 0.744


def test_selection_tie_break():
    pts = [
        {"alpha": -0.5, "beta": 1.0, "ratio": 1.0004},
        {"alpha": -0.25, "beta": 0.5, "ratio": 0.9998},
        {"alpha": -0.5, "beta": 0.25, "ratio": 1.0005},  # same width 0.75: larger beta wins
        {"alpha": -0.125, "beta": 0.125, "ratio": 0.95},  # narrowest but not near 1
    ]
    assert ent._select(pts) == pts[1]
    pts2 = [
        {"alpha": -0.5, "beta": 0.25, "ratio": 1.0},
        {"alpha": -0.25, "beta": 0.5, "ratio": 1.0},
    ]
    assert ent._select(pts2) == pts2[1]


def test_paper_choice_off_grid():
    res = ent.grid_search(levels=2, lam=2.0)  # -0.25*2 is not an integer
    assert res.paper_choice["ratio"] is None
    assert len(res.grid) == 4


# ----------------------------------------------------------------------------- CLI


def test_cli_table_json_plot(tmp_path):
    jpath, ppath = tmp_path / "e.json", tmp_path / "e.png"
    r = CliRunner().invoke(main, ["--json", str(jpath), "--plot", str(ppath)])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "1.4189" in out and "0.744" in out and "69%" in out
    assert "alpha \\ beta" in out
    row = next(line for line in out.splitlines() if line.split() and line.split()[0] == "-0.25")
    assert row.split()[1:] == ["0.884", "0.998", "1.012"] + ["1.013"] * 5
    assert "rule:" in out and "best:" in out and "paper choice:" in out

    d = json.loads(jpath.read_text())
    for key in ("h_bn", "relu_ratio", "grid", "best", "levels", "lam", "rule", "paper_choice",
                "relu_ratio_paper_claim", "note"):
        assert key in d, key
    assert d["levels"] == 8 and d["lam"] == 8.0
    assert d["relu_ratio_paper_claim"] == 0.69
    assert d["h_bn"] == pytest.approx(H_BN)
    assert len(d["grid"]) == 64
    assert all(set(p) == {"alpha", "beta", "ratio"} for p in d["grid"])
    assert set(d["best"]) == {"alpha", "beta", "ratio"}
    assert (d["best"]["alpha"], d["best"]["beta"]) == (-0.25, 0.25)
    assert d["paper_choice"]["alpha"] == -0.25 and d["paper_choice"]["beta"] == 1.0
    assert round(d["paper_choice"]["ratio"], 3) == 1.013

    assert ppath.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "e.png"]  # no temp files


def test_cli_options(tmp_path):
    jpath = tmp_path / "e.json"
    r = CliRunner().invoke(main, ["--levels", "4", "--lam", "2", "--json", str(jpath)])
    assert r.exit_code == 0, r.output
    d = json.loads(jpath.read_text())
    assert d["levels"] == 4 and d["lam"] == 2.0 and len(d["grid"]) == 16


@pytest.mark.parametrize(
    "args",
    [
        ["--levels", "0"],
        ["--lam", "0"],
        ["--lam", "-3"],
        ["--json", "/nonexistent-dir-pmsm/e.json"],
        ["--plot", "/nonexistent-dir-pmsm/e.png"],
    ],
)
def test_cli_bad_arguments(args):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in r.output


def test_cli_path_is_directory(tmp_path):
    r = CliRunner().invoke(main, ["--json", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: ") and len(r.output.strip().splitlines()) == 1
