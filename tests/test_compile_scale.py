"""Compile at scale (issue 20): the work the compiler does grows with the model, not with its square,
and no step holds a second copy of the weights it does not need."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from pmsm_compiler.passes.graph_utils import forget_names, fresh
from tiny_models import chain_model


def _graph():
    x = gs.Variable("x", dtype=np.float32, shape=[1, 4])
    y = gs.Variable("y", dtype=np.float32, shape=[1, 4])
    return gs.Graph(nodes=[gs.Node("Relu", name="relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y])


def test_fresh_avoids_graph_names_and_the_names_it_handed_out():
    graph = _graph()
    assert fresh(graph, "z") == "z"
    assert fresh(graph, "x") == "x_1"
    assert fresh(graph, "relu") == "relu_1"
    # a name handed out is taken even before the tensor that carries it joins the graph
    assert fresh(graph, "z") == "z_1"
    assert fresh(graph, "x") == "x_2"


def test_fresh_sees_the_graph_again_after_forget_names():
    graph = _graph()
    assert fresh(graph, "z") == "z"
    forget_names(graph)  # as the pass manager does between passes: "z" never joined the graph
    assert fresh(graph, "z") == "z"
    graph.nodes.append(gs.Node("Relu", name="n", inputs=[graph.outputs[0]],
                               outputs=[gs.Variable("w", dtype=np.float32)]))
    forget_names(graph)
    assert fresh(graph, "w") == "w_1" and fresh(graph, "n") == "n_1"


def test_passes_walk_the_graph_a_fixed_number_of_times(monkeypatch, tmp_path):
    """fresh() walked the whole graph on every call: O(nodes²) per compile (8 of 9.7 s of ViT-S).
    The walks over the graph (gs.Graph.tensors) do not grow with the number of layers."""
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model

    original = gs.Graph.tensors
    walks = []
    monkeypatch.setattr(gs.Graph, "tensors", lambda self, *a, **k: walks.append(1) or original(self, *a, **k))
    counts = {}
    for blocks in (2, 8):
        onnx.save(chain_model(blocks), tmp_path / f"chain{blocks}.onnx")
        model = load_model(tmp_path / f"chain{blocks}.onnx")
        walks.clear()
        assert len(compile_model(model, mode="folded").info.layers) == blocks
        counts[blocks] = len(walks)
    assert counts[8] == counts[2], counts


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_the_folds_hold_no_weight_they_replaced(monkeypatch, tmp_path, mode):
    """The passes ask whether an input is constant without reading it (``is_const``), and a fold
    drops the values of the weight it replaced (``replace_constant``): onnx-graphsurgeon keeps
    what it read in the constant, which its reference cycles kept until the collector ran, so the
    compile held a second copy of every weight. Counted when the SNN is exported, with the
    collector off: no weight read from the model is alive then but those the SNN keeps as they are
    (exact mode folds nothing and reads none)."""
    import gc
    import weakref

    from pmsm_compiler import compiler, onnx_utils
    from pmsm_compiler.loading import load_model

    onnx.save(chain_model(4, channels=32), tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx")
    read, alive = [], []
    load, export = onnx_utils._RawDataValues.load, compiler.export_model

    def recording_load(self):
        array = load(self)
        read.append((self.tensor.name, weakref.ref(array)))
        return array

    def counting_export(*args, **kwargs):
        alive.extend(name for name, ref in read if ref() is not None)
        return export(*args, **kwargs)

    monkeypatch.setattr(onnx_utils._RawDataValues, "load", recording_load)
    monkeypatch.setattr(compiler, "export_model", counting_export)
    gc.disable()
    try:
        snn = compiler.compile_model(model, mode=mode).model
    finally:
        gc.enable()
    kept = {t.name for t in snn.graph.initializer}
    if mode == "exact":
        assert read == []  # nothing folded: no weight's values read at all
    else:
        assert read and not [name for name in alive if name not in kept], (read, alive)


# ---------------------------------------------------------------------------------------------
# the checker and shape inference on a weight-free skeleton (pmsm_compiler.weights)


def _weight_bytes(model) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def test_skeleton_infers_what_the_whole_model_infers(tmp_path):
    from pmsm_compiler import weights
    from pmsm_compiler.loading import load_model

    model = chain_model(3, channels=16)
    skel = weights.skeleton(model)
    assert _weight_bytes(skel) < weights.STRIP_BYTES * 4 < _weight_bytes(model) / 4
    stripped = [t.name for t in model.graph.initializer if weights.strippable(t)]
    assert stripped == ["w0", "w1", "w2"]  # 1,728 and 9,216 bytes; the λ and fc.w (640 bytes) stay
    onnx.save(model, tmp_path / "m.onnx")
    loaded = load_model(tmp_path / "m.onnx")
    whole = onnx.shape_inference.infer_shapes(onnx.load(tmp_path / "m.onnx"), check_type=True, strict_mode=True,
                                              data_prop=True)
    assert loaded.SerializeToString() == whole.SerializeToString()


def test_the_checker_and_shape_inference_never_see_the_weights(tmp_path, monkeypatch):
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model

    model = chain_model(4, channels=32)
    onnx.save(model, tmp_path / "m.onnx")
    seen = []
    check, infer = onnx.checker.check_model, onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.checker, "check_model", lambda m, *a, **k: seen.append(m.ByteSize()) or check(m, *a, **k))
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes",
                        lambda m, *a, **k: seen.append(m.ByteSize()) or infer(m, *a, **k))
    compile_model(load_model(tmp_path / "m.onnx"), mode="folded")
    assert len(seen) >= 3 and max(seen) < _weight_bytes(model) / 4, seen


@pytest.mark.parametrize("delta", [-4, 4])
def test_a_large_weight_of_the_wrong_size_is_refused_in_one_line(tmp_path, delta):
    from pmsm_compiler.errors import InputError
    from pmsm_compiler.loading import load_model

    model = chain_model(2, channels=16)
    w = model.graph.initializer[2]
    assert w.name == "w1"
    w.raw_data = bytes(len(w.raw_data) + delta)
    onnx.save(model, tmp_path / "m.onnx")
    message = (r"^invalid ONNX model .*: ONNX checker: TensorProto \(tensor name: w1\) raw_data "
               rf"size \({9216 + delta} bytes\) does not match the declared shape and type \(9216 bytes required\)$")
    with pytest.raises(InputError, match=message):
        load_model(tmp_path / "m.onnx")


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_the_compiled_weights_sizes_are_checked_on_loading_only(tmp_path, monkeypatch, mode):
    """The size check reads every large raw_data (a copy each): the input's on loading; the
    compiler's own output holds arrays' bytes, of their declared sizes by construction."""
    from pmsm_compiler import weights
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model

    onnx.save(chain_model(4, channels=32), tmp_path / "m.onnx")
    checked = []
    check = weights.check_stripped
    monkeypatch.setattr(weights, "check_stripped", lambda m: checked.append(m.graph.name) or check(m))
    ann = load_model(tmp_path / "m.onnx")
    assert len(checked) == 1
    snn = compile_model(ann, mode=mode).model
    assert len(checked) == 1
    large = [t for t in snn.graph.initializer if weights.strippable(t)]
    assert large and all(len(t.raw_data) == weights.declared_bytes(t) for t in large)


# ---------------------------------------------------------------------------------------------
# verification: batches sized by memory, only the sessions it needs


def _compiled(tmp_path, blocks=2, channels=8, mode="folded"):
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model

    onnx.save(chain_model(blocks, channels=channels), tmp_path / "m.onnx")
    ann = load_model(tmp_path / "m.onnx")
    return ann, compile_model(ann, mode=mode)


def test_verification_batch_keeps_the_layer_outputs_within_the_budget(tmp_path, monkeypatch):
    from pmsm_compiler import verify

    _, compiled = _compiled(tmp_path)
    info = compiled.info
    per_sample = 4 * sum(layer.neurons for layer in info.layers)  # 2 layers of 8x8x8 floats: 4 KiB
    assert per_sample == 4096
    assert verify.verification_batch(info) == 32
    monkeypatch.setattr(verify, "BATCH_BYTES", 3 * per_sample + 1)
    assert verify.verification_batch(info) == 3
    monkeypatch.setattr(verify, "BATCH_BYTES", 1)
    assert verify.verification_batch(info) == 1
    info.inputs[0].shape = [5, *info.inputs[0].shape[1:]]
    assert verify.verification_batch(info) == 5  # a declared batch is the batch


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_the_verification_report_does_not_depend_on_the_batch(tmp_path, monkeypatch, mode):
    from pmsm_compiler import verify

    ann, compiled = _compiled(tmp_path, mode=mode)
    x = verify.random_inputs(compiled.info, 13, 0)
    whole = verify.verify(ann, compiled, x, mode=mode)
    monkeypatch.setattr(verify, "BATCH_BYTES", 3 * 4096)
    small = verify.verify(ann, compiled, x, mode=mode)
    assert (whole["batch"], small["batch"]) == (32, 3)
    whole.pop("batch"), small.pop("batch")
    assert small == whole and whole["passed"]


def test_a_first_step_run_builds_only_the_sessions_it_runs(tmp_path, monkeypatch):
    """SNNSession built every middle-step session (a copy of the weights in onnxruntime) and the
    in-place analysis at construction; the verification's T = 1 step needs neither."""
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.runtime import session as session_module

    _, compiled = _compiled(tmp_path)
    built, analysed = [], []
    make = session_module.make_session
    monkeypatch.setattr(session_module, "make_session", lambda m, *a, **k: built.append(1) or make(m, *a, **k))
    analyse = session_module.states_safe_in_place
    monkeypatch.setattr(session_module, "states_safe_in_place", lambda *a: analysed.append(1) or analyse(*a))
    snn = SNNSession(compiled.model, time_batch=1)  # step by step: the longer run reads its states back
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    first = snn.run_first_step(x, [layer.spike_tensor for layer in compiled.info.layers])
    assert len(built) == 1 + (snn.prologue is not None) and not analysed
    three = snn.run_batch(x, 3)  # a longer run builds what it needs then
    assert analysed and np.array_equal(three.predictions_by_t[0], first[compiled.info.outputs[0]].argmax(1))


