"""Load untrusted ONNX models defensively, and write outputs atomically.

Threat model (the input ``.onnx`` file and everything next to it may be hostile):
1. Protobuf allocates while parsing, before anything is validated: check the file size first.
2. External-data paths are a known traversal vector (CVE-2022-25882, CVE-2024-27318, link CVEs):
   only relative paths inside the model's own directory, no ``..``, no symlinks or hard links.
3. onnxruntime session creation is not crash-proof on crafted models: run the ONNX checker and
   strict shape inference, and the op allowlist, before any session is ever created.
4. A small file can declare huge tensors (a sparse initializer's dense shape, ``ConstantOfShape``
   of a constant shape, huge input dimensions): refuse any tensor whose declared or inferred
   static size is over ``limits.MAX_TENSOR_BYTES`` before anything allocates it.
5. Opset imports outside what onnx and onnxruntime implement, or an unknown ``pmsm`` domain
   version, are refused by range (``limits.supported_opsets``) instead of failing later.

Every failure is an ``InputError`` (``UnsupportedModelError`` for ops the compiler does not
support) with a one-line message naming the file, tensor, node or input concerned.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto

from pmsm_compiler import opset_upgrade, weights
from pmsm_compiler.errors import InputError, UnsupportedModelError, one_line
from pmsm_compiler.files import (check_output_path, save_bytes_atomic, save_text_atomic,  # noqa: F401 - re-exported
                                 write_atomic)
from pmsm_compiler.limits import MAX_TENSOR_BYTES, format_bytes, supported_opsets
from pmsm_compiler.ops import DOMAIN as PMSM_DOMAIN
from pmsm_compiler.ops import DOMAIN_VERSION as PMSM_DOMAIN_VERSION
from pmsm_compiler.ops.supported import SUPPORTED_OPS
from pmsm_compiler.ops.temporal import REGION_DOMAIN

__all__ = [
    "DEFAULT_ALLOWED_OPS",
    "MAX_MODEL_BYTES",
    "PMSM_DOMAIN",
    "PMSM_FUNCTION_OPS",
    "PROTOBUF_LIMIT",
    "MAX_MODEL_WITH_DATA_BYTES",
    "check_missing_inputs",
    "check_ops",
    "check_opsets",
    "check_output_path",
    "check_single_input",
    "check_static_shapes",
    "check_tensor_sizes",
    "load_model",
    "save_bytes_atomic",
    "write_atomic",
    "save_model_atomic",
    "save_text_atomic",
]

#: A serialized protobuf message must be smaller than 2 GiB.
PROTOBUF_LIMIT = 2**31
#: Default upper bound for a model file (protobuf's own limit).
MAX_MODEL_BYTES = PROTOBUF_LIMIT - 1
#: Default upper bound for a model file plus its external data: the compiler holds the weights
#: in memory (about four copies of them at the verification's peak), so the bound is the memory
#: of a workstation, not protobuf's 2 GiB.
MAX_MODEL_WITH_DATA_BYTES = 16 * 2**30

#: Standard-domain ops the compiler accepts (domain "" == "ai.onnx"): those some pass handles
#: (``ops.supported``, the one table).
DEFAULT_ALLOWED_OPS: frozenset[tuple[str, str]] = frozenset(("", op) for op in SUPPORTED_OPS)

#: The PQA activations. Like every ``pmsm::*`` op they are accepted when the model carries a
#: model-local FunctionProto for them (stock onnxruntime cannot run them otherwise, and shape
#: inference silently leaves their outputs shapeless), or when an allowlist names them.
PMSM_FUNCTION_OPS: frozenset[tuple[str, str]] = frozenset(
    {(PMSM_DOMAIN, "PQA"), (PMSM_DOMAIN, "QCFS")}
)

#: What the user can do about the ops that quantization toolchains emit outside the QDQ form:
#: (ops, hint); an op is "domain::op" for a contrib domain, a bare name for the ONNX domain.
PRODUCER_HINTS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"QLinearConv", "QLinearMatMul", "com.microsoft::QLinearAdd", "com.microsoft::QLinearMul",
                "com.microsoft::QGemm", "com.microsoft::QLinearConcat", "com.microsoft::QLinearAveragePool",
                "com.microsoft::QLinearGlobalAveragePool", "com.microsoft::QLinearLeakyRelu",
                "com.microsoft::QLinearSigmoid", "com.microsoft::QLinearSoftmax", "com.microsoft::QLinearReduceMean",
                "com.microsoft::QLinearWhere", "com.microsoft::QLinearConvTranspose", "com.microsoft::QAttention"}),
     "onnxruntime's QOperator format (integer kernels) is not supported: quantize with quantize_static(..., "
     "quant_format=QuantFormat.QDQ)"),
    (frozenset({"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "com.microsoft::DynamicQuantizeMatMul",
                "com.microsoft::MatMulIntegerToFloat", "com.microsoft::DynamicQuantizeLSTM"}),
     "dynamic quantization computes each activation's scale from its input, so a neuron has no fixed levels: "
     "quantize statically with calibration data (onnxruntime: quantize_static, QDQ format)"),
    (frozenset({"com.microsoft::QuantizeLinear", "com.microsoft::DequantizeLinear"}),
     "onnxruntime's contrib Q/DQ (written for int4 weights or 16-bit activations below opset 21): convert the "
     "float model to opset 21 before quantizing (onnx.version_converter.convert_version(model, 21)) to get the "
     "standard QuantizeLinear/DequantizeLinear"),
    (frozenset({"qonnx.custom_op.general::Quant", "qonnx.custom_op.general::BipolarQuant",
                "qonnx.custom_op.general::Trunc", "qonnx.custom_op.general::FloatQuant"}),
     "QONNX format (Brevitas export_qonnx): export with brevitas.export.export_onnx_qcdq"),
)

_MAX_LISTED = 20  # problems named in one error line before "... and N more"
_ONNX_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _fail(message: str, cls: type[InputError] = InputError) -> InputError:
    return cls(one_line(message))


def _norm_domain(domain: str) -> str:
    return "" if domain in _ONNX_DOMAINS else domain


def _op_label(domain: str, op_type: str) -> str:
    domain = _norm_domain(domain)
    return f"{domain}::{op_type}" if domain else op_type


def _node_label(node: onnx.NodeProto, index: int, where: str = "") -> str:
    name = f"'{node.name}'" if node.name else "(unnamed)"
    return f"node {name}, #{index}{where}"


def _join_limited(items: list[str], sep: str = ", ") -> str:
    shown = items[:_MAX_LISTED]
    text = sep.join(shown)
    if len(items) > len(shown):
        text += f"{sep}... and {len(items) - len(shown)} more"
    return text


# --------------------------------------------------------------------------------------------
# file checks and parsing
# --------------------------------------------------------------------------------------------

# Protobuf wire type each ModelProto field is written with (0 = varint, 2 = length-delimited).
_MODEL_FIELD_WIRE_TYPES: dict[int, int] = {
    f.number: (0 if f.type in (f.TYPE_INT32, f.TYPE_INT64, f.TYPE_UINT32, f.TYPE_UINT64,
                               f.TYPE_ENUM, f.TYPE_BOOL) else 2)
    for f in ModelProto.DESCRIPTOR.fields
}  # fmt: skip

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive, e.g. a PyTorch checkpoint"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x89PNG", "a PNG image"),
    (b"\x89HDF", "an HDF5 file, e.g. a Keras model"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable"),
)


def _sniff_not_onnx(head: bytes) -> str | None:
    """Why ``head`` (the first bytes of a file) cannot start a serialized ModelProto, or None."""
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return f"looks like {what}"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "looks like a Python pickle, e.g. a PyTorch checkpoint"
    stripped = head.lstrip(b" \t\r\n\xef\xbb\xbf")
    if stripped[:1] in (b"{", b"["):
        return "looks like JSON"
    try:
        text: str | None = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # tolerate a character cut at the end of the sample
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        if "ir_version" in text or "graph" in text or text.lstrip().startswith("<"):
            return "looks like text, e.g. the ONNX text format; convert it with onnx.parser first"
        return "looks like a text file"
    # A serializer writes fields in field-number order, so the first bytes are the tag of a
    # ModelProto field (normally ir_version = field 1, varint): decode that tag.
    tag, shift = 0, 0
    for byte in head[:5]:
        tag |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    else:
        return "does not start with a protobuf field"
    field, wire_type = tag >> 3, tag & 7
    if _MODEL_FIELD_WIRE_TYPES.get(field) != wire_type:
        return "does not start with an ONNX ModelProto field"
    return None


def _read_model_file(path: str, max_bytes: int) -> tuple[bytes, str, os.stat_result]:
    """Read the whole model file after the checks; return (bytes, real path, its status when
    opened)."""
    try:
        st = os.stat(path)  # follows a symlinked model file on purpose
    except FileNotFoundError:
        raise _fail(f"model file not found: {path}") from None
    except OSError as exc:
        raise _fail(f"cannot access model file {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(f"model path is a directory, not an ONNX file: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(f"model path is not a regular file: {path}")
    real = os.path.realpath(path)
    try:
        # O_NONBLOCK: never hang on a FIFO swapped in after the stat above.
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise _fail(f"cannot open model file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _fail(f"model path is not a regular file: {path}")
        size = st.st_size
        if size == 0:
            raise _fail(f"model file is empty (0 bytes): {path}")
        if size > max_bytes:
            raise _fail(
                f"model file {path} is {format_bytes(size)}, over the limit of {format_bytes(max_bytes)}"
                + (" (protobuf cannot hold more; store weights as external data)"
                   if max_bytes >= MAX_MODEL_BYTES else "")
            )  # fmt: skip
        head = f.read(64)
        reason = _sniff_not_onnx(head)
        if reason is not None:
            raise _fail(f"not an ONNX model: {path} ({reason})")
        # Bounded read: a file that grew after fstat cannot push us past max_bytes. From the start
        # again rather than head + the rest: that concatenation copied the whole model once more.
        f.seek(0)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _fail(
            f"model file {path} grew past the limit of {format_bytes(max_bytes)} while reading"
        )
    return data, real, st


def _parse_model(data: bytes, path: str) -> ModelProto:
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, RecursionError):
        raise _fail(f"cannot parse {path} (truncated or not an ONNX model)") from None
    if not model.HasField("graph"):
        raise _fail(f"cannot parse {path} (truncated or not an ONNX model: no graph)")
    return model


# --------------------------------------------------------------------------------------------
# external data
# --------------------------------------------------------------------------------------------


def _graph_tensors(graph: GraphProto) -> Iterator[tuple[TensorProto, str]]:
    for t in graph.initializer:
        yield t, f"initializer '{t.name}'"
    for sp in graph.sparse_initializer:
        yield sp.values, f"sparse initializer '{sp.values.name}'"
        yield sp.indices, f"sparse initializer '{sp.values.name}' (indices)"
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[tuple[TensorProto, str]]:
    for node in nodes:
        for attr in node.attribute:
            label = f"attribute '{attr.name}' of node '{node.name}'"
            if attr.HasField("t"):
                yield attr.t, label
            for t in attr.tensors:
                yield t, label
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values, label
                yield attr.sparse_tensor.indices, label
            for sp in attr.sparse_tensors:
                yield sp.values, label
                yield sp.indices, label
            if attr.type == AttributeProto.GRAPH:
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


def _all_tensors(model: ModelProto) -> Iterator[tuple[TensorProto, str]]:
    yield from _graph_tensors(model.graph)
    for fn in model.functions:
        yield from _node_tensors(fn.node)


def _validate_external_data(model: ModelProto, base_dir: str) -> int:
    """Check every external-data reference before anything is read; return the total bytes."""
    total = 0
    for tensor, label in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries: dict[str, str] = {}
        for kv in tensor.external_data:
            if kv.key in entries:
                raise _fail(
                    f"external data of tensor '{tensor.name}' ({label}) repeats key '{kv.key}'"
                )
            entries[kv.key] = kv.value
        loc = entries.get("location", "")

        def bad(why: str, *, _t=tensor, _label=label, _loc=loc) -> InputError:
            return _fail(
                f"external data of tensor '{_t.name}' ({_label}) at location {_loc!r}: {why}"
            )

        unknown = sorted(set(entries) - {"location", "offset", "length", "checksum", "basepath"})
        if unknown:
            raise bad(f"unknown key(s) {', '.join(unknown)}")
        if entries.get("basepath"):
            raise bad("a 'basepath' entry is not accepted")
        if "sparse" in label:
            raise bad("external data in sparse tensors is not supported")
        if not loc:
            raise bad("no location given")
        if "\x00" in loc:
            raise bad("location contains a NUL byte")
        if (os.path.isabs(loc) or loc.startswith(("/", "\\"))
                or (len(loc) > 1 and loc[1] == ":")):  # fmt: skip
            raise bad("absolute paths are not allowed; the data must sit in the model's directory")
        parts = loc.replace("\\", "/").split("/")
        if ".." in parts:
            raise bad("'..' is not allowed; the data must sit in the model's directory")
        joined = os.path.normpath(os.path.join(base_dir, loc))
        real = os.path.realpath(joined)
        if os.path.commonpath([real, base_dir]) != base_dir:
            raise bad(f"resolves outside the model's directory {base_dir}")
        if real != joined:
            raise bad("the path goes through a symbolic link")
        try:
            st = os.lstat(joined)
        except FileNotFoundError:
            raise bad("file not found") from None
        except OSError as exc:
            raise bad(f"cannot access file: {exc.strerror or exc}") from None
        if stat.S_ISLNK(st.st_mode):
            raise bad("the file is a symbolic link")
        if not stat.S_ISREG(st.st_mode):
            raise bad("not a regular file")
        if st.st_nlink > 1:
            raise bad(f"the file has {st.st_nlink} hard links (maybe a link to a file elsewhere)")
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else None
        except ValueError:
            raise bad("offset/length are not integers") from None
        if offset < 0 or (length is not None and length < 0):
            raise bad("negative offset or length")
        if length is None:
            length = st.st_size - offset
        if offset + length > st.st_size:
            raise bad(
                f"offset {offset} + length {length} exceeds the file size ({st.st_size} bytes)"
            )
        total += length
    return total


# --------------------------------------------------------------------------------------------
# structural checks
# --------------------------------------------------------------------------------------------


def _normalize_allowed(allowed: Iterable[tuple[str, str] | str]) -> frozenset[tuple[str, str]]:
    out = set()
    for item in allowed:
        if isinstance(item, str):
            domain, _, op = item.rpartition("::")
        else:
            domain, op = item
        out.add((_norm_domain(domain), op))
    return frozenset(out)


def _supported_summary(allowed: frozenset[tuple[str, str]]) -> str:
    names = sorted(_op_label(d, o) for d, o in allowed)
    return (
        f"supported: {', '.join(names)}; and {PMSM_DOMAIN}::* ops that carry a model-local "
        f"function (e.g. PQA, QCFS)"
    )


def _unsupported_in(
    nodes: Iterable[onnx.NodeProto],
    allowed: frozenset[tuple[str, str]],
    local_functions: set[tuple[str, str, str]],
    where: str,
) -> list[str]:
    problems: list[str] = []
    for index, node in enumerate(nodes):
        domain = _norm_domain(node.domain)
        key = (domain, node.op_type)
        label = _op_label(domain, node.op_type)
        if key in allowed:
            pass
        elif domain in (PMSM_DOMAIN, REGION_DOMAIN):
            if (domain, node.op_type, node.overload) not in local_functions:
                problems.append(
                    f"{label} ({_node_label(node, index, where)}: no model-local function body)"
                )
        else:
            problems.append(f"{label} ({_node_label(node, index, where)})")
        # Control-flow subgraphs (only reachable if an allowlist admits If/Loop/Scan).
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for g in subgraphs:
                inner = f" in subgraph '{attr.name}' of node '{node.name}'"
                problems += _unsupported_in(g.node, allowed, local_functions, inner)
    return problems


def check_ops(model: ModelProto, allowed: Iterable[tuple[str, str] | str] | None = None) -> None:
    """Raise UnsupportedModelError naming every node whose op the compiler does not support.

    ``allowed`` holds ``(domain, op_type)`` pairs ("" or "ai.onnx" for the standard domain; a
    plain string ``"Conv"`` or ``"pmsm::PQA"`` is accepted too). ``pmsm::*`` nodes are also
    accepted when the model defines a local FunctionProto for them. Function bodies are not
    checked against the allowlist: the compiler treats such nodes as units, and the ONNX checker
    validates the bodies.
    """
    allowed_set = _normalize_allowed(DEFAULT_ALLOWED_OPS if allowed is None else allowed)
    local_functions = {(f.domain, f.name, f.overload) for f in model.functions}
    problems = _unsupported_in(model.graph.node, allowed_set, local_functions, "")
    if problems:
        used = {_op_label(_norm_domain(n.domain), n.op_type) for n in model.graph.node}
        hints = "".join(f"; {hint}" for ops, hint in PRODUCER_HINTS if ops & used)
        raise _fail(
            f"unsupported ops: {_join_limited(problems)}{hints}; {_supported_summary(allowed_set)}",
            UnsupportedModelError,
        )


def check_missing_inputs(model: ModelProto) -> None:
    """Every node input must be a graph input, an initializer, or an earlier node's output."""
    graph = model.graph
    available = {v.name for v in graph.input}
    available |= {t.name for t in graph.initializer}
    available |= {sp.values.name for sp in graph.sparse_initializer}
    producer: dict[str, tuple[int, onnx.NodeProto]] = {}
    for index, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer.setdefault(out, (index, node))
    missing: list[str] = []
    unsorted: list[str] = []
    for index, node in enumerate(graph.node):
        for name in node.input:
            if not name or name in available:
                continue  # "" is an omitted optional input
            if name in producer:
                later_index, later = producer[name]
                unsorted.append(
                    f"{_node_label(node, index)} ({node.op_type}) uses '{name}', produced later "
                    f"by {_node_label(later, later_index)}"
                )
            else:
                missing.append(f"{_node_label(node, index)} ({node.op_type}) input '{name}'")
        available.update(o for o in node.output if o)
    if missing:
        raise _fail(
            f"missing weights: {_join_limited(missing)} — not a graph input, an initializer, "
            f"or the output of any node"
        )
    if unsorted:
        raise _fail(f"graph is not topologically sorted: {_join_limited(unsorted)}")


