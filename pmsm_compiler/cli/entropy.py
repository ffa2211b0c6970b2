"""``pmsm-entropy``: the entropy analysis of PQA (paper §5, Fig. 2) from the command line.

    pmsm-entropy [--levels L] [--lam λ] [--json PATH] [--plot PATH]

Prints H(BN), the ReLU ratio (with the note on the paper's "≈ 69 %"), the H_PQA/H_BN grid over
(α, β) (rows α, columns β), the selected point with its rule, and the paper's choice.  ``--json``
writes the full result; ``--plot`` writes a heatmap PNG like the paper's Fig. 2.  Files are
written atomically (temp file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import json
import math
import os

import click

from pmsm_compiler import entropy as ent
from pmsm_compiler.cli.options import NORMAL, VERBOSE, check_plot_dir, command, json_option, verbosity
from pmsm_compiler.defaults import PQA_LAMBDA, PQA_LEVELS
from pmsm_compiler.errors import InputError, PmsmError, cli_errors
from pmsm_compiler.files import check_output_path, write_atomic

RELU_NOTE = (
    "the paper states H_ReLU/H_BN ~ 69%; a consistent computation of Eq. 19 gives 74.4% "
    "(0.690 only results from mixing bits and nats)"
)
HEATMAP = "entropy_heatmap.png"  # the file name in a --plot folder
BEST_NOTE = (
    "'best' applies the rule to the whole grid; 'best_at_beta_1' applies it to the beta = 1 "
    "column only (the paper's Fig. 3(a) protocol); 'paper_choice' is the paper's (alpha, beta) "
    "= (-0.25, 1). Ratios are H_PQA/H_BN (base-invariant)."
)


def _atomic_write(path: str, write) -> None:
    """``loading.write_atomic`` with this tool's one-line error for a path it cannot write."""
    path = check_output_path(path)
    try:
        write_atomic(path, write, suffix=os.path.splitext(path)[1] or ".tmp")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _fmt_point(p: dict) -> str:
    r = p.get("ratio")
    rs = "n/a (not on this L grid)" if r is None else f"{r:.3f}"
    return f"alpha = {p['alpha']:g}, beta = {p['beta']:g}: ratio {rs}"


def format_table(res: ent.GridResult) -> str:
    """The ratio grid as text: rows alpha, columns beta, 3 decimals."""
    head = "alpha \\ beta"
    w0 = max(len(head), max(len(f"{a:g}") for a in res.alphas))
    w = max(7, max(len(f"{b:g}") for b in res.betas))
    lines = [f"{head:>{w0}} " + " ".join(f"{b:>{w}g}" for b in res.betas)]
    for ia, a in enumerate(res.alphas):
        cells = " ".join(f"{res.ratios[ia, jb]:>{w}.3f}" for jb in range(len(res.betas)))
        lines.append(f"{a:>{w0}g} {cells}")
    return "\n".join(lines)


def _result_json(res: ent.GridResult) -> dict:
    d = res.to_dict()
    d["relu_ratio_paper_claim"] = ent.PAPER_RELU_RATIO
    d["relu_ratio_mixed_units"] = ent.relu_ratio_mixed_units()
    d["limits"] = {"lam_over_L_to_0": math.log(2.0) / ent.h_bn(), "lam_over_L_to_inf": 0.0}
    d["units"] = "nats (ratios are base-invariant)"
    d["note"] = f"{RELU_NOTE}. {BEST_NOTE}"
    return d