def test_compiling_and_verifying_change_neither_the_ann_nor_the_snn(tmp_path):
    """onnx-graphsurgeon's exporter appended new domains to the opset_import of the model a graph
    was imported from: compile_model added 'pmsm' to a Q/DQ ANN, and the verification's fused
    kernels added 'pmsm.kernels' to the SNN it verified, which was then written."""
    from hostile_corpus import qdq_model

    from pmsm_compiler.pipeline import compile_and_verify, load_ann

    onnx.save(qdq_model(), tmp_path / "q.onnx")
    ann = load_ann(tmp_path / "q.onnx")
    before = ann.SerializeToString()
    unchecked = compile_and_verify(ann, "folded", check=False).model
    snn = compile_and_verify(ann, "folded")
    assert snn.passed and ann.SerializeToString() == before
    assert [o.domain for o in snn.model.opset_import] == [o.domain for o in unchecked.opset_import] == ["", "pmsm"]


@pytest.mark.parametrize("mode,outputs", [("folded", [1, 3]), ("exact", [1, 1, 3])])
def test_the_check_runs_on_the_verifications_own_ann_session(tmp_path, monkeypatch, mode, outputs):
    """The check that onnxruntime runs the ANN built a session of the ANN for one sample, then the
    verification built its own: one onnxruntime copy of the weights too many. The check runs on
    one of the verification's ANN sessions (exact mode: the plain one, which it compares as run)."""
    from pmsm_compiler import verify
    from pmsm_compiler.pipeline import compile_and_verify

    onnx.save(chain_model(2), tmp_path / "m.onnx")
    built = []
    make = verify.make_session

    def counting(m, *a, **k):
        built.append(len((onnx.load_from_string(m) if isinstance(m, bytes) else m).graph.output))
        return make(m, *a, **k)

    monkeypatch.setattr(verify, "make_session", counting)
    result = compile_and_verify(tmp_path / "m.onnx", mode)
    assert result.passed
    # the tail (the logits), the ANN with its 2 quantizer outputs and, in exact mode, the plain ANN
    assert sorted(built) == outputs


