"""Tests for pmsm_compiler.loading: defensive loading of untrusted ONNX and atomic writes."""

from __future__ import annotations

import json
import os
import stat
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.errors import InputError, UnsupportedModelError
from pmsm_compiler.loading import (
    DEFAULT_ALLOWED_OPS,
    MAX_MODEL_BYTES,
    check_ops,
    load_model,
    save_bytes_atomic,
    save_model_atomic,
    save_text_atomic,
    write_atomic,
)

OPSET = 20
IR = 10

W_VALUES = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3) / 100.0
B_VALUES = np.array([0.5, -0.5, 1.0, 0.0], dtype=np.float32)


def conv_relu(
    dims=("N", 3, 8, 8),
    *,
    with_weights=True,
    extra_nodes=(),
    extra_opsets=(),
    functions=(),
) -> onnx.ModelProto:
    """x -> Conv(W, B) -> Relu [-> extra nodes] -> Identity -> y."""
    out_dims = ["N", 4, dims[2], dims[3]]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)
    inits = [numpy_helper.from_array(B_VALUES, "B")]
    if with_weights:
        inits.insert(0, numpy_helper.from_array(W_VALUES, "W"))
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        *extra_nodes,
    ]
    nodes.append(helper.make_node("Identity", [nodes[-1].output[0]], ["y"], name="out"))
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(
        graph, opset_imports=opsets, ir_version=IR, functions=list(functions)
    )


PQA_FUNCTION = onnx.parser.parse_function(
    f"""
    <domain: "pmsm", opset_import: ["": {OPSET}]>
    PQA <step, qmax> (x) => (y) {{
      s = Constant <value_float: float = @step> ()
      qm = Constant <value_float: float = @qmax> ()
      half = Constant <value_float = 0.5> ()
      zero = Constant <value_float = 0.0> ()
      t = Div(x, s)
      u = Add(t, half)
      f = Floor(u)
      c = Clip(f, zero, qm)
      y = Mul(c, s)
    }}
    """
)


def pqa_model(with_function=True) -> onnx.ModelProto:
    node = helper.make_node(
        "PQA", ["r"], ["q"], name="pqa0", domain="pmsm", step=0.25, qmax=7.0
    )
    return conv_relu(
        extra_nodes=[node],
        extra_opsets=[("pmsm", 1)],
        functions=[PQA_FUNCTION] if with_function else [],
    )


def write(path, model: onnx.ModelProto):
    path.write_bytes(model.SerializeToString())
    return path


def expect_error(path, match: str | tuple[str, ...], cls=InputError, **kwargs) -> str:
    with pytest.raises(cls) as info:
        load_model(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    for part in (match,) if isinstance(match, str) else match:
        assert part in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# positive cases


def test_valid_model_loads_and_is_shape_inferred(tmp_path):
    path = write(tmp_path / "m.onnx", conv_relu())
    model = load_model(path)
    shapes = {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in model.graph.value_info
    }
    assert shapes["c"] == ["N", 4, 8, 8]
    assert shapes["r"] == ["N", 4, 8, 8]


def test_symlinked_model_file_is_resolved(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    model = conv_relu()
    onnx.save_model(
        model, str(real_dir / "m.onnx"), save_as_external_data=True,
        location="w.bin", size_threshold=0,
    )  # fmt: skip
    link = tmp_path / "link.onnx"
    link.symlink_to(real_dir / "m.onnx")
    # External data is looked up next to the real file, not next to the link.
    loaded = load_model(link)
    assert np.array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), W_VALUES)


def test_external_data_inside_directory_loads_with_right_values(tmp_path):
    (tmp_path / "weights").mkdir()  # onnx.save_model does not create it ("kernel rejected path")
    onnx.save_model(
        conv_relu(), str(tmp_path / "m.onnx"), save_as_external_data=True,
        location="weights/w.bin", size_threshold=0,
    )  # fmt: skip
    assert (tmp_path / "weights" / "w.bin").stat().st_size > 0
    model = load_model(tmp_path / "m.onnx")
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(values["W"], W_VALUES)
    assert np.array_equal(values["B"], B_VALUES)
    assert all(t.data_location != TensorProto.EXTERNAL for t in model.graph.initializer)