def write_plot(res: ent.GridResult, path: str) -> None:
    """Heatmap of H_PQA/H_BN over (alpha, beta), like the paper's Fig. 2 (Agg, no pyplot)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
    except ImportError:
        raise PmsmError("--plot needs matplotlib (pip install 'pmsm-compiler[plot]')") from None

    r = res.ratios
    n_a, n_b = r.shape
    size = min(14.0, max(5.0, 0.75 * n_b + 2.5))
    fig = Figure(figsize=(size + 1.2, size * max(0.6, n_a / max(n_b, 1))), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = float(r.min()), float(r.max())
    half = max(abs(lo - 1.0), abs(hi - 1.0), 1e-3)  # symmetric around 1 (lossless = white)
    norm = Normalize(vmin=1.0 - half, vmax=1.0 + half)
    im = ax.imshow(r, cmap="RdBu_r", norm=norm, aspect="auto", origin="upper")
    ax.set_xticks(range(n_b))
    ax.set_xticklabels([f"{b:g}" for b in res.betas], rotation=45 if n_b > 10 else 0)
    ax.set_yticks(range(n_a))
    ax.set_yticklabels([f"{a:g}" for a in res.alphas])
    ax.set_xlabel("beta (upper clip, k_max = beta*L)")
    ax.set_ylabel("alpha (lower clip, k_min = alpha*L)")
    ax.set_title(f"H_PQA / H_BN   (L = {res.levels}, lambda = {res.lam:g})")
    if n_a * n_b <= 400:
        fs = 9 if n_b <= 10 else 7
        for ia in range(n_a):
            for jb in range(n_b):
                v = r[ia, jb]
                dark = abs(norm(v) - 0.5) > 0.3
                ax.text(jb, ia, f"{v:.3f}", ha="center", va="center", fontsize=fs,
                        color="white" if dark else "black")

    def mark(point: dict, **kw) -> None:
        a, b = point["alpha"], point["beta"]
        if point.get("ratio") is None:
            return
        ia = min(range(n_a), key=lambda i: abs(res.alphas[i] - a))
        jb = min(range(n_b), key=lambda j: abs(res.betas[j] - b))
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((jb - 0.5, ia - 0.5), 1, 1, fill=False, **kw))

    mark(res.paper_choice, edgecolor="darkorange", linewidth=2.0, linestyle="--",
         label=f"paper choice ({res.paper_choice['alpha']:g}, {res.paper_choice['beta']:g})")
    mark(res.best, edgecolor="lime", linewidth=3.0,
         label=f"best |ratio-1| ({res.best['alpha']:g}, {res.best['beta']:g})")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("H_PQA / H_BN  (1 = lossless; < 1 loss; > 1 noise)")
    if ax.patches:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=8,
                  frameon=False)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


@command("pmsm-entropy")
@click.option("--levels", "-L", "levels", type=int, default=PQA_LEVELS, show_default=True,
              help="Quantization levels L (integer >= 1).")
@click.option("--lam", type=float, default=PQA_LAMBDA, show_default=True,
              help="PQA range lambda (> 0).")
@json_option("Write the result as JSON.")
@click.option("--plot", "plot_path", type=str, default=None, metavar="DIR",
              help=f"Write the heatmap of the ratio over (alpha, beta) into this folder as {HEATMAP} (needs "
                   "matplotlib); a path ending in .png is the file itself.")
@verbosity(quiet_help="Print only errors, the selected point and the files written.",
           verbose_help="Also the ratio's limits in lambda/L and the ReLU ratio with units mixed.")
@cli_errors
def main(levels: int, lam: float, json_path: str | None, plot_path: str | None, verbosity: int) -> None:
    """Entropy analysis of PQA quantization: H_PQA/H_BN over the (alpha, beta) grid."""
    plot_dir = None
    if plot_path and not plot_path.lower().endswith(".png"):  # a folder (created if need be), as for pmsm-run
        plot_dir = check_plot_dir(plot_path, "the heatmap to")
        plot_path = os.path.join(plot_dir, HEATMAP)
    for p in (json_path, None if plot_dir else plot_path):
        if p:
            check_output_path(p)  # fail before any output
    res = ent.grid_search(levels=levels, lam=lam)
    say = click.echo if verbosity >= NORMAL else (lambda *args, **kwargs: None)

    bits = res.h_bn / math.log(2)
    say(f"H(BN)   = 1/2 log(2 pi e) = {res.h_bn:.4f} nats ({bits:.4f} bits)")
    say(f"H(ReLU) = 1/2 log 2 + 1/4 log(2 pi e) = {res.h_relu:.4f} nats; "
        f"H(ReLU)/H(BN) = {res.relu_ratio:.3f}")
    say(f"  note: {RELU_NOTE}")
    say("")
    say(f"H_PQA/H_BN, L = {res.levels}, lambda = {res.lam:g} "
        f"(lambda/L = {res.lam / res.levels:g}):")
    say(format_table(res))
    say("")
    say(f"rule: {res.rule}")
    click.echo(f"best:           {_fmt_point(res.best)}")  # the summary line
    say(f"best at beta=1: {_fmt_point(res.best_at_beta_1)}")
    say(f"paper choice:   {_fmt_point(res.paper_choice)}")
    if verbosity >= VERBOSE:
        limits = _result_json(res)["limits"]
        click.echo(f"limits: ratio -> {limits['lam_over_L_to_0']:.4f} as lambda/L -> 0, -> 0 as lambda/L -> inf; "
                   f"H(ReLU)/H(BN) with bits and nats mixed: {ent.relu_ratio_mixed_units():.3f}")

    if json_path:
        data = _result_json(res)
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"

        def write_json(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)

        _atomic_write(json_path, write_json)
        click.echo(f"wrote {json_path}")
    if plot_path:
        if plot_dir:
            try:
                os.makedirs(plot_dir, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create {plot_dir}: {exc.strerror or exc}") from None
        write_plot(res, plot_path)
        click.echo(f"wrote {plot_path}")


if __name__ == "__main__":  # pragma: no cover
    main()