@pytest.mark.parametrize("shape,factor_shape", [((300, 40, 3, 3), ()), ((300, 40, 3, 3), (300, 1, 1, 1)),
                                                ((500, 300), (1, 300)), ((500, 300), (500, 1)), ((7,), ()),
                                                ((3, 4), (2, 3, 4))])
@pytest.mark.parametrize("reciprocal", [False, True])
def test_times_in_float64_rounds_as_one_float64_product(shape, factor_shape, reciprocal):
    """The weight folding computes in float64 by blocks of rows: bit for bit the whole product."""
    from pmsm_compiler.passes.graph_utils import times_in_float64

    rng = np.random.default_rng(1)
    w = rng.standard_normal(shape).astype(np.float32)
    factor = rng.uniform(0.1, 3.0, factor_shape) if factor_shape else 0.7310585786300049
    v = w.astype(np.float64)
    expected = (((1.0 / v) if reciprocal else v) * factor).astype(np.float32)
    got = times_in_float64(w, factor, reciprocal=reciprocal)
    assert got.shape == expected.shape and got.dtype == np.float32 and got.tobytes() == expected.tobytes()


# ---------------------------------------------------------------------------------------------
# external data


def _without_times(model) -> bytes:
    import json

    from pmsm_compiler.snn_format import SNN_METADATA_KEY

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for prop in out.metadata_props:
        if prop.key == SNN_METADATA_KEY:
            record = json.loads(prop.value)
            record["pass_seconds"], record["compile_seconds"] = {}, 0
            prop.value = json.dumps(record)
    return out.SerializeToString()


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_a_model_with_external_data_compiles_to_the_inline_models_snn(tmp_path, mode):
    from pmsm_compiler.pipeline import compile_and_verify

    model = chain_model(3, channels=16)
    onnx.save(model, tmp_path / "inline.onnx")
    (tmp_path / "ext").mkdir()
    onnx.save(model, tmp_path / "ext" / "m.onnx", save_as_external_data=True, location="m.onnx.data",
              size_threshold=1024)
    assert (tmp_path / "ext" / "m.onnx").stat().st_size < 4096  # the weights are in m.onnx.data
    inline = compile_and_verify(tmp_path / "inline.onnx", mode)
    external = compile_and_verify(tmp_path / "ext" / "m.onnx", mode)
    assert external.ann.SerializeToString() == inline.ann.SerializeToString()
    assert _without_times(external.model) == _without_times(inline.model)
    assert external.verification == inline.verification and external.passed


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts the bytes read in /proc/self/io (Linux)")
def test_external_weights_are_read_once(tmp_path):
    """The bytes the process reads while it loads, compiles and verifies a model whose weights are
    external: the weights once, and nothing of the size of the weights a second time."""
    from pmsm_compiler.pipeline import compile_and_verify

    model = chain_model(3, channels=96)
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    data = (tmp_path / "m.onnx.data").stat().st_size
    assert data > 600_000
    compile_and_verify(tmp_path / "m.onnx", "folded")  # the first compile also builds the fused kernels
    before = _read_bytes()
    assert compile_and_verify(tmp_path / "m.onnx", "folded").passed
    read = _read_bytes() - before
    assert data <= read < data + 200_000, (read, data)


