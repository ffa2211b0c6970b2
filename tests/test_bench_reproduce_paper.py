"""bench/reproduce_paper.py on a small subset: tiny PQA and QCFS models, 200 images, T <= 8.

The written results.md must hold PMSM vs QCFS at equal T and at equal accuracy under both counting
rules, the counting rules at T = 1, and the accuracy-vs-energy figure; its numbers must be the
ones in the written results.json.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bench_scripts import load_bench_script  # noqa: E402
from tiny_models import export_tiny_pair  # noqa: E402

from pmsm_compiler.data import load_bundled_sample  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("reproduce")
    paths = export_tiny_pair(d)
    sample = load_bundled_sample()
    (d / "data").mkdir()
    np.savez(d / "data" / "test.npz", x=sample.x, y=sample.y)
    out = d / "results.md"
    # a page that already holds another script's section (bench/vit_results.py --into): it must survive
    out.write_text("# old results\n\nstale\n\n<!-- section: bench/vit_results.py -->\n## A PQA ViT\n"
                   "<!-- end of section: bench/vit_results.py -->\n")
    script = load_bench_script("reproduce_paper")
    assert script.main(["--data", str(d / "data"), "--pqa", paths["pqa"], "--qcfs", paths["qcfs"], "--out", str(out),
                        "--figures", str(d / "figures"), "--max-t", "8", "--limit", "200", "--qcfs-modes",
                        "folded", "--sparse", paths["pqa"], "--sparse-modes", "folded"]) == 0
    return d, out.read_text(), json.loads((d / "results.json").read_text())


def test_sections_and_figures(run):
    d, text, _ = run
    assert "stale" not in text and text.endswith("<!-- section: bench/vit_results.py -->\n## A PQA ViT\n"
                                                 "<!-- end of section: bench/vit_results.py -->\n")
    for heading in ("## Counting rules at T = 1", "## PMSM vs QCFS at equal T, both counting rules",
                    "## PMSM vs QCFS at equal accuracy, both counting rules", "## Accuracy vs energy per image"):
        assert heading in text, heading
    assert "![accuracy vs energy](figures/accuracy_vs_energy.png)" in text
    for name in ("accuracy_vs_energy.png", "accuracy_vs_t.png", "entropy_heatmap.png"):
        assert (d / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_sparse_model_is_compared_with_qcfs_as_pmsm_is(run):
    """--sparse (here the tiny PQA model again, standing in): its own equal-T and equal-accuracy sections,
    rows in Table 1 and the counting rules, and its equal-accuracy selections in results.json."""
    _, text, runs = run
    sparse, qcfs = runs["PMSM sparse/folded"], runs["QCFS/folded"]
    for heading in ("## PMSM sparse vs QCFS at equal T, both counting rules",
                    "## PMSM sparse vs QCFS at equal accuracy, both counting rules"):
        assert heading in text, heading
    assert f"| PMSM sparse | folded | {100 * sparse['ann_accuracy']:.2f} | {100 * sparse['accuracy_by_t'][0]:.2f} |" in text
    default, at_t1 = runs["equal_accuracy_sparse"]
    assert set(default["models"]) == {"PMSM sparse", "QCFS"}
    assert at_t1["target"] == sparse["accuracy_by_t"][0] and at_t1["target_rule"] == "PMSM sparse's accuracy at T = 1"
    ratio = qcfs["spikes_per_image_by_t"][0] / sparse["spikes_per_image_by_t"][0]
    assert f"- Spikes per image at T = 1: QCFS / PMSM sparse = {ratio:.3f}" in text


def test_equal_t_rows_are_the_runs_numbers(run):
    _, text, runs = run
    pmsm, qcfs = runs["PMSM/folded"], runs["QCFS/folded"]
    section = text.split("## PMSM vs QCFS at equal T, both counting rules")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2", "4", "8"]
    for row in rows:
        t = int(row.split("|")[1])
        cells = [c.strip() for c in row.split("|")[1:-1]]
        p_uj = pmsm["energy"]["per_image_uj_by_t"]
        q_uj = qcfs["energy"]["per_image_uj_by_t"]
        assert cells[5] == f"{p_uj['spikes'][t - 1]:.3f} / {p_uj['events'][t - 1]:.3f}"
        assert cells[6] == f"{q_uj['spikes'][t - 1]:.3f} / {q_uj['events'][t - 1]:.3f}"


def test_equal_accuracy_is_the_runs_selection(run):
    _, text, runs = run
    pmsm, qcfs = runs["PMSM/folded"], runs["QCFS/folded"]
    default, at_pmsm_t1 = runs["equal_accuracy"]
    assert default["max_t"] == 8
    assert default["target"] == min(max(pmsm["accuracy_by_t"]), max(qcfs["accuracy_by_t"]))
    assert at_pmsm_t1["target"] == pmsm["accuracy_by_t"][0] and at_pmsm_t1["target_rule"] == "PMSM's accuracy at T = 1"
    for eq in (default, at_pmsm_t1):
        for label, r in (("PMSM", pmsm), ("QCFS", qcfs)):
            m = eq["models"][label]
            t = next((t for t, a in enumerate(r["accuracy_by_t"], 1) if a >= eq["target"]), None)
            assert m["t"] == t
            if t is not None:
                e = m["energy_per_image_uj"]
                assert f"| {label} | {t} | {100 * r['accuracy_by_t'][t - 1]:.2f} |" in text
                assert f"| {e['spikes']:.3f} | {e['events']:.3f} |" in text
    assert "QCFS / PMSM energy per image" in text or "does not reach it" in text