def _check_io_shapes_declared(model: ModelProto) -> None:
    # The checker rejects this too, but without naming the value ("Field 'shape' of 'type' is
    # required but missing.").
    graph = model.graph
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for v in values:
            if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape"):
                raise _fail(
                    f"graph {kind} '{v.name}' declares no shape (ONNX requires one on graph "
                    f"inputs and outputs, dynamic dimensions are allowed)"
                )


def check_static_shapes(model: ModelProto) -> None:
    """Every graph input must have a known rank and static, positive non-batch dimensions."""
    initializers = {t.name for t in model.graph.initializer}
    problems: list[str] = []
    for v in model.graph.input:
        if v.name in initializers:
            continue  # IR < 4 style: initializers listed as inputs
        if not v.type.HasField("tensor_type"):
            problems.append(f"input '{v.name}' is not a tensor")
            continue
        tt = v.type.tensor_type
        if not tt.HasField("shape"):
            problems.append(f"input '{v.name}' has an unknown rank")
            continue
        bad_axes, names = [], []
        for axis, dim in enumerate(tt.shape.dim):
            if axis == 0:
                if dim.HasField("dim_value") and dim.dim_value <= 0:
                    problems.append(f"input '{v.name}' has batch dimension {dim.dim_value}")
                continue
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            bad_axes.append(str(axis))
            if dim.HasField("dim_param"):
                names.append(repr(dim.dim_param))
            elif dim.HasField("dim_value"):
                names.append(str(dim.dim_value))
            else:
                names.append("?")
        if bad_axes:
            problems.append(
                f"input '{v.name}' has dynamic dimension(s) at axis {','.join(bad_axes)} "
                f"({', '.join(names)})"
            )
    if problems:
        raise _fail(
            "; ".join(problems) + "; the compiler needs static spatial shapes "
            f"(only the batch axis may be dynamic): fix them with {INPUT_SHAPE_FLAG} NAME:Nx3x32x32"
        )