# ---------------------------------------------------------------------------------------------
# onnxruntime gets the weights as arrays (weights.split), a model over 2 GiB is saved with external
# data (loading.save_model_atomic)


def _run_all(session, x):
    return session.run(None, {session.get_inputs()[0].name: x})


# onnxruntime maps the weights from the files they lie in (weights.WeightFiles)


@pytest.mark.parametrize("level", ["disable", "all"])
def test_a_session_of_a_models_references_to_its_file_computes_what_the_model_computes(tmp_path, level):
    from pmsm_compiler import weights
    from pmsm_compiler.sessions import make_session

    model = chain_model(3, channels=32)
    with open(tmp_path / "m.onnx", "wb") as fh:
        offsets = weights.write_model(model, fh)
    located = weights.WeightFiles.of_file(str(tmp_path / "m.onnx"), offsets)
    structure = located.references(model)
    assert sorted(offsets) == ["fc.w", "w0", "w1", "w2"] and weights.weight_bytes(structure) > 20_000
    assert structure.ByteSize() < 3_000  # the references hold no data
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    mapped = _run_all(make_session(structure, level, weights_folder=located.folder), x)
    assert all(np.array_equal(a, b) for a, b in zip(mapped, _run_all(make_session(model, level), x)))


def test_load_model_says_where_the_weights_lie_in_the_model_file(tmp_path):
    from pmsm_compiler.loading import load_model_and_weight_files

    model = chain_model(3, channels=32)
    onnx.save(model, tmp_path / "m.onnx")
    loaded, located = load_model_and_weight_files(tmp_path / "m.onnx")
    data = (tmp_path / "m.onnx").read_bytes()
    assert located.folder == str(tmp_path) and sorted(located.places) == ["fc.w", "w0", "w1", "w2"]
    assert _placed_bytes(located, loaded) == {t.name: t.raw_data for t in loaded.graph.initializer
                                              if t.name in located.places}
    assert located.changed() is None and list(located.identities) == ["m.onnx"]
    (tmp_path / "m.onnx").write_bytes(data)  # the same bytes written again: another modification time
    os.utime(tmp_path / "m.onnx", ns=(located.identities["m.onnx"][3] + 10**9,) * 2)
    assert located.changed() == str(tmp_path / "m.onnx")
    (tmp_path / "m.onnx").unlink()
    assert located.changed() == str(tmp_path / "m.onnx")


def _placed_bytes(located, model) -> dict:
    """{name: the bytes at the place of each of ``model``'s initializers in ``located``}, each of
    the length of the initializer's data, to compare with it."""
    out = {}
    for t in model.graph.initializer:
        if t.name in located.places:
            file, offset = located.places[t.name]
            with open(os.path.join(located.folder, file), "rb") as f:
                f.seek(offset)
                out[t.name] = f.read(len(t.raw_data))
    return out


def test_load_model_alone_looks_for_no_weights(tmp_path, monkeypatch):
    """``load_model`` (pmsm-run, the runtime, the benches) reads no wire format and stats no file
    for places nobody asks for."""
    from pmsm_compiler import weights
    from pmsm_compiler.loading import load_model, load_model_and_weight_files

    onnx.save(chain_model(2, channels=32), tmp_path / "m.onnx")
    calls = []
    spans = weights.raw_data_spans
    monkeypatch.setattr(weights, "raw_data_spans", lambda data: calls.append(1) or spans(data))
    load_model(tmp_path / "m.onnx")
    assert calls == []
    assert load_model_and_weight_files(tmp_path / "m.onnx")[1] is not None and calls == [1]
    assert load_model_and_weight_files(tmp_path / "m.onnx", locate=False)[1] is None and calls == [1]


