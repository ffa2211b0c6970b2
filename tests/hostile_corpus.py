"""The hostile-input corpus: malformed and hostile inputs for ``pmsm-compile`` and ``pmsm-run``.

Each ``Case`` writes its inputs into a fresh folder (generated here, nothing large committed) and
gives the command line, the expected exit code and a regex for the one ``error:`` line;
``tests/test_hostile_inputs.py`` runs them all and holds each to the CLI policy: that exit code,
exactly one line on stderr, no traceback, no warning on stdout, no output file written.

**Every future refusal gets a case here**, next to the unit test that checks its details.

Inputs are built on ``base_model``: x [N, 3, 32, 32] → Conv → pmsm::PQA (L = 8, α = −¼, β = 1,
λ = 4) → GlobalAveragePool → Flatten → Gemm → y [N, 10], opset 20, with the PQA function body;
``plain_model`` and ``qdq_model`` are the same network with the quantizer as plain ops or Q/DQ.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions

# ---------------------------------------------------------------------------------------------
# model builders
# ---------------------------------------------------------------------------------------------

SIDE = 32  # the bundled CIFAR-10 sample's size, so that pmsm-run cases can use --data bundled
CLASSES = 10


def _tail(q="q"):
    """GlobalAveragePool → Flatten → Gemm(10) from tensor ``q`` to the output ``y``."""
    return [helper.make_node("GlobalAveragePool", [q], ["p"], name="gap"),
            helper.make_node("Flatten", ["p"], ["f"], name="flat"),
            helper.make_node("Gemm", ["f", "G"], ["y"], name="fc", transB=1)]


def _weights():
    rng = np.random.default_rng(0)
    return [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal((CLASSES, 4)).astype(np.float32), "G")]


def _model(nodes, inits, *, opset=20, in_type=TensorProto.FLOAT, dims=("N", 3, SIDE, SIDE), pmsm=True):
    x = helper.make_tensor_value_info("x", in_type, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    if pmsm:
        add_functions(model, quantizer_functions())
    return model


def base_model(*, opset=20, L=8, alpha=-0.25, beta=1.0, lam=4.0, in_type=TensorProto.FLOAT,
               dims=("N", 3, SIDE, SIDE)) -> onnx.ModelProto:
    src = "x"
    nodes = []
    if in_type != TensorProto.FLOAT:  # an image input: the model scales it itself
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], name="cast", to=TensorProto.FLOAT))
        src = "xf"
    nodes += [helper.make_node("Conv", [src, "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("PQA", ["c", "act.lam"], ["q"], name="act", domain="pmsm", L=L, alpha=alpha,
                               beta=beta),
              *_tail()]
    inits = [*_weights(), numpy_helper.from_array(np.array(lam, np.float32), "act.lam")]
    return _model(nodes, inits, opset=opset, in_type=in_type, dims=dims)


def plain_model(lo=-2.0, hi=8.0, scale=0.5, *, opset=20) -> onnx.ModelProto:
    """The quantizer as plain ops: Div(s) → Add ½ → Floor → Clip(lo, hi) → Mul(s)."""
    consts = [numpy_helper.from_array(np.asarray(v, np.float32), n)
              for n, v in [("s", scale), ("half", 0.5), ("lo", lo), ("hi", hi)]]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Div", ["c", "s"], ["u"], name="div"),
             helper.make_node("Add", ["u", "half"], ["sh"], name="add"),
             helper.make_node("Floor", ["sh"], ["fl"], name="floor"),
             helper.make_node("Clip", ["fl", "lo", "hi"], ["k"], name="clip"),
             helper.make_node("Mul", ["k", "s"], ["q"], name="mul"), *_tail()]
    return _model(nodes, [*_weights(), *consts], opset=opset, pmsm=False)


def round_model(lo=-8.0, hi=7.0, scale=0.5, *, clip_first=False) -> onnx.ModelProto:
    """A torch.round fake quantizer: Div(s) → Round → Clip(lo, hi) → Mul(s) (or Clip before Round)."""
    consts = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in [("s", scale), ("lo", lo), ("hi", hi)]]
    first, second = (("Clip", ["u", "lo", "hi"]), ("Round", ["r"])) if clip_first else \
        (("Round", ["u"]), ("Clip", ["r", "lo", "hi"]))
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Div", ["c", "s"], ["u"], name="div"),
             helper.make_node(first[0], first[1], ["r"], name=first[0].lower()),
             helper.make_node(second[0], second[1], ["k"], name=second[0].lower()),
             helper.make_node("Mul", ["k", "s"], ["q"], name="mul"), *_tail()]
    return _model(nodes, [*_weights(), *consts], pmsm=False)


def qdq_model(scale=0.1) -> onnx.ModelProto:
    consts = [numpy_helper.from_array(np.array(scale, np.float32), "qs"),
              numpy_helper.from_array(np.array(0, np.int8), "qz")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "qs", "qz"], ["qq"], name="ql"),
             helper.make_node("DequantizeLinear", ["qq", "qs", "qz"], ["q"], name="dq"), *_tail()]
    return _model(nodes, [*_weights(), *consts], pmsm=False)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _mask_cast_to_int() -> onnx.ModelProto:
    """base_model with q · Cast(Cast(q > 0, int64), float) after its neurons: a mask of spikes made
    an integer, which no wrapped function of numbers gives."""
    model = base_model()
    act = next(n for n in model.graph.node if n.name == "act")
    act.output[0] = "q0"
    at = list(model.graph.node).index(act) + 1
    for i, node in enumerate([helper.make_node("Greater", ["q0", "zero"], ["m"], name="gt"),
                              helper.make_node("Cast", ["m"], ["mi"], name="to_int", to=TensorProto.INT64),
                              helper.make_node("Cast", ["mi"], ["mf"], name="to_float", to=TensorProto.FLOAT),
                              helper.make_node("Mul", ["q0", "mf"], ["q"], name="masked")]):
        model.graph.node.insert(at + i, node)
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    return model


def _edit(model: onnx.ModelProto, fn) -> onnx.ModelProto:
    fn(model)
    return model


def _node(model, op_type):
    return next(n for n in model.graph.node if n.op_type == op_type)


# ---------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------


@dataclass
class Artifacts:
    """Shared, read-only inputs made once per test session (see the test's fixture)."""

    folder: Path
    ann: Path  # base_model()
    snn: Path  # its compiled SNN (exact mode)
    u8_snn: Path  # base_model(in_type=uint8), compiled
    two_input_snn: Path  # compiled through the API from a two-input ANN (pmsm-compile refuses it)
    bad_norm_snn: Path  # an SNN whose recorded normalization is malformed
    broken_snn: Path  # compiled through the API from kernel_contradicts_weight() (pmsm-compile refuses it)


@dataclass(frozen=True)
class Case:
    name: str
    tool: str  # "compile" or "run"
    make: Callable[[Path, Artifacts], list]  # writes inputs into the folder; returns the arguments
    message: str  # regex searched in the error line
    exit_code: int = 2
    process: bool = False  # also run in a real process (output written below Python, e.g. by C++ loggers)
    outputs: bool = True  # the test adds output paths (-o/--report, --json) and checks none is written
    skip: str | None = None


def _compile(name, make, message, **kw):
    return Case(name, "compile", make, message, **kw)


def _run(name, make, message, **kw):
    return Case(name, "run", make, message, **kw)


def _model_case(name, build, message, **kw):
    """A compile case whose input is one generated model."""
    return _compile(name, lambda d, a: [save(build(), d / f"{name}.onnx")], message, **kw)


# -- files that are not (valid) ONNX ----------------------------------------------------------

def _write(d: Path, name: str, data: bytes) -> list:
    (d / name).write_bytes(data)
    return [d / name]


def _truncated(d, a):
    data = a.ann.read_bytes()
    return _write(d, "truncated.onnx", data[: len(data) // 2])


def _no_graph(d, a):  # a valid protobuf ModelProto without a graph
    return _write(d, "nograph.onnx", onnx.ModelProto(ir_version=10).SerializeToString())


def _zip(d, a):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02")
    return _write(d, "checkpoint.onnx", buf.getvalue())


def _fifo(d, a):
    os.mkfifo(d / "fifo.onnx")
    return [d / "fifo.onnx"]


def _over_max_bytes(d, a):
    return [save(base_model(), d / "m.onnx"), "--max-bytes", "1000"]


# -- external data ------------------------------------------------------------------------------

def _external(d: Path, location: str, *, data_dir: Path | None = None, length: int | None = None) -> list:
    """base_model with the Conv weight W stored externally at ``location`` (relative to the model)."""
    model = base_model()
    w = next(t for t in model.graph.initializer if t.name == "W")
    raw = numpy_helper.to_array(w).tobytes()
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length or len(raw)))):
        w.external_data.add(key=key, value=value)
    model_dir = d / "model"
    model_dir.mkdir()
    if data_dir is not None:
        (data_dir / "weights.bin").write_bytes(raw)
    return [save(model, model_dir / "ext.onnx")]


