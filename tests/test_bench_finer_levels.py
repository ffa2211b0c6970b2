"""bench/finer_levels.py: rate coding over T steps is the quantizer with L·T levels.

The claim the script rests on is checked exactly where it is exact: a network whose only neuron
layer sees the input unchanged (a 1×1 convolution of weight 1), inputs on a dyadic grid that
never sits on a rounding tie for T < 128, λ a power of two, so every float operation on both
sides is exact. There the SNN's mean output over T steps (exact mode, the runtime) equals the
ANN whose PQA has L·T levels, bit for bit, inside the caps and beyond them. Then the script
itself on the tiny PQA model: L multiplied on every quantizer; a QCFS model is refused.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from bench_scripts import load_bench_script

torch = pytest.importorskip("torch")

LEVELS, LAMBDA = 4, 2.0  # s = 1/2: inputs below are exact multiples of s/512


@pytest.fixture(scope="module")
def first_layer_model(tmp_path_factory):
    from pmsm_compiler.training.activations import PQA
    from pmsm_compiler.training.export import export_onnx

    conv = torch.nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    net = torch.nn.Sequential(conv, PQA(levels=LEVELS, lam=LAMBDA, alpha=-0.5, beta=1.0), torch.nn.Flatten()).eval()
    path = str(tmp_path_factory.mktemp("first") / "first.onnx")
    export_onnx(net, path, input_shape=(1, 1, 8, 8))
    return path


def dyadic_inputs(n: int, seed: int = 0) -> np.ndarray:
    """x/s = m/64 + 1/256: T·x/s + ½ is never an integer for T < 128 (no ties), and spans the caps
    αL = −2 and βL = 4 on both sides."""
    m = np.random.default_rng(seed).integers(-4 * 64, 7 * 64, size=(n, 1, 8, 8))
    return ((m / 64 + 1 / 256) * (LAMBDA / LEVELS)).astype(np.float32)


@pytest.mark.parametrize("timesteps", [1, 2, 4, 8, 16])
def test_t_steps_of_rate_coding_are_the_quantizer_with_l_times_t_levels(first_layer_model, timesteps):
    from pmsm_compiler.pipeline import compile_and_verify
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.sessions import make_session

    bench = load_bench_script("finer_levels")
    ann = onnx.load(first_layer_model)
    compiled = compile_and_verify(ann, "exact")
    compiled.raise_if_failed("first.onnx")
    x = dyadic_inputs(16)
    snn_mean = SNNSession(compiled.model).run_batch(x, timesteps).mean_outputs
    finer = make_session(bench.with_finer_levels(ann, timesteps))
    expected = finer.run(None, {finer.get_inputs()[0].name: x})[0]
    assert np.array_equal(snn_mean, expected)
    if timesteps > 1:  # and it is not the model's own quantizer: the levels are finer
        coarse = make_session(ann).run(None, {"input": x})[0]
        assert not np.array_equal(snn_mean, coarse)


def test_with_finer_levels_multiplies_every_quantizers_levels(tmp_path):
    from tiny_models import export_tiny_pair

    bench = load_bench_script("finer_levels")
    paths = export_tiny_pair(tmp_path)
    model = onnx.load(paths["pqa"])
    finer = bench.with_finer_levels(model, 3)
    levels = [(n, f) for n, f in zip(model.graph.node, finer.graph.node) if n.domain == "pmsm"]
    assert levels
    for before, after in levels:
        l0 = next(a.i for a in before.attribute if a.name == "L")  # a copy: the model keeps its L
        assert next(a.i for a in after.attribute if a.name == "L") == 3 * l0
        assert [a for a in before.attribute if a.name != "L"] == [a for a in after.attribute if a.name != "L"]
    # QCFS becomes binary IF neurons: T steps of those are not its quantizer with L·T levels
    with pytest.raises(SystemExit, match="pmsm::QCFS"):
        bench.with_finer_levels(onnx.load(paths["qcfs"]), 3)


def test_finer_levels_script(tmp_path, capsys):
    from tiny_models import export_tiny_pair

    bench = load_bench_script("finer_levels")
    path = export_tiny_pair(tmp_path)["pqa"]
    js = tmp_path / "finer.json"
    assert bench.main(["--model", path, "--data", "bundled", "--limit", "40", "--t", "1,2,inf",
                       "--json", str(js)]) == 0
    rows = json.loads(js.read_text())["rows"]
    assert [r["t"] for r in rows] == [1, 2, None]  # None: T → ∞
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    from pmsm_compiler.data import load_dataset

    own = bench.accuracy(onnx.load(path), load_dataset("bundled").evenly_spaced(40), 100)
    assert rows[0]["accuracy"] == own  # T = 1: the model's own ANN
    assert "| ∞ (L·4096) |" in capsys.readouterr().out


def test_finer_levels_refuses_bad_t(tmp_path):
    from tiny_models import export_tiny_pair

    bench = load_bench_script("finer_levels")
    path = export_tiny_pair(tmp_path)["pqa"]
    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--model", path, "--data", "bundled", "--t", bad])
        assert exc.value.code == 2


def test_snn_accuracy_from_either_json(tmp_path):
    bench = load_bench_script("finer_levels")
    vit = tmp_path / "vit.json"
    vit.write_text(json.dumps({"summary": {"accuracy_by_t": {"exact": [0.5, 0.6]}}}))
    assert bench.snn_accuracy_by_t(str(vit), None) == {"exact": [0.5, 0.6]}
    paper = tmp_path / "results.json"
    paper.write_text(json.dumps({"PMSM/folded": {"accuracy_by_t": [0.8]}, "PMSM sparse/exact": {"accuracy_by_t": [0.7]},
                                 "equal_accuracy": {}}))
    assert bench.snn_accuracy_by_t(str(paper), "PMSM") == {"folded": [0.8]}
    assert bench.snn_accuracy_by_t(str(paper), "PMSM sparse") == {"exact": [0.7]}
    with pytest.raises(SystemExit, match="has no entries for 'QCFS'.*PMSM, PMSM sparse"):
        bench.snn_accuracy_by_t(str(paper), "QCFS")
    with pytest.raises(SystemExit, match="--snn-model"):
        bench.snn_accuracy_by_t(str(paper), None)