INPUT_SHAPE_FLAG = "--input-shape"


def parse_input_shape(text: str) -> tuple[str | None, list[int | str]]:
    """``NAME:1x3x32x32`` (also ``NAME:[1,3,32,32]``, or dims alone for a one-input model) →
    (name or None, dims). A dim that is not a positive integer (``N``, ``batch``) stays symbolic."""
    name, sep, dims = text.rpartition(":")
    dims = dims.strip().strip("[]()")
    parts = [p.strip() for p in dims.replace(",", "x").split("x")] if dims else []
    if not parts or any(not p for p in parts):
        raise InputError(f"{INPUT_SHAPE_FLAG} {text!r}: expected NAME:DIMS such as x:1x3x32x32")
    out: list[int | str] = []
    for p in parts:
        if p.isdigit():
            if int(p) < 1:
                raise InputError(f"{INPUT_SHAPE_FLAG} {text!r}: dimension {p} must be >= 1")
            out.append(int(p))
        elif p.isidentifier():
            out.append(p)
        else:
            raise InputError(f"{INPUT_SHAPE_FLAG} {text!r}: dimension {p!r} is neither a positive integer nor a name")
    return (name.strip() or None) if sep else None, out


def set_input_shapes(model: ModelProto, shapes: dict[str | None, list[int | str]]) -> None:
    """Override the declared shapes of graph inputs (see ``load_model``); the inferred shapes of
    intermediate tensors are dropped, since they may follow from the old ones."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    names = [v.name for v in inputs]
    for name, dims in shapes.items():
        if name is None:
            if len(inputs) != 1:
                raise InputError(f"{INPUT_SHAPE_FLAG}: name the input (NAME:DIMS); the model has inputs "
                                 f"{', '.join(names)}")
            target = inputs[0]
        else:
            target = next((v for v in inputs if v.name == name), None)
            if target is None:
                raise InputError(f"{INPUT_SHAPE_FLAG}: the model has no input {name!r} (inputs: {', '.join(names)})")
        tt = target.type.tensor_type
        if tt.HasField("shape") and len(tt.shape.dim) not in (0, len(dims)):
            raise InputError(f"{INPUT_SHAPE_FLAG}: input {target.name!r} has rank {len(tt.shape.dim)}, "
                             f"the given shape {'x'.join(map(str, dims))} has rank {len(dims)}")
        for axis, dim in enumerate(tt.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0 and isinstance(dims[axis], int) \
                    and dim.dim_value != dims[axis]:
                raise InputError(f"{INPUT_SHAPE_FLAG}: input {target.name!r} declares dimension {dim.dim_value} at "
                                 f"axis {axis}, the given shape has {dims[axis]}")
        tt.ClearField("shape")
        for d in dims:
            dim = tt.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = d
    del model.graph.value_info[:]


def check_opsets(model: ModelProto) -> None:
    """One import per domain; the default domain within ``limits.supported_opsets()``; the pmsm
    domain at the version this compiler implements (``pmsm_compiler.ops.DOMAIN_VERSION``)."""
    versions: dict[str, int] = {}
    for o in model.opset_import:
        domain = _norm_domain(o.domain)
        if domain in versions:
            raise _fail(f"opset_import lists the domain '{domain or 'ai.onnx'}' twice (versions "
                        f"{versions[domain]} and {o.version})")
        versions[domain] = o.version
    low, high = supported_opsets()
    if "" in versions and not low <= versions[""] <= high:
        hint = (f"; convert it, e.g. onnx.version_converter.convert_version(model, {low}), or re-export "
                f"with opset_version={low} or newer" if versions[""] < low else "")
        raise _fail(f"the model imports the default ONNX domain at opset {versions['']}; supported: opsets "
                    f"{low} to {high}{hint}", UnsupportedModelError)
    if PMSM_DOMAIN in versions and versions[PMSM_DOMAIN] != PMSM_DOMAIN_VERSION:
        raise _fail(f"the model imports the '{PMSM_DOMAIN}' domain at version {versions[PMSM_DOMAIN]}; this "
                    f"compiler implements version {PMSM_DOMAIN_VERSION}", UnsupportedModelError)


def check_graph_io_names(model: ModelProto) -> None:
    """Each graph output listed once (the checker enforces this for inputs, not for outputs)."""
    seen: set[str] = set()
    for v in model.graph.output:
        if v.name in seen:
            raise _fail(f"graph output '{v.name}' is listed more than once")
        seen.add(v.name)


def check_single_input(model: ModelProto) -> str:
    """The name of the model's one data input (initializers listed as inputs aside); InputError
    naming the inputs otherwise: the compiler, the verification and the runtime feed one."""
    initializers = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    if len(names) != 1:
        listed = ", ".join(f"'{n}'" for n in names) if names else "none"
        raise _fail(f"the model has {len(names)} data inputs ({listed}); pmsm-compile supports models with one "
                    f"data input", UnsupportedModelError)
    return names[0]


def _elem_size(elem_type: int) -> int:
    try:
        return max(1, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return 1


def _elem_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type {elem_type}"


def _too_big(dims: Iterable[int], elem_type: int) -> tuple[int, int] | None:
    """(elements, bytes) when a tensor of these static dims is over MAX_TENSOR_BYTES, else None."""
    count = 1
    for d in dims:
        count *= int(d)
    size = count * _elem_size(elem_type)
    return (count, size) if size > MAX_TENSOR_BYTES else None


def _sparse_tensors(model: ModelProto) -> Iterator[tuple[onnx.SparseTensorProto, str]]:
    def in_nodes(nodes, where):
        for node in nodes:
            label = f"attribute of node '{node.name}' ({node.op_type}){where}"
            for attr in node.attribute:
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor, label
                for sp in attr.sparse_tensors:
                    yield sp, label
                for g in ([attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)):
                    yield from in_graph(g, f" in subgraph '{attr.name}' of node '{node.name}'")

    def in_graph(graph, where=""):
        for sp in graph.sparse_initializer:
            yield sp, f"sparse initializer{where}"
        yield from in_nodes(graph.node, where)

    yield from in_graph(model.graph)
    for fn in model.functions:
        yield from in_nodes(fn.node, f" in function '{fn.domain}::{fn.name}'")


def check_sparse_sizes(model: ModelProto) -> None:
    """Refuse a sparse tensor whose declared dense size is over MAX_TENSOR_BYTES, before anything
    (the checker, onnxruntime) densifies it."""
    for sp, label in _sparse_tensors(model):
        big = _too_big(sp.dims, sp.values.data_type)
        if big is not None:
            raise _fail(
                f"sparse tensor '{sp.values.name}' ({label}) declares dense shape {list(sp.dims)} "
                f"({_elem_name(sp.values.data_type)}) = {format_bytes(big[1])}, over the limit of "
                f"{format_bytes(MAX_TENSOR_BYTES)} for one tensor"
            )


def check_tensor_sizes(model: ModelProto, where: str = "") -> None:
    """Refuse a shape-inferred model in which one tensor's static size is over MAX_TENSOR_BYTES.

    Counted from the inferred shapes (graph inputs, outputs, value_info), a dynamic or unknown
    dimension counting as 1, so that e.g. ``ConstantOfShape`` of 2^34 floats is refused before
    constant folding or onnxruntime try to allocate it. The message names the tensor and the node
    that produces it (``where`` says where that node is).
    """
    graph = model.graph
    producer = {}
    for index, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer.setdefault(out, (index, node))
    for v in [*graph.input, *graph.value_info, *graph.output]:
        if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            continue
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
        big = _too_big(dims, tt.elem_type)
        if big is None:
            continue
        shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        dynamic = any(not d.HasField("dim_value") for d in tt.shape.dim)
        if v.name in producer:
            index, node = producer[v.name]
            what = f"tensor '{v.name}' (output of {node.op_type} {_node_label(node, index)}{where})"
        else:
            what = f"graph input '{v.name}'"
        raise _fail(
            f"{what} has shape {shown} ({_elem_name(tt.elem_type)}): {big[0]:,} elements = "
            f"{format_bytes(big[1])}{' per sample' if dynamic else ''}, over the limit of "
            f"{format_bytes(MAX_TENSOR_BYTES)} for one tensor"
        )


def _inline_functions(model: ModelProto, path: str) -> ModelProto:
    """``model`` (a skeleton: ``weights.skeleton``) with its local functions inlined and
    shape-inferred, for ``check_tensor_sizes``."""
    from onnx import inliner

    try:
        inlined = inliner.inline_local_functions(model)
        return onnx.shape_inference.infer_shapes(inlined, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        raise _fail(f"invalid ONNX model {path}: shape inference of the inlined function bodies: "
                    f"{_validation_message(exc)}") from None


def unique_node_names(model: ModelProto) -> int:
    """Rename repeated node names in the main graph, deterministically; return how many changed.

    Duplicate (and empty) node names are valid ONNX, but onnxruntime refuses duplicates and
    onnx-graphsurgeon warns about them. The first node keeps its name, a later one becomes
    ``name_1``, ``name_2``, ... (the first suffix used by no node); empty names stay empty.
    """
    graph = model.graph
    taken = {n.name for n in graph.node}
    seen: set[str] = set()
    renamed = 0
    for node in graph.node:
        if not node.name:
            continue
        if node.name in seen:
            base, i = node.name, 1
            while f"{base}_{i}" in taken:
                i += 1
            node.name = f"{base}_{i}"
            taken.add(node.name)
            renamed += 1
        seen.add(node.name)
    return renamed


# --------------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------------


def _validation_message(exc: BaseException, limit: int = 400) -> str:
    text = one_line(str(exc).replace("==> Context:", "; context:"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_model(
    path: str | os.PathLike[str],
    *,
    max_bytes: int | None = None,
    allowed_ops: Iterable[tuple[str, str] | str] | None = None,
    static_inputs: bool = True,
    input_shapes: dict[str, list[int | str]] | None = None,
) -> ModelProto:
    """Load, validate and shape-infer an untrusted ONNX model; return the inferred model
    (``load_model_and_weight_files``'s model)."""
    return load_model_and_weight_files(path, max_bytes=max_bytes, allowed_ops=allowed_ops,
                                       static_inputs=static_inputs, input_shapes=input_shapes, locate=False)[0]


def load_model_and_weight_files(
    path: str | os.PathLike[str],
    *,
    max_bytes: int | None = None,
    allowed_ops: Iterable[tuple[str, str] | str] | None = None,
    static_inputs: bool = True,
    input_shapes: dict[str, list[int | str]] | None = None,
    locate: bool = True,
) -> tuple[ModelProto, weights.WeightFiles | None]:
    """Load, validate and shape-infer an untrusted ONNX model; return the inferred model and
    where its large initializers lie, byte for byte, in the model file and its external data
    files (``weights.WeightFiles``, with each file's identity when read), or None where they do
    not all lie there as loaded (an opset upgrade rebuilt the initializers), or without
    ``locate`` (``load_model``: nothing is looked for).

    ``input_shapes`` ({input name: dims}, see ``parse_input_shape``) overrides the declared shape
    of graph inputs before shape inference, e.g. to fix dynamic spatial dimensions; a string dim
    stays symbolic (a dynamic batch).

    ``static_inputs=False`` skips the static-shape check of the graph inputs (compiled SNNs
    declare their state inputs rank-only; the runtime checks the data input itself).

    Raises InputError (UnsupportedModelError for ops outside ``allowed_ops``, which defaults
    to ``DEFAULT_ALLOWED_OPS``) with a one-line message. External data is read only from plain
    files inside the (symlink-resolved) model file's directory; ``max_bytes`` bounds the model
    file and the model file plus its external data together (None: ``MAX_MODEL_BYTES`` and
    ``MAX_MODEL_WITH_DATA_BYTES``). A model over protobuf's 2 GiB with its external data loads
    (each weight read once, into its tensor): the compiler never serializes it whole
    (``pmsm_compiler.weights``), and ``save_model_atomic`` writes it with external data. Opsets, graph outputs and tensor
    sizes are checked (``check_opsets``, ``check_graph_io_names``, ``check_sparse_sizes``,
    ``check_tensor_sizes``); repeated node names are made unique (``unique_node_names``). A model
    below the supported opsets is converted to the lowest one and the conversion checked in
    onnxruntime (``pmsm_compiler.opset_upgrade``).
    """
    path = os.fspath(path)
    max_total = MAX_MODEL_WITH_DATA_BYTES if max_bytes is None else max_bytes
    data, real_path, status = _read_model_file(path, MAX_MODEL_BYTES if max_bytes is None else max_bytes)
    model = _parse_model(data, path)
    spans = weights.raw_data_spans(data) if locate else None
    del data

    base_dir = os.path.dirname(real_path)
    external_bytes = _validate_external_data(model, base_dir)
    if external_bytes and model.ByteSize() + external_bytes > max_total:
        total = model.ByteSize() + external_bytes
        raise _fail(
            f"model {path} with its external data is {format_bytes(total)}, over the limit of "
            f"{format_bytes(max_total)}"
            + (" (--max-bytes raises it)" if max_bytes is None else "")
        )

    upgraded = opset_upgrade.upgrade(model)  # an older opset converted (pmsm_compiler.opset_upgrade)
    check_opsets(model)
    check_graph_io_names(model)
    check_missing_inputs(model)
    _check_io_shapes_declared(model)
    check_ops(model, allowed_ops)
    check_sparse_sizes(model)
    if input_shapes:
        set_input_shapes(model, input_shapes)

    external_places, identities = {}, {os.path.basename(real_path): weights.file_identity(status)}
    if external_bytes:
        external = [t for t, _ in _all_tensors(model) if t.data_location == TensorProto.EXTERNAL]
        # where each weight's bytes lie, and each file as it is before its bytes are read (a later
        # change shows in its identity: the verification's sessions read the weights from there)
        for t in model.graph.initializer if locate else ():
            if t.data_location == TensorProto.EXTERNAL:
                entries = {e.key: e.value for e in t.external_data}
                external_places[t.name] = (entries["location"], int(entries.get("offset") or 0))
        for location in {place[0] for place in external_places.values()}:
            identities[location] = weights.file_identity(os.stat(os.path.join(base_dir, location)))
        try:
            # each tensor's bytes read once, straight into its raw_data
            onnx.load_external_data_for_model(model, base_dir)
        except (onnx.checker.ValidationError, ValueError, OSError) as exc:
            message = _validation_message(exc)
            raise _fail(f"cannot load external data of {path}: {message}") from None
        for t in external:  # as the inline model has it: no explicit DEFAULT location
            t.ClearField("data_location")
        del external

    # The checker and shape inference see the model without its large weights (``weights``):
    # given the whole model, each serialized it again (VGG-16: 2.4 s and a peak of 6x its size).
    try:
        weights.checked_and_inferred(model, infer=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError,
            ValueError, RuntimeError) as exc:  # fmt: skip
        message = _validation_message(exc)
        raise _fail(f"invalid ONNX model {path}: ONNX checker: {message}") from None
    try:
        inferred = weights.checked_and_inferred(model, check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError,
            ValueError, RuntimeError) as exc:  # fmt: skip
        raise _fail(
            f"invalid ONNX model {path}: shape inference: {_validation_message(exc)}"
        ) from None
    weights.merge_inferred(model, inferred)

    check_tensor_sizes(model)
    if model.functions:  # the bodies of function ops (pmsm::PQA) run in onnxruntime too
        check_tensor_sizes(_inline_functions(inferred, path), " in an inlined function body")
    del inferred
    if static_inputs:
        check_static_shapes(model)
    unique_node_names(model)
    if upgraded:
        opset_upgrade.check(model, upgraded, path)
    located = None if upgraded or not locate else _weights_in_files(model, spans, real_path, external_places,
                                                                      identities)
    return model, located


def _weights_in_files(model: ModelProto, spans, path: str, external: dict, identities: dict):
    """The ``weights.WeightFiles`` of ``model`` as loaded from the file at ``path``, whose
    ``raw_data`` spans (``weights.raw_data_spans``) are ``spans``, and from the external data at
    ``external`` ({name: (file, offset)}), if every large initializer's bytes lie there at its
    declared size (the checker has checked the loaded ones' sizes), else None."""
    inits = model.graph.initializer
    if spans is None or len(spans) != len(inits):
        return None
    name, places = os.path.basename(path), {}
    for t, span in zip(inits, spans):
        if not weights.strippable(t):
            continue
        if t.name in places:
            return None
        if t.name in external:
            places[t.name] = external[t.name]
        elif span is not None and span[1] == weights.declared_bytes(t):
            places[t.name] = (name, span[0])
        else:
            return None
    used = {place[0] for place in places.values()}
    return (weights.WeightFiles(os.path.dirname(path), places, {f: i for f, i in identities.items() if f in used})
            if places else None)


# --------------------------------------------------------------------------------------------
# saving a model (the atomic writer and the output-path check are pmsm_compiler.files')
# --------------------------------------------------------------------------------------------


def external_data_path(path: str | os.PathLike[str]) -> str:
    """Where ``save_model_atomic`` puts the external data of a model it writes to ``path``."""
    return os.fspath(path) + ".data"


def save_model_atomic(model: ModelProto, path: str | os.PathLike[str], external_data: bool | None = None,
                      approve=None, written=None) -> bool:
    """Serialize ``model`` and write it atomically (``files.write_atomic``, which calls ``approve``,
    if given, before it puts each file in place); return whether its weights went to an external
    data file.

    ``external_data`` (None: when the model is 2 GiB or more, which one protobuf file cannot
    hold): the large initializers go to ``external_data_path(path)`` (``<file>.data``, each
    tensor once, at 64 KiB-aligned offsets; ``weights.with_external_data``) and the model file
    references them. The data file is written and renamed into place first, then the model file:
    a failure leaves no temporary file and the previous model file.

    ``written(file, offsets, final)``, if given, is called once the large initializers are in a
    file: the temporary file (``approve`` is called later), {name: offset of its bytes there}
    (``weights.file_references``) and the path the file will have once in place. From then on
    this function holds no reference to ``model``: a caller that drops its own frees the weights
    while the file waits for ``approve``.
    """
    if external_data is None:
        external_data = weights.model_bytes(model) >= PROTOBUF_LIMIT
    held = [model]  # taken by the writer, so that no frame here keeps the model once it is written
    del model
    if not external_data:  # serialized as it is written, not built in memory first (weights.write_model)
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                offsets = weights.write_model(held.pop(), fh)
            if written is not None:
                written(tmp, offsets, os.path.abspath(path))

        write_atomic(path, write, approve=approve)
        return False
    data_path = check_output_path(external_data_path(path), "the external data")
    skeleton, layout = weights.with_external_data(held.pop(), os.path.basename(data_path))
    size = skeleton.ByteSize()
    if size >= PROTOBUF_LIMIT:
        raise _fail(f"cannot save {os.fspath(path)}: without its large weights the model is still "
                    f"{format_bytes(size)}, over protobuf's 2 GiB")
    placed = [layout]  # the layout's tensors are the model's
    del layout

    def write_data(tmp: str) -> None:
        layout = placed.pop()
        weights.write_external_data(layout, tmp)
        offsets = {t.name: offset for t, offset in layout}
        del layout
        if written is not None:
            written(tmp, offsets, data_path)

    write_atomic(data_path, write_data, approve=approve)
    save_bytes_atomic(skeleton.SerializeToString(), path)
    return True