def _ext_parent(d, a):
    return _external(d, "../weights.bin", data_dir=d)


def _ext_absolute(d, a):
    return _external(d, str(d / "weights.bin"), data_dir=d)


def _ext_symlink(d, a):
    args = _external(d, "link.bin", data_dir=d)
    os.symlink(d / "weights.bin", d / "model" / "link.bin")
    return args


def _ext_hardlink(d, a):
    args = _external(d, "link.bin", data_dir=d)
    os.link(d / "weights.bin", d / "model" / "link.bin")
    return args


def _ext_missing(d, a):
    return _external(d, "missing.bin")


def _ext_short(d, a):
    args = _external(d, "w.bin", length=10_000)
    (d / "model" / "w.bin").write_bytes(bytes(100))
    return args


# -- structure ----------------------------------------------------------------------------------

def _lstm():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, "N", 4])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 16, 3)).astype(np.float32), "Wl"),
             numpy_helper.from_array(rng.standard_normal((1, 16, 4)).astype(np.float32), "Rl")]
    graph = helper.make_graph([helper.make_node("LSTM", ["x", "Wl", "Rl"], ["y"], name="lstm", hidden_size=4)],
                              "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def _custom_op():
    def edit(m):
        _node(m, "PQA").CopyFrom(helper.make_node("Mystery", ["c"], ["q"], name="mystery", domain="acme"))
        m.opset_import.append(helper.make_opsetid("acme", 1))
    return _edit(base_model(), edit)


def _no_function_body():
    return _edit(base_model(), lambda m: m.ClearField("functions"))


def _missing_weights():
    return _edit(base_model(), lambda m: m.graph.initializer.remove(
        next(t for t in m.graph.initializer if t.name == "W")))


def _weight_data_too_long():
    """A 16-channel Conv weight (1,728 bytes: large enough that the checker sees the graph without
    it, pmsm_compiler.weights) whose raw_data carries 4 bytes more than its shape declares."""
    model = base_model()
    rng = np.random.default_rng(1)
    for i, t in enumerate(model.graph.initializer):
        if t.name == "W":
            w = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "W")
            w.raw_data += bytes(4)
            model.graph.initializer[i].CopyFrom(w)
        elif t.name == "G":
            model.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(rng.standard_normal((CLASSES, 16)).astype(np.float32), "G"))
    return model


