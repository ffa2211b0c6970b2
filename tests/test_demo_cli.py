"""pmsm-demo: compile + run of a PQA model and a QCFS baseline on the bundled images."""

import json

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from tiny_models import export_tiny_pair  # noqa: E402

from pmsm_compiler.cli.demo import main  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return export_tiny_pair(tmp_path_factory.mktemp("demo"))


def test_demo_prints_both_tables(models, tmp_path):
    out = tmp_path / "demo.json"
    result = CliRunner().invoke(main, ["--model", models["pqa"], "--qcfs-model", models["qcfs"], "-T", "1,2",
                                       "--batch-size", "500", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "PMSM (PQA → AIF)" in result.output and "QCFS (→ IF)" in result.output
    assert "PMSM vs QCFS at equal T" in result.output
    reports = json.loads(out.read_text())
    pmsm = reports["PMSM (PQA → AIF)"]
    assert pmsm["samples"] == 1000 and len(pmsm["accuracy_by_t"]) == 2
    # the existing lines stay; the counting rules and the comparison at equal accuracy come after them
    lines = result.output.splitlines()
    assert lines.count(f"{'T':>3} {'ANN acc':>8} {'SNN acc':>8} {'spikes/image':>13} {'power (mW)':>11}") == 2
    assert lines.count(f"{'T':>3} {'events/image':>13} {'energy/image, spikes rule':>26} {'events rule':>12}") == 2
    for needle in ("neuron-steps at the lower cap", "at equal accuracy (target",
                   "PMSM vs QCFS at equal T (energy per image", "PMSM vs QCFS at equal accuracy (target"):
        assert needle in result.output, needle
    eq = reports["equal_accuracy"]
    qcfs = reports["QCFS (→ IF)"]
    # default target: the best accuracy both reach within T <= 2; each at the first T that reaches it
    assert eq["max_t"] == 2 and eq["target"] == min(max(pmsm["accuracy_by_t"]), max(qcfs["accuracy_by_t"]))
    for label, r in (("PMSM", pmsm), ("QCFS", qcfs)):
        m = eq["models"][label]
        t = next(t for t, a in enumerate(r["accuracy_by_t"], 1) if a >= eq["target"])
        assert m["reached"] and m["t"] == t
        assert m["energy_per_image_uj"] == {rule: r["energy"]["per_image_uj_by_t"][rule][t - 1]
                                            for rule in ("spikes", "events")}
        assert f"  {label}: T={t} (" in result.output
    # QCFS fires binary spikes: one event per spike
    assert qcfs["events_per_image"] == qcfs["spikes_per_image"] and pmsm["events_per_image"] < pmsm["spikes_per_image"]


def test_demo_target_accuracy_above_both(models):
    result = CliRunner().invoke(main, ["--model", models["pqa"], "--qcfs-model", models["qcfs"], "-T", "1",
                                       "--batch-size", "500", "--target-accuracy", "100%"])
    assert result.exit_code == 0, result.output
    assert "PMSM vs QCFS at equal accuracy (target 100.00%: given)" in result.output
    assert "PMSM: not reached within T=1" in result.output and "QCFS: not reached within T=1" in result.output


def test_demo_exact_mode_is_lossless_at_t1(models):
    result = CliRunner().invoke(main, ["--model", models["pqa"], "-T", "1", "--mode", "exact", "--batch-size", "500"])
    assert result.exit_code == 0, result.output
    assert "agree on 100.00% of predictions at T=1" in result.output


@pytest.mark.parametrize("args", [["--model", "/nonexistent.onnx"], ["-T", "0"], ["-T", "a,b"],
                                  ["--target-accuracy", "2"]])
def test_demo_bad_input(models, args):
    if "--model" not in args:
        args = ["--model", models["pqa"]] + args
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def sparse_model(tmp_path_factory):
    """A second PQA model (other weights, L = 4) standing in for the shipped sparse one."""
    from pmsm_compiler.training.activations import ActivationSpec, quantized_activations
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.zoo import build_model

    torch.manual_seed(1)
    net = build_model("resnet_tiny", act=ActivationSpec("pqa", 4, 4.0, -0.25, 1.0))
    for _, q in quantized_activations(net):
        q.lam.data.fill_(2.0)
    path = str(tmp_path_factory.mktemp("sparse") / "sparse.onnx")
    export_onnx(net.eval(), path)
    return path


def test_demo_three_models(models, sparse_model, tmp_path):
    out = tmp_path / "demo.json"
    result = CliRunner().invoke(main, ["--model", models["pqa"], "--sparse-model", sparse_model,
                                       "--qcfs-model", models["qcfs"], "-T", "1,2", "--batch-size", "500",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    reports = json.loads(out.read_text())
    labels = ["PMSM (PQA → AIF)", "PMSM sparse (PQA → AIF, spike-penalized)", "QCFS (→ IF)"]
    assert list(reports) == labels + ["equal_accuracy"]
    assert reports[labels[0]]["spikes_per_image"] != reports[labels[1]]["spikes_per_image"]  # two models, not one
    for name in ("PMSM", "PMSM sparse"):
        assert f"\n{name} vs QCFS at equal T (spikes per image" in result.output
        assert f"\n{name} vs QCFS at equal T (energy per image" in result.output
    assert "PMSM vs PMSM sparse vs QCFS at equal accuracy (target" in result.output
    eq = reports["equal_accuracy"]
    assert list(eq["models"]) == ["PMSM", "PMSM sparse", "QCFS"]
    # default target: the best accuracy every model reaches within T <= 2, so each reaches it
    assert eq["target"] == min(max(reports[label]["accuracy_by_t"]) for label in labels)
    assert all(m["reached"] for m in eq["models"].values())


def test_demo_shipped_sparse_model_only_beside_the_shipped_dense_one(models, sparse_model, monkeypatch):
    from pmsm_compiler.cli import demo

    shipped = {demo.PQA_MODEL: models["pqa"], demo.SPARSE_MODEL: sparse_model, demo.QCFS_MODEL: None}
    monkeypatch.setattr(demo, "_shipped", shipped.get)
    result = CliRunner().invoke(main, ["-T", "1", "--batch-size", "500"])
    assert result.exit_code == 0, result.output
    assert "PMSM sparse (PQA → AIF, spike-penalized): sparse.onnx" in result.output
    assert "PMSM vs PMSM sparse at equal accuracy" in result.output
    result = CliRunner().invoke(main, ["--model", models["qcfs"], "-T", "1", "--batch-size", "500"])
    assert result.exit_code == 0, result.output
    assert "PMSM sparse" not in result.output  # a user's own model is not compared with our sparse one


def test_demo_states_a_fine_tunes_budget_with_the_stages_it_started_from():
    from pmsm_compiler.cli.demo import _training_budget

    assert _training_budget({"training": {"epochs_done": 120}}) == "trained 120 epochs"
    card = {"training": {"epochs_done": 10},
            "pretraining": {"epochs_done": 3, "pretraining": {"epochs_done": 120}}}
    assert _training_budget(card) == "fine-tuned 10 epochs after 120 + 3 earlier ones"