def test_pqa_function_node_passes_checker_and_allowlist(tmp_path):
    path = write(tmp_path / "pqa.onnx", pqa_model())
    model = load_model(path)
    assert [(f.domain, f.name) for f in model.functions] == [("pmsm", "PQA")]
    q = next(v for v in model.graph.value_info if v.name == "q")
    assert [d.dim_value or d.dim_param for d in q.type.tensor_type.shape.dim] == ["N", 4, 8, 8]
    check_ops(model)  # explicit call, default allowlist


def test_pqa_function_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = load_model(write(tmp_path / "pqa.onnx", pqa_model()))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    (y,) = sess.run(None, {"x": x})
    levels = y / np.float32(0.25)
    assert np.array_equal(levels, np.round(levels)) and levels.min() >= 0 and levels.max() <= 7


def test_default_allowlist_contents():
    for op in ("Conv", "Gemm", "QuantizeLinear", "LayerNormalization", "Where", "Equal"):
        assert ("", op) in DEFAULT_ALLOWED_OPS
    assert ("", "LSTM") not in DEFAULT_ALLOWED_OPS
    assert MAX_MODEL_BYTES == 2**31 - 1


def test_custom_allowlist_admits_op(tmp_path):
    lstm_free = conv_relu(extra_nodes=[helper.make_node("Shrink", ["r"], ["s"], name="sp")])
    path = write(tmp_path / "m.onnx", lstm_free)
    expect_error(path, "Shrink", UnsupportedModelError)
    load_model(path, allowed_ops=DEFAULT_ALLOWED_OPS | {("ai.onnx", "Shrink")})


# ---------------------------------------------------------------------------------------------
# file-level errors


def test_nonexistent_path(tmp_path):
    expect_error(tmp_path / "nope.onnx", ("not found", "nope.onnx"))


def test_directory(tmp_path):
    expect_error(tmp_path, "directory")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    expect_error(fifo, "not a regular file")


def test_parsable_protobuf_without_graph(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=IR, producer_name="x").SerializeToString())
    expect_error(path, ("cannot parse", "no graph"))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    expect_error(path, ("empty", "0 bytes"))


def test_truncated_file(tmp_path):
    data = conv_relu().SerializeToString()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, ("cannot parse", "truncated or not an ONNX model"))


def test_every_truncation_is_a_one_line_input_error(tmp_path):
    data = conv_relu().SerializeToString()
    path = tmp_path / "cut.onnx"
    for n in range(1, len(data), 7):
        path.write_bytes(data[:n])
        with pytest.raises(InputError) as info:
            load_model(path)
        assert "\n" not in str(info.value)


def test_png_header(tmp_path):
    path = tmp_path / "image.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    expect_error(path, ("not an ONNX model", "PNG"))


def test_zip_archive(tmp_path):
    path = tmp_path / "model.onnx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"x" * 100)
    expect_error(path, ("not an ONNX model", "zip"))