def _unsorted():
    def edit(m):
        nodes = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(nodes[::-1])
    return _edit(base_model(), edit)


def _output_without_shape():
    return _edit(base_model(), lambda m: m.graph.output[0].type.tensor_type.ClearField("shape"))


def _conv_attribute(name, value):
    return lambda: _edit(base_model(), lambda m: _node(m, "Conv").attribute.append(helper.make_attribute(name, value)))


def kernel_contradicts_weight():
    """Conv kernel_shape 5×5 on a 3×3 weight: the checker and shape inference pass it, onnxruntime
    refuses it at run time."""
    return _conv_attribute("kernel_shape", [5, 5])()


def _pool_larger_than_input():
    def edit(m):
        m.graph.node.insert(1, helper.make_node("MaxPool", ["c"], ["cm"], name="pool", kernel_shape=[64, 64]))
        _node(m, "PQA").input[0] = "cm"
    return _edit(base_model(), edit)


def _weight_pairs_with_samples(first: bool):
    """MatMul(W [2, 4, 32, 32], q [N, 4, 32, 32]) (``first``) or MatMul(q, W): W's leading axis
    broadcasts against the batch axis, pairing weights with samples (tests/test_matmul_left_weight.py)."""
    def edit(m):
        inputs, name = (["Wmix", "q"], "token_mix") if first else (["q", "Wmix"], "channel_mix")
        m.graph.node.insert(2, helper.make_node("MatMul", inputs, ["qm"], name=name))
        _node(m, "GlobalAveragePool").input[0] = "qm"
        m.graph.initializer.append(numpy_helper.from_array(np.full((2, 4, SIDE, SIDE), 1 / SIDE, np.float32), "Wmix"))
    return lambda: _edit(base_model(), edit)


