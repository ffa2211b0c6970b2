"""pmsm_compiler.pipeline (load → compile → verify, the chain of pmsm-compile, pmsm-demo and
bench/) and the facts it and the tools share, each defined once: Eq. 11, T, the PQA defaults."""

from __future__ import annotations

import onnx
import pytest

from pmsm_compiler.errors import InputError, VerificationError
from pmsm_compiler.limits import MAX_TIMESTEPS, parse_timesteps
from pmsm_compiler.models import shipped_model_path
from pmsm_compiler.pipeline import compile_and_verify, load_ann
from pmsm_compiler.verify import VerificationPolicy

PQA = str(shipped_model_path("resnet20_pqa_cifar10.onnx"))


@pytest.fixture(scope="module")
def unchecked():
    return compile_and_verify(PQA, "folded", check=False)


def test_unchecked_compile_skips_the_verification(unchecked):
    assert unchecked.verification == {"passed": None, "skipped": True}
    assert unchecked.passed and not unchecked.checked
    assert unchecked.mode == "folded" == unchecked.info["mode"]
    assert isinstance(unchecked.ann, onnx.ModelProto) and unchecked.model is unchecked.compiled.model
    unchecked.raise_if_failed()  # nothing to raise


def test_a_loaded_model_is_taken_as_is(unchecked):
    result = compile_and_verify(unchecked.ann, "exact", samples=4)
    assert result.ann is unchecked.ann
    assert result.passed and result.checked and result.verification["level_agreement"] == 1.0
    assert result.verification["data"] == "random normal, seed 0 (4 samples)"


def test_a_failed_verification_is_reported_then_raised_on_request(unchecked):
    # top-1 agreement cannot exceed 1: the policy fails whatever the SNN does
    result = compile_and_verify(unchecked.ann, "folded", samples=4, policy=VerificationPolicy(min_top1_agreement=1.5))
    assert not result.passed and result.verification["passed"] is False
    assert any("top-1 agreement" in f for f in result.verification["failures"])
    with pytest.raises(VerificationError, match=r"^pqa: verification failed: .*top-1 agreement") as exc:
        result.raise_if_failed("pqa")
    assert exc.value.exit_code == 1


def test_an_output_is_written_while_verifying_and_put_in_place_only_if_it_passed(unchecked, tmp_path):
    """``output``: the SNN is written to a temporary file while the verification runs; a passed
    (or skipped) verification puts it in place, byte for byte what ``save_model_atomic`` writes;
    a failed one, or an error on the way, leaves the old file and no temporary."""
    from pmsm_compiler.loading import save_model_atomic

    out = tmp_path / "m.snn.onnx"
    result = compile_and_verify(unchecked.ann, "folded", samples=4, output=out)
    assert result.passed and result.saved and not result.external_data and "save" in result.phase_seconds
    reference = tmp_path / "reference.onnx"
    save_model_atomic(result.model, reference)
    assert out.read_bytes() == reference.read_bytes()
    reference.unlink()

    out.write_text("old")
    failed = compile_and_verify(unchecked.ann, "folded", samples=4, output=out,
                                policy=VerificationPolicy(min_top1_agreement=1.5))
    assert not failed.passed and not failed.saved
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.snn.onnx"]
    with pytest.raises(InputError, match="data path not found"):
        compile_and_verify(unchecked.ann, "folded", samples=4, output=out, data=str(tmp_path / "missing.npz"))
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.snn.onnx"]
    skipped = compile_and_verify(unchecked.ann, "folded", check=False, output=out)
    assert skipped.saved and out.read_bytes() != b"old"


def _large_initializers(model):
    from pmsm_compiler import weights

    return [t for t in model.graph.initializer if weights.strippable(t) or t.data_location == onnx.TensorProto.EXTERNAL]


VIT = str(shipped_model_path("vit_cifar_pqa_cifar10.onnx"))


@pytest.mark.parametrize("path, shapes", [(PQA, None), (VIT, {"input": [2, 3, 32, 32]})],
                         ids=["resnet20", "vit-fixed-batch"])