def test_load_model_says_where_external_weights_lie(tmp_path):
    """External data: each weight's place in its data file, and that file's identity."""
    from pmsm_compiler.loading import load_model_and_weight_files

    onnx.save(chain_model(3, channels=32), tmp_path / "ext.onnx", save_as_external_data=True,
              location="ext.onnx.data", size_threshold=1024)
    loaded, located = load_model_and_weight_files(tmp_path / "ext.onnx")
    assert sorted(located.places) == ["fc.w", "w0", "w1", "w2"] and list(located.identities) == ["ext.onnx.data"]
    assert {file for file, _ in located.places.values()} == {"ext.onnx.data"}
    assert _placed_bytes(located, loaded) == {t.name: t.raw_data for t in loaded.graph.initializer
                                              if t.name in located.places}
    os.utime(tmp_path / "ext.onnx.data", ns=(located.identities["ext.onnx.data"][3] + 10**9,) * 2)
    assert located.changed() == str(tmp_path / "ext.onnx.data")


def test_load_model_gives_no_weights_file_after_an_opset_upgrade(tmp_path):
    """The converter rebuilds the initializers' list: the sessions are handed the loaded arrays."""
    from onnx import TensorProto, helper, numpy_helper

    from pmsm_compiler.loading import load_model_and_weight_files
    w = numpy_helper.from_array(np.ones((16, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), tmp_path / "old.onnx")
    loaded, located = load_model_and_weight_files(tmp_path / "old.onnx")
    assert located is None and [o.version for o in loaded.opset_import if o.domain == ""] != [11]


def _spans_as_parsed(data: bytes) -> list:
    parsed = onnx.ModelProto()
    parsed.ParseFromString(data)
    return [(bytes(t.raw_data) if t.HasField("raw_data") else None) for t in parsed.graph.initializer]


def _span_bytes(data: bytes, spans) -> list:
    return [data[s[0]:s[0] + s[1]] if s is not None else None for s in spans]


def test_raw_data_spans_reads_what_a_parse_gives():
    """The wire-format reader against protobuf's own parse: two occurrences of the graph (merged),
    a tensor whose raw_data comes twice (the last wins), typed-field and external tensors (no
    raw_data), packed and unpacked dims, fields it skips (varints, fixed64, fixed32)."""
    from onnx import TensorProto, helper, numpy_helper

    from pmsm_compiler import weights

    model = chain_model(3, channels=8)
    model.graph.initializer.append(helper.make_tensor("typed", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]))
    ext = model.graph.initializer.add()
    ext.name, ext.data_type, ext.data_location = "ext", TensorProto.FLOAT, TensorProto.EXTERNAL
    ext.dims.extend([2, 2])
    entry = ext.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    data = model.SerializeToString()
    assert _span_bytes(data, weights.raw_data_spans(data)) == _spans_as_parsed(data)

    second = onnx.ModelProto()
    second.graph.initializer.append(numpy_helper.from_array(np.arange(35, dtype=np.float32).reshape(5, 7), "more"))
    merged = data + second.SerializeToString()
    assert _span_bytes(merged, weights.raw_data_spans(merged)) == _spans_as_parsed(merged)
    assert weights.raw_data_spans(merged)[-1][1] == 140

    tensor = numpy_helper.from_array(np.zeros(6, np.float32), "twice")
    # raw_data (field 9) twice, a dim unpacked (field 1, varint), a double (fixed64) and a fixed32
    # in unknown field numbers 100 and 101
    body = (tensor.SerializeToString() + b"\x4a\x03abc" + b"\x08\x06"
            + weights._varint(100 << 3 | 1) + bytes(8) + weights._varint(101 << 3 | 5) + bytes(4))
    graph = weights._length_key(5) + weights._varint(len(body)) + body
    crafted = weights._length_key(7) + weights._varint(len(graph)) + graph
    assert _span_bytes(crafted, weights.raw_data_spans(crafted)) == _spans_as_parsed(crafted) == [b"abc"]


@pytest.mark.parametrize("data", [b"\x0b\x0c", b"\x3a\x05\x2a\x10", b"\x3a", b"\x3a\x02\x2a\x05"],
                         ids=["group", "initializer past the graph", "cut key", "cut initializer"])
def test_raw_data_spans_gives_up_on_what_it_does_not_follow(data):
    from pmsm_compiler import weights

    assert weights.raw_data_spans(data) is None