def test_json_text(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text(json.dumps({"graph": {"node": []}}))
    expect_error(path, ("not an ONNX model", "JSON"))


def test_plain_text(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("hello, this is not a model\n")
    expect_error(path, ("not an ONNX model", "text"))


def test_random_bytes(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(bytes(range(255, 0, -1)) * 4)
    expect_error(path, "ONNX model")


def test_file_over_max_bytes(tmp_path):
    path = write(tmp_path / "m.onnx", conv_relu())
    size = path.stat().st_size
    msg = expect_error(path, ("over the limit", f"{size:,} bytes"), max_bytes=64)
    assert "64 bytes" in msg


def test_external_data_counts_towards_max_bytes(tmp_path):
    onnx.save_model(
        conv_relu(), str(tmp_path / "m.onnx"), save_as_external_data=True,
        location="w.bin", size_threshold=0,
    )  # fmt: skip
    model_size = (tmp_path / "m.onnx").stat().st_size
    expect_error(
        tmp_path / "m.onnx", ("external data", "over the limit"), max_bytes=model_size + 10
    )


# ---------------------------------------------------------------------------------------------
# graph-level errors


def test_unknown_custom_domain_op_without_function(tmp_path):
    node = helper.make_node("Frobnicate", ["r"], ["z"], name="n3", domain="acme")
    path = write(tmp_path / "m.onnx", conv_relu(extra_nodes=[node], extra_opsets=[("acme", 1)]))
    expect_error(path, ("unsupported ops", "acme::Frobnicate", "'n3'", "#2", "supported:"),
                 UnsupportedModelError)  # fmt: skip


def test_pmsm_op_without_function_body(tmp_path):
    path = write(tmp_path / "m.onnx", pqa_model(with_function=False))
    expect_error(path, ("pmsm::PQA", "'pqa0'", "no model-local function"), UnsupportedModelError)


def test_standard_ops_not_in_allowlist_all_named_in_one_line(tmp_path):
    nodes = [
        helper.make_node("Shrink", ["r"], ["s"], name="shrink_0"),
        helper.make_node("Sign", ["s"], ["h"], name="sign_1"),
    ]
    path = write(tmp_path / "m.onnx", conv_relu(extra_nodes=nodes))
    msg = expect_error(path, ("Shrink (node 'shrink_0', #2)", "Sign (node 'sign_1', #3)"),
                       UnsupportedModelError)  # fmt: skip
    assert msg.index("Shrink") < msg.index("Sign (") < msg.index("supported:")


def test_lstm_is_unsupported(tmp_path):
    seq = helper.make_tensor_value_info("seq", TensorProto.FLOAT, [5, 1, 2])
    out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [5, 1, 1, 3])
    w = numpy_helper.from_array(np.zeros((1, 12, 2), np.float32), "Wl")
    r = numpy_helper.from_array(np.zeros((1, 12, 3), np.float32), "Rl")
    node = helper.make_node("LSTM", ["seq", "Wl", "Rl"], ["Y"], name="lstm_0", hidden_size=3)
    graph = helper.make_graph([node], "g", [seq], [out], [w, r])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR)
    expect_error(write(tmp_path / "lstm.onnx", model), ("LSTM", "'lstm_0'", "#0"),
                 UnsupportedModelError)  # fmt: skip


def test_non_max_suppression_is_unsupported(tmp_path):
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 6, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 6])
    out = helper.make_tensor_value_info("sel", TensorProto.INT64, ["K", 3])
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"], name="nms")
    graph = helper.make_graph([node], "g", [boxes, scores], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR)
    expect_error(write(tmp_path / "nms.onnx", model), ("NonMaxSuppression", "'nms'"),
                 UnsupportedModelError)  # fmt: skip


def test_missing_weights(tmp_path):
    path = write(tmp_path / "m.onnx", conv_relu(with_weights=False))
    expect_error(path, ("missing weights", "'conv'", "'W'"))


def test_dynamic_spatial_shapes(tmp_path):
    path = write(tmp_path / "m.onnx", conv_relu(dims=("N", 3, "H", "W")))
    expect_error(
        path,
        "input 'x' has dynamic dimension(s) at axis 2,3 ('H', 'W'); the compiler needs static "
        "spatial shapes (only the batch axis may be dynamic)",
    )


def test_checker_error_is_one_line(tmp_path):
    model = conv_relu()
    model.graph.initializer[0].dims[0] = 5  # declared shape bigger than the stored data
    expect_error(write(tmp_path / "m.onnx", model), ("ONNX checker", "W"))


# ---------------------------------------------------------------------------------------------
# external data attacks