def _no_quantizer():
    def edit(m):
        _node(m, "PQA").CopyFrom(helper.make_node("Relu", ["c"], ["q"], name="relu"))
    return _edit(base_model(), edit)


def _sparse_initializer():
    def edit(m):
        values = numpy_helper.from_array(np.array([1.0], np.float32), "sp")
        indices = numpy_helper.from_array(np.array([0], np.int64), "sp_idx")
        m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [2**20, 2**20]))
    return _edit(base_model(), edit)


def _constant_of_shape():
    """λ = 4 + ReduceSum(ConstantOfShape([2^34], 0.0)): 64 GiB of zeros behind a constant."""
    def edit(m):
        m.graph.initializer.append(numpy_helper.from_array(np.array([2**34], np.int64), "shape"))
        zero = numpy_helper.from_array(np.array([0.0], np.float32))
        extra = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos", value=zero),
                 helper.make_node("ReduceSum", ["big"], ["total"], name="sum", keepdims=0),
                 helper.make_node("Add", ["act.lam", "total"], ["lam2"], name="lam_plus")]
        for i, node in enumerate(extra):
            m.graph.node.insert(i, node)
        _node(m, "PQA").input[1] = "lam2"
    return _edit(base_model(), edit)


def _function_body_constant_of_shape():
    """The pmsm::PQA function body itself adds ReduceSum(ConstantOfShape([2^34])) to λ: the
    compiler reads only the node, but the verification runs the body in onnxruntime."""
    def edit(m):
        body = next(f for f in m.functions if f.name == "PQA")
        extra = onnx.parser.parse_function(
            '<domain: "pmsm", opset_import: ["": 20]>\n'
            "G (lam) => (lam2) {\n"
            "  shape = Constant <value = int64[1] {17179869184}> ()\n"
            "  big = ConstantOfShape (shape)\n"
            "  total = ReduceSum <keepdims = 0> (big)\n"
            "  lam2 = Add (lam, total)\n"
            "}")
        nodes = list(extra.node)
        for node in body.node:
            node.input[:] = ["lam2" if i == "lam" else i for i in node.input]
            nodes.append(node)
        del body.node[:]
        body.node.extend(nodes)
    return _edit(base_model(), edit)


def _two_inputs():
    def edit(m):
        m.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 4, SIDE, SIDE]))
        m.graph.node.insert(1, helper.make_node("Add", ["c", "x2"], ["c2"], name="add_x2"))
        _node(m, "PQA").input[0] = "c2"
    return _edit(base_model(), edit)


def _no_input():
    def edit(m):
        m.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 3, SIDE, SIDE), np.float32), "x"))
        del m.graph.input[:]
    return _edit(base_model(), edit)


def _set_opset(domain, version, append=False):
    def edit(m):
        if append:
            m.opset_import.append(helper.make_opsetid(domain, version))
        else:
            next(o for o in m.opset_import if o.domain == domain).version = version
    return lambda: _edit(base_model(), edit)


def _output_twice():
    return _edit(base_model(), lambda m: m.graph.output.append(m.graph.output[0]))


def _pqa_attr(**attrs):
    return lambda: base_model(**attrs)


def _bad_normalization():
    return _edit(base_model(), lambda m: m.metadata_props.add(key="pmsm.export",
                                                             value=json.dumps({"normalization": 5})))


def _already_snn(d, a):
    return [a.snn]


def _random_inputs_too_big():  # 200 MiB per sample is fine; 64 of them are not
    return base_model(dims=("N", 3, 4096, 4096))


# -- data for pmsm-run --------------------------------------------------------------------------

def _npy_header(shape, dtype=np.uint8) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _labels_npy(n) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(n, np.int64))
    return buf.getvalue()


def _npz_crafted_header(d, a):
    """x.npy's header declares 1.4 M images (4 GiB); the member holds 3 KiB of pixels."""
    path = d / "crafted.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("x.npy", _npy_header((1_400_000, SIDE, SIDE, 3)) + bytes(3 * SIDE * SIDE))
        z.writestr("y.npy", _labels_npy(1))
    return [a.snn, "-T", "1", "--data", path]


