"""bench/vit_results.py on a tiny PQA ViT (random weights, λ calibrated on images) and 20 bundled
images: both compiles run, exact mode agrees with the ANN on every image at T = 1, and every figure
of the Markdown section comes from the summary."""

from __future__ import annotations

import json

import pytest

from bench_scripts import load_bench_script

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from pmsm_compiler.data import NORMALIZATIONS, load_bundled_sample
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.trainer import Normalizer
    from pmsm_compiler.training.zoo import build_model
    from pmsm_compiler.training.zoo.vit import calibrate_lambdas

    torch.manual_seed(0)
    net = build_model("vit_tiny", act="pqa").eval()
    x = Normalizer(*NORMALIZATIONS["cifar10"])(torch.from_numpy(load_bundled_sample().x[:32]))
    calibrate_lambdas(net, x)
    path = str(tmp_path_factory.mktemp("vit") / "vit_tiny.onnx")
    export_onnx(net, path)
    return path


def test_vit_results_small(tiny_vit, tmp_path):
    bench = load_bench_script("vit_results")
    out, js, fig = tmp_path / "vit.md", tmp_path / "vit.json", tmp_path / "vit.png"
    page = tmp_path / "results.md"  # --into: the section replaces its earlier block, the rest stays
    page.write_text("# Results\n\nResNet tables\n\n<!-- section: bench/vit_results.py -->\nold ViT figures\n"
                    "<!-- end of section: bench/vit_results.py -->\n\nafter\n")
    assert bench.main(["--model", tiny_vit, "--data", "bundled", "--limit", "20", "--max-t", "3",
                       "--batch-size", "10", "--out", str(out), "--json", str(js), "--figure", str(fig),
                       "--into", str(page)]) == 0
    summary = json.loads(js.read_text())["summary"]
    assert summary["samples"] == 20 and summary["max_t"] == 3
    assert summary["t1_agreement"]["exact"] == 1.0  # the lossless claim, checked exactly
    assert summary["accuracy_by_t"]["exact"][0] == summary["ann_accuracy"]
    assert summary["folded_t1_flip_rate"] == pytest.approx(1 - summary["t1_agreement"]["folded"])
    for mode in ("exact", "folded"):
        assert len(summary["accuracy_by_t"][mode]) == 3
        assert summary["drift_by_t"][mode] == pytest.approx([a - summary["ann_accuracy"]
                                                             for a in summary["accuracy_by_t"][mode]])
    finer = summary["finer_levels"]  # the ANN with L·T levels: at T = 1 it is the ANN itself
    assert len(finer["accuracy_by_t"]) == 3 and finer["accuracy_by_t"][0] == summary["ann_accuracy"]
    assert finer["gap_by_t"]["exact"] == pytest.approx([a - f for a, f in zip(summary["accuracy_by_t"]["exact"],
                                                                              finer["accuracy_by_t"])])
    assert finer["largest_gap"]["exact"] in finer["gap_by_t"]["exact"] and 0 <= finer["unrounded"] <= 1
    work = summary["work"]["exact"]
    assert work["dense_ops"] > 0 and work["sops"] > 0  # LayerNorm/Softmax/MatMul wrappers and spikes
    text = out.read_text()
    assert f"{100 * summary['ann_accuracy']:.2f} %" in text and text.count("\n| ") >= 3 + 6
    assert "| T | ANN (%) | SNN exact (%) | SNN folded (%) | ANN, L·T levels (%) |" in text
    assert f"that ANN gives {100 * finer['unrounded']:.2f} %" in text
    assert fig.stat().st_size > 0
    assert "the lossless claim holds." in text
    assert page.read_text() == ("# Results\n\nResNet tables\n\n<!-- section: bench/vit_results.py -->\n" + text +
                                "<!-- end of section: bench/vit_results.py -->\n\nafter\n")
    broken = bench.markdown(dict(summary, t1_agreement=dict(summary["t1_agreement"], exact=0.95)), tiny_vit, "cmd", None)
    # --from-json renders the same section from the saved run, without running anything
    again = tmp_path / "again.md"
    assert bench.main(["--from-json", str(js), "--out", str(again), "--figure", str(fig)]) == 0
    rendered = again.read_text()
    assert "`, rendered again by `python bench/vit_results.py --from-json " in rendered
    assert rendered.splitlines()[2].count("`") == 4
    assert rendered.replace(rendered.splitlines()[2], text.splitlines()[2]) == text  # all but the "Produced by" line
    assert "| synaptic, spikes rule (neuromorphic) |" in text and "each later step |" in text
    assert "L·T levels" not in bench.markdown(dict(summary, finer_levels=None), tiny_vit, "cmd", None)
    assert "the lossless claim **does not hold** (the prediction differs on 1 image)." in broken  # 5 % of 20


def test_vit_results_refuses_a_json_it_did_not_write(tmp_path):
    bench = load_bench_script("vit_results")
    other = tmp_path / "other.json"
    other.write_text('{"rows": []}')
    with pytest.raises(SystemExit) as exc:
        bench.main(["--from-json", str(other)])
    assert exc.value.code == 2


def test_vit_results_refuses_a_missing_model(tmp_path):
    bench = load_bench_script("vit_results")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--model", str(tmp_path / "nope.onnx"), "--data", "bundled"])
    assert exc.value.code == 2