@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_without_keep_weights_the_report_is_the_same(mode, path, shapes):
    """keep_weights=False (pmsm-compile) changes what the chain holds, not what it verifies."""
    from pmsm_compiler.weights import IN_MEMORY

    kept = compile_and_verify(path, mode, samples=8, input_shapes=shapes)
    released = compile_and_verify(path, mode, samples=8, input_shapes=shapes, keep_weights=False)
    assert released.verification == kept.verification and released.verification["passed"]
    assert released.model.graph == kept.model.graph  # the same SNN (its metadata holds the passes' timings)
    assert all(t.HasField("raw_data") for t in _large_initializers(kept.ann))
    # The ANN's structure, each large weight a reference to its bytes in the model file, and the
    # reference's: the same where the loaded model is the reference, else references to no data
    # (the ViT's, a model the compiler made: its computed constants evaluated).
    assert _references_to_file(released.ann, path) == {t.name: t.raw_data for t in _large_initializers(kept.ann)}
    if path == VIT:
        large = _large_initializers(released.compiled.reference)
        assert large and all(not t.HasField("raw_data") and t.external_data[0].value == IN_MEMORY for t in large)
    else:
        assert released.compiled.reference.graph == released.ann.graph
    assert [n.op_type for n in released.ann.graph.node] == [n.op_type for n in kept.ann.graph.node]


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_without_keep_weights_the_snn_is_verified_from_the_file_it_is_written_to(tmp_path, monkeypatch, mode):
    """With an output, the SNN's sessions map its weights from the temporary file the background
    save wrote, and its ModelProto is gone (no reference left but the test's) when the level
    comparison's session is built; the report is the one of a chain that keeps every weight, and
    the result's SNN refers to its weights in the output."""
    import sys

    from pmsm_compiler import compiler
    from pmsm_compiler.runtime import SNNSession

    kept = compile_and_verify(PQA, mode, samples=8)
    held, counts, folders = [], [], []
    compile_model, first_step, init = compiler.compile_model, SNNSession.run_first_step, SNNSession.__init__

    def capture(ann, *args, **kwargs):
        compiled = compile_model(ann, *args, **kwargs)
        held.append(compiled.model)
        return compiled

    def count_then_run(self, x, extra_outputs=()):
        if extra_outputs and not counts:
            counts.append(sys.getrefcount(held[0]) - 2)  # less getrefcount's argument and ``held``
        return first_step(self, x, extra_outputs)

    monkeypatch.setattr(compiler, "compile_model", capture)
    monkeypatch.setattr(SNNSession, "run_first_step", count_then_run)
    monkeypatch.setattr(SNNSession, "__init__", lambda self, *a, **k: (folders.append(k.get("weights_folder")),
                                                                        init(self, *a, **k))[1])
    out = tmp_path / "m.snn.onnx"
    released = compile_and_verify(PQA, mode, samples=8, output=out, keep_weights=False)
    assert released.saved and released.verification == kept.verification
    assert counts == [0] and folders == [str(tmp_path)]
    assert _references_to_file(released.model, str(out)) == {t.name: t.raw_data
                                                             for t in _large_initializers(kept.model)}


def test_a_failure_while_the_snn_is_prepared_beside_it_leaves_nothing(tmp_path, monkeypatch):
    """The SNN's session is built in a thread of its own while the ANN's check runs: when the
    check fails, the chain waits for that thread, writes nothing and raises the check's error."""
    import time

    from pmsm_compiler import pipeline

    done = []
    prepare = pipeline._snn_from_file

    def slow_prepare(*args):
        time.sleep(0.3)
        try:
            return prepare(*args)
        finally:
            done.append(True)

    def failing_check(*args, **kwargs):
        raise InputError("onnxruntime cannot run the model: boom")

    monkeypatch.setattr(pipeline, "_snn_from_file", slow_prepare)
    monkeypatch.setattr(pipeline, "_check_ann", failing_check)
    out = tmp_path / "m.snn.onnx"
    with pytest.raises(InputError, match="boom"):
        compile_and_verify(PQA, "folded", samples=4, output=out, keep_weights=False)
    assert done == [True] and list(tmp_path.iterdir()) == []


