"""bench/fuzz_compiler.py: the summary (compiled / refused by reason / failed by category), the
smallest failing network per category written with its replay command, the exit code."""

import json

import onnx

from bench_scripts import load_bench_script
from pmsm_compiler.testing import fuzz

module = load_bench_script("fuzz_compiler")


def _record(seed, nodes, results, version=fuzz.GENERATOR_VERSION):
    return {"seed": seed, "version": version, "description": f"seed {seed}: test", "nodes": nodes, "ops": ["Conv"],
            "results": results, "seconds": 0.1}


def _result(check, mode, status, category=None, message=""):
    return fuzz.CheckResult(check, mode, "all" if check != "compile" else None, status, category, message).to_dict()


def test_summary_examples_and_exit_code(tmp_path, monkeypatch):
    fake = {
        3: _record(3, 9, [_result("compile", "exact", "ok"), _result("parity", "exact", "fail", "exact-levels", "a"),
                          _result("compile", "folded", "refused", message="Neg 'n_1' is non-linear in spiking input")]),
        4: _record(4, 5, [_result("compile", "exact", "ok"), _result("parity", "exact", "fail", "exact-levels", "b"),
                          _result("compile", "folded", "refused", message="Neg 'n_7' is non-linear in spiking input")]),
        5: _record(5, 4, [_result("compile", "exact", "ok"), _result("compile", "folded", "ok")]),
    }
    monkeypatch.setattr(fuzz, "run_graph", lambda seed, **kwargs: fake[seed])
    out, summary_path = tmp_path / "examples", tmp_path / "summary.json"
    code = module.main(["--seeds", "3,4,5", "--json", str(summary_path), "--out-dir", str(out)])
    assert code == 1
    summary = json.loads(summary_path.read_text())
    assert summary["graphs"] == 3 and summary["graphs_with_failures"] == 2
    assert summary["compiled"] == {"exact": 3, "folded": 1}
    assert summary["refused"] == {"folded": {"Neg '…' is non-linear in spiking input": 2}}
    assert summary["failed_graphs"] == {"exact-levels": 2}
    assert summary["smallest"]["exact-levels"]["seed"] == 4  # 5 nodes, fewer than seed 3's 9
    readme = (out / "exact-levels" / "README.txt").read_text()
    assert "python bench/fuzz_compiler.py --seeds 4 --verbose --modes exact --opt-levels all" in readme
    model = onnx.load(str(out / "exact-levels" / "model.onnx"))
    assert model.SerializeToString() == fuzz.random_network(4)[0].SerializeToString()
    assert summary["command"].startswith("python bench/fuzz_compiler.py --seeds 3,4,5")


def test_a_failure_found_under_an_older_generator_replays_under_it(tmp_path, monkeypatch):
    """A record of generator version 1 (or one written before records had a version) names its
    version in the replay command and its example is the network version 1 builds."""
    seed = next(s for s in range(400) if fuzz.random_network(s, version=1)[1] != fuzz.random_network(s)[1])
    fake = _record(seed, 5, [_result("parity", "exact", "fail", "exact-levels", "b")], version=1)
    monkeypatch.setattr(fuzz, "run_graph", lambda s, **kwargs: fake)
    out = tmp_path / "examples"
    assert module.main(["--seeds", str(seed), "--out-dir", str(out)]) == 1
    readme = (out / "exact-levels" / "README.txt").read_text()
    assert f"--seeds {seed} --verbose --generator-version 1 --modes exact" in readme
    model = onnx.load(str(out / "exact-levels" / "model.onnx"))
    assert model.SerializeToString() == fuzz.random_network(seed, version=1)[0].SerializeToString()
    assert model.SerializeToString() != fuzz.random_network(seed)[0].SerializeToString()


def test_a_real_graph(tmp_path):
    path = tmp_path / "summary.json"
    code = module.main(["--seeds", "5", "--modes", "exact,folded", "--opt-levels", "disable", "--cli-every", "0",
                        "--json", str(path)])
    summary = json.loads(path.read_text())
    assert summary["graphs"] == 1 and code == (1 if summary["graphs_with_failures"] else 0)
    assert summary["op_coverage"] and summary["opt_levels"] == ["disable"]


def test_refusal_reasons_group_without_names_and_numbers():
    assert fuzz.refusal_reason("ReduceL1 'ReduceL1_14' is non-linear; supported: Abs") == "ReduceL1 '…' is non-linear"
    assert fuzz.refusal_reason("Floor 'f': not preceded by Add(x, 0.5)") == "Floor '…': not preceded by Add(x, N)"