@pytest.mark.parametrize("level", ["disable", "all"])
def test_a_session_of_the_split_model_computes_what_the_serialized_model_computes(level):
    from onnx import numpy_helper

    from pmsm_compiler import weights
    from pmsm_compiler.onnx_utils import with_outputs
    from pmsm_compiler.sessions import make_session

    model = chain_model(3, channels=32)
    skel, arrays = weights.split(model)
    assert list(arrays) == ["w0", "w1", "w2", "fc.w"] == weights.in_memory_names(skel)  # the λ stay
    for t in model.graph.initializer:
        if t.name in arrays:
            assert np.array_equal(arrays[t.name], numpy_helper.to_array(t)) and arrays[t.name].dtype == np.float32
    assert _weight_bytes(skel) < 1024 and skel.ByteSize() < model.ByteSize() / 10
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    whole = _run_all(make_session(model.SerializeToString(), level), x)
    for session in (make_session(model, level), make_session(skel, level, initializers=arrays)):
        assert all(np.array_equal(a, b) for a, b in zip(_run_all(session, x), whole, strict=True))
    # a model derived from the skeleton uses the same arrays
    exposed = make_session(with_outputs(skel, ["q1"]), level, initializers=arrays)
    reference = make_session(with_outputs(model, ["q1"]).SerializeToString(), level)
    assert all(np.array_equal(a, b) for a, b in zip(_run_all(exposed, x), _run_all(reference, x), strict=True))


def test_a_lazy_split_reads_only_the_arrays_asked_for(monkeypatch):
    """``split(lazy=True)``: the same skeleton and values, each array read on first access only
    (the verification's tail session asks for the last layers' weights alone)."""
    from pmsm_compiler import weights
    from pmsm_compiler.sessions import make_session

    model = chain_model(3, channels=32)
    skel, eager = weights.split(model)
    lazy_skel, lazy = weights.split(model, lazy=True)
    assert lazy_skel == skel and list(lazy) == list(eager) and len(lazy) == len(eager)
    read = []
    array_of = weights.array_of
    monkeypatch.setattr(weights, "array_of", lambda t: (read.append(t.name), array_of(t))[1])
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    session = make_session(skel, "all", initializers=lazy)
    assert read == list(eager)  # a session of the whole model reads every one, once
    assert np.array_equal(lazy["fc.w"], eager["fc.w"]) and read == list(eager)  # not again
    assert all(np.array_equal(a, b) for a, b in zip(_run_all(session, x),
                                                    _run_all(make_session(model, "all"), x), strict=True))
    _, fresh = weights.split(model, lazy=True)
    read.clear()
    assert np.array_equal(fresh["w1"], eager["w1"]) and read == ["w1"]


def test_a_split_that_keeps_nothing_reads_again_at_every_access(monkeypatch):
    """``split(lazy=True, keep=False)``: every access reads the array from the model again and
    nothing is held (a caller that hands each array to onnxruntime, which copies it)."""
    from pmsm_compiler import weights

    model = chain_model(2, channels=32)
    _, eager = weights.split(model)
    _, reread = weights.split(model, lazy=True, keep=False)
    read = []
    array_of = weights.array_of
    monkeypatch.setattr(weights, "array_of", lambda t: (read.append(t.name), array_of(t))[1])
    first, second = reread["w1"], reread["w1"]
    assert first is not second and np.array_equal(first, eager["w1"]) and np.array_equal(second, eager["w1"])
    assert read == ["w1", "w1"] and not reread._read


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_a_session_that_keeps_no_weights_runs_as_one_that_does(tmp_path, monkeypatch, mode):
    """``SNNSession(keep_weights=False)`` (the verification's) holds no array of the weights and
    reads them from the model for each session it builds; its runs equal the default session's,
    bit for bit, at T = 1 and over several steps."""
    from pmsm_compiler import weights
    from pmsm_compiler.runtime import SNNSession

    _, compiled = _compiled(tmp_path, mode=mode)
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    held = SNNSession(compiled.model)
    lean = SNNSession(compiled.model, keep_weights=False)
    assert isinstance(held._weights, dict) and held._weights
    assert not isinstance(lean._weights, dict) and len(lean._weights) == len(held._weights)
    read = []
    array_of = weights.array_of
    monkeypatch.setattr(weights, "array_of", lambda t: (read.append(t.name), array_of(t))[1])
    for t in (1, 4):
        a, b = held.run_batch(x, t, keep_outputs=True), lean.run_batch(x, t, keep_outputs=True)
        assert np.array_equal(a.outputs_by_t, b.outputs_by_t) and np.array_equal(a.spikes, b.spikes)
        assert np.array_equal(a.counters, b.counters)
    assert read and not lean._weights._read  # read for each build, none held