def test_without_keep_weights_a_save_that_fails_before_the_weights_are_written_verifies_from_memory(
        tmp_path, monkeypatch):
    """No file to map the SNN's weights from: the verification reads them from the ModelProto, as
    with keep_weights, and the writer's error is the chain's (nothing left behind)."""
    from pmsm_compiler import verify as verify_module
    from pmsm_compiler import weights

    def failing(model, fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    kept = compile_and_verify(PQA, "folded", samples=4)
    monkeypatch.setattr(weights, "write_model", failing)
    reports = []
    verify = verify_module.verify
    monkeypatch.setattr(verify_module, "verify", lambda *a, **k: reports.append(verify(*a, **k)) or reports[-1])
    with pytest.raises(OSError, match="No space left"):
        compile_and_verify(PQA, "folded", samples=4, output=tmp_path / "m.snn.onnx", keep_weights=False)
    assert reports == [kept.verification] and list(tmp_path.iterdir()) == []


def test_without_keep_weights_a_failed_verification_leaves_the_snn_referring_to_no_data(tmp_path):
    from pmsm_compiler.weights import IN_MEMORY

    out = tmp_path / "m.snn.onnx"
    failed = compile_and_verify(PQA, "folded", samples=4, output=out, keep_weights=False,
                                policy=VerificationPolicy(min_top1_agreement=1.5))
    assert not failed.passed and not failed.saved and not out.exists() and list(tmp_path.iterdir()) == []
    large = _large_initializers(failed.model)
    assert large and all(not t.HasField("raw_data") and t.external_data[0].value == IN_MEMORY for t in large)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_a_model_file_that_changes_while_its_weights_are_read_from_it_is_refused(tmp_path, monkeypatch, external):
    """Without keep_weights the verification's ANN sessions read the weights from the model file
    (or its external data file): a file changed meanwhile (here: written again, the same bytes, a
    later modification time) may not be the model that was compiled, so the chain refuses, in one
    line, and writes nothing."""
    import os
    import re

    from pmsm_compiler import verify as verify_module

    path = tmp_path / "m.onnx"
    onnx.save(onnx.load(PQA), path, save_as_external_data=external, location="m.onnx.data", size_threshold=1024)
    weights_path = tmp_path / ("m.onnx.data" if external else "m.onnx")
    verify = verify_module.verify

    def touch_then_verify(*args, **kwargs):
        weights_path.write_bytes(weights_path.read_bytes())
        os.utime(weights_path, ns=(os.stat(weights_path).st_mtime_ns + 10**9,) * 2)
        return verify(*args, **kwargs)

    files = sorted(p.name for p in tmp_path.iterdir())
    kept = compile_and_verify(str(path), "folded", samples=4)
    released = compile_and_verify(str(path), "folded", samples=4, keep_weights=False)
    assert released.verification == kept.verification and released.passed
    assert _references_to_file(released.ann, str(weights_path)) == {t.name: t.raw_data
                                                                   for t in _large_initializers(kept.ann)}
    monkeypatch.setattr(verify_module, "verify", touch_then_verify)
    out = tmp_path / "m.snn.onnx"
    with pytest.raises(InputError, match=rf"m\.onnx: {re.escape(str(weights_path))} changed on disk while it was "
                                         r"compiled and verified"):
        compile_and_verify(str(path), "folded", samples=4, output=out, keep_weights=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert compile_and_verify(str(path), "folded", samples=4, output=out, keep_weights=True).saved  # keeps its own


def test_a_structure_is_its_own_structure():
    """``_structure_of`` copies a model that holds weights, and returns one that holds none (the
    loaded model once its weights are referred to in its file) as it is: no copy made twice."""
    from pmsm_compiler.pipeline import _structure_of

    model = onnx.load(PQA)
    structure = _structure_of(model)
    assert structure is not model and _large_initializers(structure)
    assert not any(t.HasField("raw_data") for t in _large_initializers(structure))
    assert _structure_of(structure) is structure


def _references_to_file(model, path) -> dict:
    """{name: the bytes each large initializer of ``model`` refers to in file ``path``}; every one
    must refer to that file and hold no data."""
    import os

    refs = {}
    with open(path, "rb") as f:
        for t in _large_initializers(model):
            entries = {e.key: e.value for e in t.external_data}
            assert not t.HasField("raw_data") and entries["location"] == os.path.basename(path), t.name
            f.seek(int(entries["offset"]))
            refs[t.name] = f.read(int(entries["length"]))
    return refs


@pytest.mark.parametrize("path, shapes", [(PQA, None), (VIT, None), (VIT, {"input": [2, 3, 32, 32]})],
                         ids=["resnet20", "vit", "vit-fixed-batch"])
@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_without_keep_weights_nothing_holds_the_models_when_the_level_comparison_starts(monkeypatch, mode, path,
                                                                                       shapes):
    """The loaded model and the reference the compiler made of it (the ViT's computed constants
    evaluated, as in a fixed-batch or a legacy export; the ResNet-20's is the loaded model
    itself): protobuf frees their weights only with the whole message, and no reference is left
    but the test's own when the SNN's session of the level comparison is built (its first run with
    the spikes as outputs; exact mode's comparison as run comes before, without them)."""
    import sys

    from pmsm_compiler import compiler
    from pmsm_compiler.runtime import SNNSession

    held, counts = [], []  # the loaded model, then the reference
    compile_model, first_step = compiler.compile_model, SNNSession.run_first_step

    def capture(ann, *args, **kwargs):
        compiled = compile_model(ann, *args, **kwargs)
        held.extend([ann, compiled.reference])
        return compiled

    def count_then_run(self, x, extra_outputs=()):
        if extra_outputs and not counts:
            # less the test's own: getrefcount's argument, the loop's variable and ``held``
            counts.extend(sys.getrefcount(m) - 2 - sum(h is m for h in held) for m in held)
        return first_step(self, x, extra_outputs)

    monkeypatch.setattr(compiler, "compile_model", capture)
    monkeypatch.setattr(SNNSession, "run_first_step", count_then_run)
    for keep in (False, True):
        held.clear()
        counts.clear()
        assert compile_and_verify(path, mode, samples=4, input_shapes=shapes, keep_weights=keep).passed
        if path == VIT:
            assert held[0] is not held[1]  # constants evaluated: the case the reference is a model of its own
        if keep:
            assert max(counts) > 0  # the chain still holds them (the API's default)
        else:
            assert counts == [0, 0]


@pytest.mark.parametrize("keep", [True, False])
def test_exact_modes_plain_ann_session_is_freed_before_the_level_comparison(monkeypatch, keep):
    """The pipeline hands the plain ANN's session over to verify, which drops it after the
    comparison as run: gone when the level comparison's SNN session is built (a call with **
    kept it alive through the whole verification)."""
    import gc
    import weakref

    from pmsm_compiler import verify
    from pmsm_compiler.runtime import SNNSession

    plain, alive = [], []
    reference_session, first_step = verify.reference_session, SNNSession.run_first_step

    def capture(*args, **kwargs):
        session = reference_session(*args, **kwargs)
        if not kwargs.get("exposed", True):
            plain.append(weakref.ref(session))
        return session

    def check_then_run(self, x, extra_outputs=()):
        if extra_outputs and not alive:
            gc.collect()
            alive.append(plain[0]() is not None)
        return first_step(self, x, extra_outputs)

    monkeypatch.setattr(verify, "reference_session", capture)
    monkeypatch.setattr(SNNSession, "run_first_step", check_then_run)
    assert compile_and_verify(PQA, "exact", samples=4, keep_weights=keep).passed
    assert len(plain) == 1 and alive == [False]


def test_without_keep_weights_a_qdq_model_keeps_them_and_an_unchecked_compile_drops_them(tmp_path):
    """A Q/DQ model's verification also runs the deployed ANN and onnx.reference on the weights:
    kept. Without a check nothing reads them after the compile: dropped."""
    from hostile_corpus import qdq_model, save

    qdq = compile_and_verify(str(save(qdq_model(), tmp_path / "qdq.onnx")), "folded", samples=4, keep_weights=False)
    assert qdq.passed and qdq.verification["deployed_ann"] is not None
    assert qdq.ann.graph.initializer and not any(t.data_location == onnx.TensorProto.EXTERNAL
                                                 for t in qdq.ann.graph.initializer)
    skipped = compile_and_verify(PQA, "folded", check=False, keep_weights=False)
    assert skipped.verification == {"passed": None, "skipped": True}
    large = _large_initializers(skipped.ann)
    assert large and not any(t.HasField("raw_data") for t in large)


def test_a_compiled_snn_is_refused_as_input(unchecked, tmp_path):
    path = tmp_path / "model.snn.onnx"
    onnx.save(unchecked.model, str(path))
    with pytest.raises(InputError, match="already a compiled SNN"):
        load_ann(path)


@pytest.mark.parametrize("samples, seed, message", [(0, 0, "--samples must be >= 1"), (4, -1, "--seed must be >= 0")])
def test_bad_sampling_is_refused_before_loading(tmp_path, samples, seed, message):
    # the path does not exist: the refusal must come before the load
    with pytest.raises(InputError, match=message):
        compile_and_verify(str(tmp_path / "missing.onnx"), samples=samples, seed=seed)


@pytest.mark.parametrize("text, expected", [("8", [8]), (8, [8]), ("4,1,2,2", [1, 2, 4]), (" 1, 8 ", [1, 8])])
def test_parse_timesteps(text, expected):
    assert parse_timesteps(text) == expected


@pytest.mark.parametrize("text, message", [("", "must list integers"), ("1,x", "must be an integer or a comma list"),
                                           ("0,2", "must be >= 1"), (str(MAX_TIMESTEPS + 1), "over the limit")])
def test_parse_timesteps_refuses(text, message):
    with pytest.raises(InputError, match=message):
        parse_timesteps(text, "-T")


def test_eq11_power():
    from pmsm_compiler.runtime.report import E_SPIKE_PJ, TIMESTEP_MS, eq11_power_mw

    # the paper's Table 3 (QCFS, VGG-16): 3.08e5 spikes per image at T = 1 → 0.277 mW
    assert eq11_power_mw(3.08e5, 1) == pytest.approx(0.2772, abs=1e-4)
    # N·E_spike / (T·Δt): 1e9 spikes × 0.9 pJ = 0.9 mJ over 2 steps of 1 ms = 450 mW
    assert eq11_power_mw(1e9, 2) == pytest.approx(1e9 * E_SPIKE_PJ * 1e-12 / (2 * TIMESTEP_MS * 1e-3) * 1e3)
    assert eq11_power_mw(1e9, 2) == pytest.approx(450.0)


def test_pqa_defaults_are_defined_once():
    from pmsm_compiler import defaults, entropy

    assert defaults.PQA_DEFAULTS == {"levels": 8, "lam": 8.0, "alpha": -0.25, "beta": 1.0}
    assert entropy.PAPER_CHOICE == (defaults.PQA_ALPHA, defaults.PQA_BETA)
    torch = pytest.importorskip("torch")  # noqa: F841
    from pmsm_compiler.training.activations import PQA, PQA_DEFAULTS, ActivationSpec
    from pmsm_compiler.training.trainer import TrainConfig

    assert PQA_DEFAULTS is defaults.PQA_DEFAULTS
    spec, cfg, pqa = ActivationSpec(), TrainConfig(), PQA()
    for obj in (spec, cfg):
        assert (obj.levels, obj.lam, obj.alpha, obj.beta) == (8, 8.0, -0.25, 1.0)
    assert (pqa.levels, float(pqa.lam.detach()), pqa.alpha, pqa.beta) == (8, 8.0, -0.25, 1.0)