def external_model(tmp_path, location: str):
    """A model in tmp_path/model/ whose initializers all point at ``location``."""
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    onnx.save_model(
        conv_relu(), str(model_dir / "m.onnx"), save_as_external_data=True,
        location="w.bin", size_threshold=0,
    )  # fmt: skip
    (tmp_path / "secret.bin").write_bytes((model_dir / "w.bin").read_bytes())
    model = onnx.load(str(model_dir / "m.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = location
    return write(model_dir / "m.onnx", model)


def test_external_data_parent_traversal(tmp_path):
    path = external_model(tmp_path, "../secret.bin")
    expect_error(path, ("external data", "'W'", "../secret.bin", ".."))


def test_external_data_absolute_path(tmp_path):
    secret = str(tmp_path / "secret.bin")
    path = external_model(tmp_path, secret)
    expect_error(path, ("external data", "'W'", secret, "absolute"))


def test_external_data_symlink_pointing_outside(tmp_path):
    path = external_model(tmp_path, "link.bin")
    (tmp_path / "model" / "link.bin").symlink_to(tmp_path / "secret.bin")
    expect_error(path, ("external data", "'W'", "link.bin"))


def test_external_data_symlink_inside_directory_is_refused_too(tmp_path):
    path = external_model(tmp_path, "alias.bin")
    (tmp_path / "model" / "alias.bin").symlink_to("w.bin")
    expect_error(path, ("external data", "alias.bin", "symbolic link"))


def test_external_data_hard_link(tmp_path):
    path = external_model(tmp_path, "hard.bin")
    os.link(tmp_path / "secret.bin", tmp_path / "model" / "hard.bin")
    expect_error(path, ("external data", "hard.bin", "hard link"))


def test_external_data_missing_file(tmp_path):
    path = external_model(tmp_path, "gone.bin")
    expect_error(path, ("external data", "gone.bin", "not found"))


def test_external_data_file_too_short(tmp_path):
    path = external_model(tmp_path, "w.bin")
    w_bin = tmp_path / "model" / "w.bin"
    w_bin.write_bytes(w_bin.read_bytes()[:100])
    expect_error(path, ("external data", "w.bin", "exceeds the file size"))


# ---------------------------------------------------------------------------------------------
# atomic writes


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_save_model_atomic_roundtrip(tmp_path):
    path = tmp_path / "out.onnx"
    save_model_atomic(conv_relu(), path)
    assert load_model(path).graph.node[0].op_type == "Conv"
    assert leftovers(tmp_path) == []


def test_save_model_atomic_serialization_failure_leaves_nothing(tmp_path):
    class Broken:
        def SerializeToString(self):
            raise ValueError("cannot serialize")

    target = tmp_path / "out.onnx"
    with pytest.raises(ValueError):
        save_model_atomic(Broken(), target, external_data=False)
    assert list(tmp_path.iterdir()) == []


def _weighty_model():
    """Large and small initializers in a mixed order, fields on both sides of raw_data in a tensor
    (name before it; doc_string, data_location after), metadata and a function after the graph."""
    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal((64, 3, 3, 3)).astype(np.float32), "w")
    big.doc_string = "the kernel"
    big.data_location = TensorProto.DEFAULT
    small = numpy_helper.from_array(np.ones(4, np.float32), "b")
    big2 = numpy_helper.from_array(rng.standard_normal((300, 7)).astype(np.float64), "w2")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[big, small, big2], doc_string="graph doc")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string="model doc")
    helper.set_model_props(model, {"k": "v"})
    model.functions.add().name = "f"
    return model


def test_write_model_writes_the_bytes_serialization_writes():
    import io

    from pmsm_compiler.weights import write_model

    for model in (_weighty_model(), conv_relu()):
        out = io.BytesIO()
        write_model(model, out)
        assert out.getvalue() == model.SerializeToString()


def test_write_model_returns_where_each_large_initializers_bytes_lie():
    import io

    from pmsm_compiler.weights import write_model

    model = _weighty_model()
    out = io.BytesIO()
    offsets = write_model(model, out)
    data = out.getvalue()
    assert sorted(offsets) == ["w", "w2"]  # the large ones ("b" is 16 bytes)
    for t in model.graph.initializer:
        if t.name in offsets:
            assert data[offsets[t.name]:offsets[t.name] + len(t.raw_data)] == t.raw_data
    assert write_model(conv_relu(), io.BytesIO()) == {}  # nothing large: serialized whole


@pytest.mark.parametrize("external", [False, True])
def test_save_model_atomic_says_where_the_weights_are_once_written_and_lets_go_of_the_model(tmp_path, external):
    """``written`` comes with the temporary file, the offsets of the weights' bytes in it and the
    name it will have; by then the writer holds no reference to the model (only the test does),
    so that a caller may free it while the file waits for ``approve``."""
    import sys

    model = _weighty_model()
    baseline = sys.getrefcount(model)
    seen = []

    def written(file, offsets, final):
        seen.append((sys.getrefcount(model), os.path.basename(file).startswith("."), final))
        with open(file, "rb") as f:
            data = f.read()
        for t in model.graph.initializer:
            if t.name in offsets:
                assert data[offsets[t.name]:offsets[t.name] + len(t.raw_data)] == t.raw_data

    path = tmp_path / "m.onnx"
    assert save_model_atomic(model, path, external_data=external, written=written) is external
    final = str(path) + ".data" if external else str(path)
    assert seen == [(baseline, True, final)]
    saved = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    assert saved.keys() == {"w", "b", "w2"}
    assert all(np.array_equal(saved[t.name], numpy_helper.to_array(t)) for t in model.graph.initializer)