def test_the_verification_holds_no_third_copy_of_the_snns_weights(tmp_path, monkeypatch):
    """The verification's SNN session reads the SNN's weights from its ModelProto (which the
    pipeline holds anyway, for the save) instead of holding them as arrays too."""
    from pmsm_compiler import verify
    from pmsm_compiler.runtime import session as session_module

    ann, compiled = _compiled(tmp_path)
    kept = []
    init = session_module.SNNSession.__init__
    monkeypatch.setattr(session_module.SNNSession, "__init__",
                        lambda self, *a, **k: (kept.append(k.get("keep_weights", True)), init(self, *a, **k))[1])
    assert verify.verify(ann, compiled, verify.random_inputs(compiled.info, 4, 0))["passed"]
    assert kept == [False]


def test_model_bytes_sizes_a_model_without_serializing_its_weights():
    from pmsm_compiler import weights

    model = chain_model(3, channels=32)
    assert abs(weights.model_bytes(model) - model.ByteSize()) < 64 * 3


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_no_session_of_a_compile_and_its_verification_is_given_the_weights_serialized(tmp_path, monkeypatch, mode):
    import onnxruntime as ort

    from pmsm_compiler.pipeline import compile_and_verify

    model = chain_model(3, channels=64)
    onnx.save(model, tmp_path / "m.onnx")
    given = []
    real = ort.InferenceSession

    def recording(path_or_bytes, *args, **kwargs):
        given.append(len(path_or_bytes) if isinstance(path_or_bytes, bytes) else 0)
        return real(path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    assert compile_and_verify(tmp_path / "m.onnx", mode).passed
    assert len(given) >= 3 and max(given) < _weight_bytes(model) / 10, given


def test_a_model_saved_with_external_data_loads_to_the_same_model(tmp_path):
    from pmsm_compiler import weights
    from pmsm_compiler.loading import external_data_path, load_model, save_model_atomic

    onnx.save(chain_model(3, channels=32), tmp_path / "inline.onnx")
    model = load_model(tmp_path / "inline.onnx")
    (tmp_path / "ext").mkdir()
    path = tmp_path / "ext" / "m.onnx"
    assert save_model_atomic(model, path, external_data=True) is True
    assert external_data_path(path) == str(path) + ".data"
    assert sorted(os.listdir(tmp_path / "ext")) == ["m.onnx", "m.onnx.data"]  # no temporary file left
    written = onnx.load(path, load_external_data=False)
    refs = {t.name: {e.key: e.value for e in t.external_data} for t in written.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL}
    assert sorted(refs) == ["fc.w", "w0", "w1", "w2"]
    assert all(r["location"] == "m.onnx.data" and int(r["offset"]) % weights.EXTERNAL_ALIGN == 0 for r in refs.values())
    assert load_model(path).SerializeToString() == model.SerializeToString()
    assert save_model_atomic(model, tmp_path / "plain.onnx") is False  # small: one file
    assert not os.path.exists(tmp_path / "plain.onnx.data")


def test_a_model_over_protobufs_limit_is_saved_with_external_data(tmp_path, monkeypatch):
    from pmsm_compiler import loading

    model = chain_model(2, channels=16)
    monkeypatch.setattr(loading, "PROTOBUF_LIMIT", model.ByteSize() - 1000)  # the decision, not 2 GiB of memory
    assert loading.save_model_atomic(model, tmp_path / "m.onnx") is True
    assert os.path.getsize(tmp_path / "m.onnx") < 4096 < os.path.getsize(tmp_path / "m.onnx.data")


def test_a_model_over_protobufs_limit_refuses_a_data_path_it_cannot_write(tmp_path, monkeypatch):
    from pmsm_compiler import loading
    from pmsm_compiler.errors import InputError

    model = chain_model(2, channels=16)
    monkeypatch.setattr(loading, "PROTOBUF_LIMIT", model.ByteSize() - 1000)  # stands for 2 GiB
    (tmp_path / "m.onnx.data").mkdir()
    with pytest.raises(InputError, match=r"^cannot write the external data .*m\.onnx\.data: it is a directory$"):
        loading.save_model_atomic(model, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == ["m.onnx.data"] and os.listdir(tmp_path / "m.onnx.data") == []


def test_a_failed_external_data_write_leaves_nothing(tmp_path, monkeypatch):
    from pmsm_compiler import loading, weights

    def failing(layout, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights, "write_external_data", failing)
    with pytest.raises(OSError):
        loading.save_model_atomic(chain_model(2, channels=16), tmp_path / "m.onnx", external_data=True)
    assert os.listdir(tmp_path) == []


def test_external_data_beyond_the_model_file_limit_loads_up_to_the_total_limit(tmp_path, monkeypatch):
    from pmsm_compiler import loading
    from pmsm_compiler.errors import InputError

    model = chain_model(3, channels=32)
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    file_size = os.path.getsize(tmp_path / "m.onnx")
    # the file limit stands for protobuf's 2 GiB, the total limit for the memory the weights may take
    monkeypatch.setattr(loading, "MAX_MODEL_BYTES", file_size + 100)
    assert loading.load_model(tmp_path / "m.onnx").SerializeToString() != b""
    monkeypatch.setattr(loading, "MAX_MODEL_WITH_DATA_BYTES", file_size + 100)
    with pytest.raises(InputError, match=r"with its external data is .* over the limit of .*--max-bytes raises it"):
        loading.load_model(tmp_path / "m.onnx")


def test_pmsm_compile_writes_external_data_on_request_and_the_snn_runs_from_it(tmp_path):
    import json

    from click.testing import CliRunner

    from pmsm_compiler.cli.compile import main as compile_cli
    from pmsm_compiler.runtime import SNNSession

    onnx.save(chain_model(3, channels=32), tmp_path / "m.onnx")
    runner = CliRunner()
    for flag, out in (("--external-data", "ext.snn.onnx"), ("--no-external-data", "inline.snn.onnx")):
        result = runner.invoke(compile_cli, [str(tmp_path / "m.onnx"), "-o", str(tmp_path / out), flag, "--json",
                                             str(tmp_path / f"{out}.json"), "-q"])
        assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ext.snn.onnx.json").read_text())
    assert report["output_data"] == str(tmp_path / "ext.snn.onnx.data")
    assert json.loads((tmp_path / "inline.snn.onnx.json").read_text())["output_data"] is None
    assert os.path.getsize(tmp_path / "ext.snn.onnx") < os.path.getsize(tmp_path / "inline.snn.onnx") / 4
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    a = SNNSession(str(tmp_path / "ext.snn.onnx")).run_batch(x, 3)
    b = SNNSession(str(tmp_path / "inline.snn.onnx")).run_batch(x, 3)
    assert np.array_equal(a.mean_outputs, b.mean_outputs) and np.array_equal(a.spikes, b.spikes)


def test_pmsm_compile_refuses_an_external_data_path_it_cannot_write_before_any_work(tmp_path):
    from click.testing import CliRunner

    from pmsm_compiler.cli.compile import main as compile_cli

    onnx.save(chain_model(2), tmp_path / "m.onnx")
    (tmp_path / "o.snn.onnx.data").mkdir()
    result = CliRunner().invoke(compile_cli, [str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.snn.onnx"),
                                              "--external-data"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"error: cannot write the compiled model's external data {tmp_path / 'o.snn.onnx.data'}: it is a directory")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "o.snn.onnx.data"]


def test_the_compile_leaves_no_graph_holding_weights_behind(tmp_path, monkeypatch):
    """The pass graph's nodes and tensors form reference cycles: compile_model collects them
    before it returns, so the folded weights they hold do not wait for the collector."""
    import gc

    from pmsm_compiler import compiler
    from pmsm_compiler.compiler import compile_model

    monkeypatch.setattr(compiler, "COLLECT_BYTES", 1024)  # stands for 16 MiB of weights
    from pmsm_compiler.loading import load_model

    onnx.save(chain_model(3, channels=32), tmp_path / "m.onnx")
    ann = load_model(tmp_path / "m.onnx")
    gc.disable()  # only compile_model's own collection runs
    try:
        compiled = compile_model(ann, mode="folded")
        alive = [o for o in gc.get_objects() if type(o) is gs.Constant and isinstance(o._values, np.ndarray)
                 and o._values.nbytes >= 1024]
    finally:
        gc.enable()
    assert compiled.info.layers and alive == []


def test_pmsm_run_runs_an_snn_written_with_external_data(tmp_path):
    import json

    from click.testing import CliRunner

    from pmsm_compiler.cli.compile import main as compile_cli
    from pmsm_compiler.cli.run import main as run_cli

    onnx.save(chain_model(2, channels=32, side=32), tmp_path / "m.onnx")  # the bundled images' shape
    runner = CliRunner()
    out = tmp_path / "m.snn.onnx"
    result = runner.invoke(compile_cli, [str(tmp_path / "m.onnx"), "-o", str(out), "--external-data", "-q"])
    assert result.exit_code == 0, result.output
    assert os.path.getsize(out) < 16_000 and os.path.getsize(str(out) + ".data") > 9 * 32 * 32 * 4
    result = runner.invoke(run_cli, [str(out), "-T", "2", "--limit", "16", "--ann", str(tmp_path / "m.onnx"),
                                     "--json", str(tmp_path / "run.json"), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run.json").read_text())
    # folded mode may flip a rare prediction (a level flip at a rounding tie): at most one of the 16
    assert report["samples"] == 16 and report["t1_prediction_agreement"] >= 15 / 16