def write_black_images_npz(path: Path, images: int) -> Path:
    """``images`` black 32×32 images, deflated (written in blocks, never held whole)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((images, SIDE, SIDE, 3)))
            block = bytes(1000 * 3 * SIDE * SIDE)
            for _ in range(images // 1000):
                f.write(block)
        z.writestr("y.npy", _labels_npy(images))
    return path


def _npz_zip_bomb(d, a):
    """24,000 black images (70 MiB) deflated into 70 KiB: a zip bomb. The issue's 4 GiB in a
    3 MiB file is the same at scale: the 1,000 bundled images (2.9 MiB) tiled 1,400 times in an
    LZMA member, which numpy reads through zipfile without a complaint."""
    return [a.snn, "-T", "1", "--data", write_black_images_npz(d / "bomb.npz", 24_000)]


def _npy_truncated(d, a):
    path = d / "images.npy"
    path.write_bytes(_npy_header((1000, SIDE, SIDE, 3)) + bytes(5000))
    return [a.snn, "-T", "1", "--data", path]


def _npz(d, name, **arrays):
    path = d / name
    np.savez(path, **arrays)
    return path


def _labels_out_of_range(d, a):
    y = np.arange(8) * 3  # up to 21, the model has 10 classes
    return [a.snn, "-T", "1", "--data", _npz(d, "labels.npz", x=np.zeros((8, SIDE, SIDE, 3), np.uint8), y=y)]


def _float_data_into_uint8_model(d, a):
    x = np.zeros((4, 3, SIDE, SIDE), np.float32)
    return [a.u8_snn, "-T", "1", "--data", _npz(d, "float.npz", x=x, y=np.zeros(4, np.int64))]


def _wrong_image_size(d, a):
    return [a.snn, "-T", "1", "--data", _npz(d, "small.npz", x=np.zeros((4, 16, 16, 3), np.uint8),
                                              y=np.zeros(4, np.uint8))]


def _corrupt_npz(d, a):
    good = _npz(d, "good.npz", x=np.zeros((4, SIDE, SIDE, 3), np.uint8), y=np.zeros(4, np.uint8))
    bad = d / "corrupt.npz"
    bad.write_bytes(good.read_bytes()[:200])
    good.unlink()
    return [a.snn, "-T", "1", "--data", bad]


def _not_a_file(d, a):
    (d / "file").write_text("x")
    return [a.snn, "-T", "1", "--plot", d / "file"]


# ---------------------------------------------------------------------------------------------

CASES: list[Case] = [
    # files that are not ONNX models (tests/test_loading.py has the details)
    _compile("missing_file", lambda d, a: [d / "missing.onnx"], r"model file not found: .*missing\.onnx"),
    _compile("directory", lambda d, a: [(d / "m.onnx").mkdir() or d / "m.onnx"], r"is a directory"),
    _compile("fifo", _fifo, r"not a regular file", skip=None if hasattr(os, "mkfifo") else "no FIFOs"),
    _compile("empty_file", lambda d, a: _write(d, "empty.onnx", b""), r"empty \(0 bytes\)"),
    _compile("truncated", _truncated, r"cannot parse .*truncated\.onnx"),
    _compile("png", lambda d, a: _write(d, "image.onnx", b"\x89PNG\r\n\x1a\n" + bytes(200)), r"PNG image"),
    _compile("zip_checkpoint", _zip, r"zip archive"),
    _compile("json", lambda d, a: _write(d, "m.onnx", b'{"graph": []}'), r"looks like JSON"),
    _compile("random_bytes", lambda d, a: _write(d, "m.onnx", bytes(range(7, 250))), r"not an ONNX model"),
    _compile("no_graph", _no_graph, r"no graph"),
    _compile("over_max_bytes", _over_max_bytes, r"over the limit of 1,000 bytes"),
    # external data (tests/test_loading.py)
    _compile("external_parent", _ext_parent, r"'\.\.' is not allowed"),
    _compile("external_absolute", _ext_absolute, r"absolute paths are not allowed"),
    _compile("external_symlink", _ext_symlink, r"symbolic link|outside the model's directory"),
    _compile("external_hardlink", _ext_hardlink, r"hard links"),
    _compile("external_missing", _ext_missing, r"missing\.bin.*file not found"),
    _compile("external_short", _ext_short, r"exceeds the file size"),
    # structure (tests/test_loading.py, tests/test_compile_cli.py)
    _compile("lstm", lambda d, a: [save(_lstm(), d / "lstm.onnx")], r"unsupported ops: LSTM"),
    _model_case("custom_domain_op", _custom_op, r"unsupported ops: acme::Mystery"),
    _model_case("pmsm_op_without_body", _no_function_body, r"pmsm::PQA .*no model-local function body"),
    _model_case("missing_weights", _missing_weights, r"missing weights: .*'W'"),
    _model_case("weight_data_too_long", _weight_data_too_long,
                r"ONNX checker: TensorProto \(tensor name: W\) raw_data size \(1732 bytes\) does not match the "
                r"declared shape and type \(1728 bytes required\)"),
    _model_case("unsorted_graph", _unsorted, r"not topologically sorted"),
    _model_case("dynamic_spatial", lambda: base_model(dims=("N", 3, "H", "W")),
                r"dynamic dimension.*'H', 'W'.*--input-shape NAME:"),
    _compile("input_shape_unknown_input", lambda d, a: [save(base_model(dims=("N", 3, "H", "W")), d / "m.onnx"),
                                                        "--input-shape", "y:1x3x32x32"],
             r"--input-shape: the model has no input 'y' \(inputs: x\)"),
    _compile("input_shape_wrong_rank", lambda d, a: [save(base_model(dims=("N", 3, "H", "W")), d / "m.onnx"),
                                                     "--input-shape", "x:1x3x32"], r"has rank 4.*has rank 3"),
    _compile("input_shape_zero_dim", lambda d, a: [save(base_model(dims=("N", 3, "H", "W")), d / "m.onnx"),
                                                   "--input-shape", "x:1x3x0x32"], r"dimension 0 must be >= 1"),
    _compile("input_shape_garbage", lambda d, a: [save(base_model(dims=("N", 3, "H", "W")), d / "m.onnx"),
                                                  "--input-shape", "x:1x3x32x3.5"], r"neither a positive integer"),
    _compile("input_shape_contradicts_declared", lambda d, a: [save(base_model(), d / "m.onnx"),
                                                               "--input-shape", "x:1x4x32x32"],
             r"declares dimension 3 at axis 1, the given shape has 4"),
    _model_case("output_without_shape", _output_without_shape, r"graph output 'y' declares no shape"),
    _model_case("checker_error", _conv_attribute("strides", [0, 0]),
                r"invalid ONNX model .*ONNX checker: .*strides must only contain positive values"),
    _model_case("conv_kernel_contradicts_weight", kernel_contradicts_weight,
                r"onnxruntime cannot run .*kernel_shape is not compatible with W shape", process=True),
    _model_case("pool_window_larger_than_input", _pool_larger_than_input, r"onnxruntime cannot run .*MaxPool"),
    _model_case("no_quantizer", _no_quantizer, r"no quantized activation"),
    _model_case("left_weight_pairs_with_samples", _weight_pairs_with_samples(first=True),
                r"MatMul 'token_mix': constant weight first \(W·x\) of rank 4 broadcasts against the batch axis"),
    _model_case("right_weight_pairs_with_samples", _weight_pairs_with_samples(first=False),
                r"MatMul 'channel_mix': constant weight second \(x·W\) of rank 4 broadcasts against the batch axis"),
    _compile("already_snn", _already_snn, r"already a compiled SNN"),
    # output paths (tests/test_compile_cli.py)
    _compile("output_dir_missing", lambda d, a: [a.ann, "-o", d / "nope" / "out.onnx"],
             r"cannot write the compiled model .*does not exist", outputs=False),
    _compile("output_is_input", lambda d, a: [save(base_model(), d / "m.onnx"), "-o", d / "m.onnx"],
             r"output path must differ", outputs=False),
    _compile("report_is_directory", lambda d, a: [a.ann, "-o", d / "out.onnx", "--report", d],
             r"cannot write the report .*is a directory", outputs=False),
    _compile("samples_zero", lambda d, a: [a.ann, "--samples", "0"], r"--samples must be >= 1"),
    _compile("seed_negative", lambda d, a: [a.ann, "--seed", "-1"], r"--seed must be >= 0, got -1"),
    # issue 15, item 5: sizes
    _model_case("huge_input_dims", lambda: base_model(dims=("N", 3, 100_000, 100_000)),
                r"graph input 'x' has shape \['N', 3, 100000, 100000\] .* per sample, over the limit of 2\.0 GiB"),
    _model_case("random_inputs_too_big", _random_inputs_too_big,
                r"random verification inputs for input 'x' .*: 64 samples need 12\.0 GiB.*over the limit"),
    _model_case("constant_of_shape_2_34", _constant_of_shape,
                r"tensor 'big' \(output of ConstantOfShape node 'cos', #0\) has shape \[17179869184\].*64\.0 GiB",
                process=True),
    _model_case("function_body_constant_of_shape", _function_body_constant_of_shape,
                r"tensor 'big.*' \(output of ConstantOfShape .* in an inlined function body\).*64\.0 GiB"),
    _model_case("sparse_initializer_2_40", _sparse_initializer,
                r"sparse tensor 'sp' \(sparse initializer\) declares dense shape \[1048576, 1048576\].*4\.0 TiB"),
    # opsets and domains
    _model_case("opset_99", _set_opset("", 99), r"opset 99; supported: opsets 15 to 28$", process=True),
    _model_case("opset_14", _set_opset("", 14), r"opset 14; supported: opsets 15 to 28; convert it"),
    # no model-local function: converted on loading, where onnx's converter can (opset 0: it cannot)
    _model_case("opset_0_no_functions", lambda: _edit(plain_model(), lambda m: setattr(m.opset_import[0], "version", 0)),
                r"opset 0; supported from 15; onnx's version converter could not convert it \(.*\): re-export"),
    _model_case("opset_twice", _set_opset("ai.onnx", 17, append=True), r"lists the domain 'ai\.onnx' twice"),
    _model_case("pmsm_domain_version", _set_opset("pmsm", 7), r"'pmsm' domain at version 7; .*implements version 1"),
    _model_case("pmsm_domain_twice", _set_opset("pmsm", 1, append=True), r"lists the domain 'pmsm' twice"),
    # graph inputs and outputs
    _model_case("two_inputs", _two_inputs, r"2 data inputs \('x', 'x2'\); pmsm-compile supports models with one"),
    _model_case("no_input", _no_input, r"0 data inputs \(none\)"),
    _model_case("output_twice", _output_twice, r"graph output 'y' is listed more than once"),
    _model_case("bfloat16_input", lambda: base_model(in_type=TensorProto.BFLOAT16),
                r"input 'x' has element type bfloat16"),
    # quantizer parameters
    _model_case("pqa_L_0", _pqa_attr(L=0), r"pmsm::PQA 'act': L = 0 must be >= 1", process=True),
    _model_case("pqa_lambda_inf", _pqa_attr(lam=np.inf), r"λ = inf must be a positive, finite float32"),
    _model_case("pqa_lambda_nan", _pqa_attr(lam=np.nan), r"λ = nan must be a positive, finite float32"),
    _model_case("pqa_lambda_subnormal", _pqa_attr(lam=1e-44), r"λ = 9\.8.*e-45 must be a positive, finite float32"),
    _model_case("pqa_alpha_L_fraction", _pqa_attr(alpha=-0.3), r"α·L = -2\.4 is not an integer level"),
    _model_case("pqa_beta_L_fraction", _pqa_attr(beta=0.3), r"β·L = 2\.4 is not an integer level"),
    _model_case("pqa_alpha_nan", _pqa_attr(alpha=float("nan")), r"α·L = nan is not an integer level"),
    _model_case("pqa_levels_over_2_24", _pqa_attr(L=2**30), r"clip range .* exceeds ±2\^24"),
    _model_case("qdq_scale_inf", lambda: qdq_model(np.inf), r"QuantizeLinear 'ql'.*input scale inf"),
    _model_case("qdq_scale_zero", lambda: qdq_model(0.0), r"QuantizeLinear 'ql'.*input scale 0\.0"),
    _model_case("plain_clip_inf", lambda: plain_model(hi=np.inf), r"Floor 'floor'.*clip max inf"),
    _model_case("plain_clip_fraction", lambda: plain_model(lo=-2.5), r"clip min -2\.5 is not an integer"),
    _model_case("plain_scale_inf", lambda: plain_model(scale=np.inf), r"input scale inf"),
    _model_case("plain_scale_zero", lambda: plain_model(scale=0.0), r"Floor 'floor'.*input scale 0\.0"),
    _model_case("round_scale_inf", lambda: round_model(scale=np.inf), r"Round 'round'.*input scale inf"),
    _model_case("round_scale_zero", lambda: round_model(scale=0.0), r"Round 'round'.*input scale 0\.0"),
    _model_case("round_clip_fraction", lambda: round_model(lo=-2.5), r"Round 'round'.*clip min -2\.5 is not an integer"),
    _model_case("round_clip_inf", lambda: round_model(hi=np.inf, clip_first=True),
                r"Round 'round'.*clip max inf is not an integer"),
    _model_case("round_clip_above_zero", lambda: round_model(lo=1.0), r"Round 'round'.*clip range \[1, 7\]"),
    _model_case("mask_of_spikes_to_int", _mask_cast_to_int,
                r"Cast 'to_int' of a mask of spikes to int64: a mask of spikes compiles only into a Where"),
    _compile("normalization_metadata", lambda d, a: [save(_bad_normalization(), d / "m.onnx"),
                                                     "--calibration-data", "bundled"],
             r"recorded normalization is malformed"),
    # pmsm-run: arguments (tests/test_run_cli.py)
    _run("timesteps_1e9", lambda d, a: [a.snn, "-T", "1000000000"],
         r"--timesteps 1000000000 is over the limit of 10,000: .*memory grows with T", process=True),
    _run("timesteps_0", lambda d, a: [a.snn, "-T", "0"], r"--timesteps must be >= 1, got 0"),
    _run("batch_size_0", lambda d, a: [a.snn, "-T", "1", "--batch-size", "0"], r"--batch-size must be >= 1"),
    _run("ann_as_model", lambda d, a: [a.ann, "-T", "1"], r"not a compiled SNN"),
    _run("snn_as_ann", lambda d, a: [a.snn, "-T", "1", "--ann", a.snn], r"--ann .* is a compiled SNN"),
    _run("unknown_provider", lambda d, a: [a.snn, "-T", "1", "--providers", "FooExecutionProvider"],
         r"not available: FooExecutionProvider"),
    _run("json_dir_missing", lambda d, a: [a.snn, "-T", "1", "--json", d / "no" / "r.json"], r"does not exist",
         outputs=False),
    _run("plot_is_a_file", _not_a_file, r"is not a directory"),
    _run("two_input_snn", lambda d, a: [a.two_input_snn, "-T", "1"], r"2 data inputs \('x', 'x2'\); pmsm-run feeds one"),
    _run("snn_onnxruntime_refuses", lambda d, a: [a.broken_snn, "-T", "1"],
         r"onnxruntime cannot run .*broken\.snn\.onnx: .*kernel_shape is not compatible", process=True),
    _run("snn_normalization_metadata", lambda d, a: [a.bad_norm_snn, "-T", "1"], r"recorded normalization is malformed"),
    # pmsm-run: data (tests/test_run_cli.py, tests/test_data.py)
    _run("data_missing", lambda d, a: [a.snn, "-T", "1", "--data", d / "missing.npz"], r"data path not found"),
    _run("npz_corrupt", _corrupt_npz, r"cannot read \.npz file .*corrupt\.npz"),
    _run("wrong_image_size", _wrong_image_size, r"samples have shape \[3, 16, 16\].*expects \[3, 32, 32\]"),
    _run("labels_out_of_range", _labels_out_of_range,
         r"labels go up to 21, but the model's output 'y' has 10 classes \(labels 0\.\.9\)"),
    _run("npz_header_declares_4_GiB", _npz_crafted_header,
         r"\[x\.npy\]: the \.npy header declares shape \[1400000, 32, 32, 3\] uint8 \(4,300,800,000 bytes\), but "
         r"the member holds 3,072 bytes"),
    _run("npz_zip_bomb", _npz_zip_bomb, r"\[x\.npy\]: .* a \d+x expansion .*zip bomb", process=True),
    _run("npy_header_declares_more", _npy_truncated, r"the header declares shape \[1000, 32, 32, 3\]"),
    _run("float_data_into_uint8_model", _float_data_into_uint8_model, r"takes raw uint8 pixels.*float32"),
    _run("ann_input_type_differs", lambda d, a: [a.u8_snn, "-T", "1", "--ann", a.ann],
         r"the ANN's input is tensor\(float\), the SNN's is tensor\(uint8\)"),
]