def test_save_model_atomic_refuses_a_raw_data_of_the_wrong_size(tmp_path):
    model = _weighty_model()
    model.graph.initializer[2].raw_data = model.graph.initializer[2].raw_data[:-8]
    with pytest.raises(ValueError, match="raw_data holds 16792 bytes, its type and shape declare 16800"):
        save_model_atomic(model, tmp_path / "out.onnx", external_data=False)
    assert list(tmp_path.iterdir()) == []


def test_save_model_atomic_refuses_a_model_whose_skeleton_is_over_2gib(tmp_path, monkeypatch):
    # over 2 GiB with its weights it is written with external data (tests/test_compile_scale.py);
    # what protobuf cannot hold even without them is refused, and nothing is written
    import pmsm_compiler.loading as loading

    model = conv_relu()
    monkeypatch.setattr(loading, "PROTOBUF_LIMIT", 64)  # stands for 2 GiB
    with pytest.raises(InputError, match=r"without its large weights the model is still .* over protobuf's 2 GiB"):
        save_model_atomic(model, tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_save_model_atomic_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        save_model_atomic(conv_relu(), tmp_path / "no_such_dir" / "out.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_save_bytes_atomic_interrupted_keeps_old_file(tmp_path, monkeypatch, exc):
    target = tmp_path / "report.json"
    target.write_text("old")

    def failing_fsync(fd):
        raise exc("interrupted")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(exc):
        save_bytes_atomic(b"new" * 1000, target)
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_save_bytes_atomic_onto_directory_cleans_up(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):
        save_bytes_atomic(b"data", tmp_path / "d")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_write_atomic_failing_writer_keeps_old_file_and_mode(tmp_path, exc):
    """The one atomic writer (checkpoints, plots, the kernel cache use it with their own writers)."""
    target = tmp_path / "checkpoint.pt"
    target.write_text("old")
    os.chmod(target, 0o640)

    def half_written(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise exc("writer failed")

    with pytest.raises(exc):
        write_atomic(target, half_written, suffix=".pt")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    write_atomic(target, lambda tmp: open(tmp, "w").write("new"), suffix=".pt")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


def test_write_atomic_approve_is_asked_after_the_write_and_may_cancel(tmp_path):
    """``approve`` runs once the new file is complete and synced, before it replaces the old one;
    ``WriteCancelled`` from it leaves the old file and no temporary (the pipeline writes the SNN
    while its verification runs this way)."""
    from pmsm_compiler.files import WriteCancelled

    target = tmp_path / "m.onnx"
    target.write_text("old")
    seen = []

    def approve():
        (tmp,) = [p for p in tmp_path.iterdir() if p != target]
        seen.append(tmp.read_text())  # already whole when asked
        raise WriteCancelled

    with pytest.raises(WriteCancelled):
        write_atomic(target, lambda tmp: open(tmp, "w").write("new"), approve=approve)
    assert seen == ["new"] and target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    write_atomic(target, lambda tmp: open(tmp, "w").write("new"), approve=lambda: seen.append("yes"))
    assert seen == ["new", "yes"] and target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def test_save_text_atomic_replaces_and_keeps_mode(tmp_path):
    target = tmp_path / "r.json"
    save_text_atomic('{"a": 1}\n', target)
    assert target.read_text() == '{"a": 1}\n'
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not tempfile's private 0o600
    os.chmod(target, 0o640)
    save_text_atomic("é\n", target)
    assert target.read_text(encoding="utf-8") == "é\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert leftovers(tmp_path) == []


def test_graph_output_without_shape_is_named(tmp_path):
    model = conv_relu()
    model.graph.output[0].type.tensor_type.ClearField("shape")
    expect_error(write(tmp_path / "m.onnx", model), ("graph output 'y'", "no shape"))
