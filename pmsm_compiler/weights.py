"""The weights of a model, held once: weight-free copies of a ModelProto for the work that reads
only its structure.

The ONNX checker and shape inference take a ModelProto and serialize it to hand it to C++ (and
shape inference parses the result back): each call made two or three transient copies of every
weight, and they ran five times per compile. ``skeleton(model)`` is a copy without the data of
the large initializers (every initializer of at least ``STRIP_BYTES`` stored in ``raw_data``):
each becomes a graph input of the same type and shape, which is all the checker and shape
inference need of it. Small initializers stay, with their values, since shape inference reads
the values of shape-like tensors (a Reshape's shape, a Slice's starts).

What the checker checks of an initializer's data (one value field, a raw_data of the size its
type and shape declare) is checked here for the stripped ones (``check_stripped``), without the
copy.

``split(model)`` hands the large initializers to onnxruntime as arrays instead
(``sessions.make_session``): the model it serializes is the skeleton with each of them an
external-data reference (``IN_MEMORY``) that ``SessionOptions.add_external_initializers``
fills. No session serializes the weights (ViT-S's verification serialized 82 MB four times),
the arrays of one model serve all the sessions built from it (the verification's ANN, its
quantizer outputs exposed and its tail), and a model over protobuf's 2 GiB builds sessions at
all (``model_bytes`` sizes one without serializing it).

Where the weights already lie in files, byte for byte, onnxruntime may map them from there
instead (``WeightFiles``, ``file_references``: each large initializer an external-data
reference to its bytes): the model file a model was read from (``raw_data_spans`` finds each
``raw_data`` in its wire format) and its external data files, or a file ``write_model`` wrote
(it returns where each tensor went). No copy in Python, none given to onnxruntime.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, TensorProto, helper

#: initializers at least this large (declared bytes) are left out of a skeleton
STRIP_BYTES = 1024

_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 5; older ones have the label
    return flag if flag is not None else fd.label == fd.LABEL_REPEATED


def copy_except(src, dst, skip=()) -> None:
    """Copy every field of message ``src`` into ``dst`` but those named in ``skip``, without
    reading them (``ListFields`` would copy a tensor's ``raw_data`` out only to skip it)."""
    for fd in src.DESCRIPTOR.fields:
        name = fd.name
        if name in skip:
            continue
        if _repeated(fd):
            value = getattr(src, name)
            if len(value):
                getattr(dst, name).extend(value)
        elif src.HasField(name):  # onnx.proto is proto2: every singular field has presence
            if fd.message_type is not None:
                getattr(dst, name).CopyFrom(getattr(src, name))
            else:
                setattr(dst, name, getattr(src, name))


#: numpy's type of each element type ``split`` hands to onnxruntime as an array (bfloat16 and the
#: 8-bit float types have none: they stay in the serialized model)
NUMPY_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16,
               TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16,
               TensorProto.UINT16: np.uint16, TensorProto.INT32: np.int32, TensorProto.UINT32: np.uint32,
               TensorProto.INT64: np.int64, TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_}

#: bytes per element of the element types a skeleton strips: those of ``NUMPY_TYPES`` and bfloat16
#: (sub-byte, string and 8-bit float types stay in it: rare as large weights, and their sizes
#: follow other rules)
ITEM_BYTES = {**{t: np.dtype(n).itemsize for t, n in NUMPY_TYPES.items()}, TensorProto.BFLOAT16: 2}


def declared_bytes(t: TensorProto) -> int | None:
    """The bytes a tensor's type and shape declare, or None for a type outside ``ITEM_BYTES``."""
    size = ITEM_BYTES.get(t.data_type)
    if size is None:
        return None
    n = 1
    for d in t.dims:
        n *= int(d)
    return n * size


def strippable(t: TensorProto) -> bool:
    """A large initializer stored inline in ``raw_data`` alone (the form every exporter writes)."""
    if t.data_location == TensorProto.EXTERNAL or not t.HasField("raw_data"):
        return False
    if any(len(getattr(t, f)) for f in _TYPED_FIELDS):
        return False  # two value fields: the checker's to refuse, with its message
    size = declared_bytes(t)
    return size is not None and size >= STRIP_BYTES and all(d >= 0 for d in t.dims)


def check_stripped(model: ModelProto) -> str | None:
    """What the ONNX checker would say of the initializers a skeleton leaves out, or None: each
    one's ``raw_data`` must be exactly the size its type and shape declare (onnxruntime refuses
    any other size; the checker only one that is too small)."""
    for t in model.graph.initializer:
        if strippable(t):
            expected = declared_bytes(t)
            stored = len(t.raw_data)  # a transient copy of this one tensor
            if stored != expected:
                return (f"TensorProto (tensor name: {t.name}) raw_data size ({stored} bytes) does not match the "
                        f"declared shape and type ({expected} bytes required)")
    return None


def skeleton(model: ModelProto) -> ModelProto:
    """A copy of ``model`` without the data of its large initializers (``strippable``): each one
    becomes a graph input of its type and shape (unless the graph already lists it as an input,
    as IR < 4 models do). Nodes, functions, metadata and small initializers are copied."""
    out = ModelProto()
    copy_except(model, out, skip=("graph",))
    graph = model.graph
    copy_except(graph, out.graph, skip=("initializer",))
    listed = {v.name for v in graph.input}
    for t in graph.initializer:
        if not strippable(t):
            out.graph.initializer.add().CopyFrom(t)
        elif t.name not in listed:
            out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def merge_inferred(model: ModelProto, inferred: ModelProto) -> None:
    """Put what shape inference of ``model``'s skeleton found (value_info, the output types) into
    ``model`` itself."""
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)


def checked_and_inferred(model: ModelProto, *, check: bool = True, infer: bool = True,
                         data_sizes: bool = True) -> ModelProto | None:
    """Run the ONNX checker (``full_check``) and strict shape inference with data propagation on
    ``model``'s skeleton; return the inferred skeleton (or None without ``infer``). Raises what
    they raise (``onnx.checker.ValidationError``, ``onnx.shape_inference.InferenceError``).
    ``data_sizes``: the checker's size check of the left-out data too (``check_stripped``, one
    transient copy of each tensor); False where the sizes hold by construction."""
    problem = check_stripped(model) if check and data_sizes else None
    if problem:
        raise onnx.checker.ValidationError(problem)
    skel = skeleton(model)
    if check:
        onnx.checker.check_model(skel, full_check=True)
    if not infer:
        return None
    return onnx.shape_inference.infer_shapes(skel, check_type=True, strict_mode=True, data_prop=True)


#: the external-data location of an initializer ``split`` took out: no file, onnxruntime gets the
#: array from the session options
IN_MEMORY = "pmsm-weights-in-memory"


def model_bytes(model: ModelProto) -> int:
    """``model.ByteSize()`` within a few bytes per large initializer, without serializing the
    weights (protobuf cannot size a model of 2 GiB or more: it raises)."""
    total = skeleton(model).ByteSize()
    for t in model.graph.initializer:
        if strippable(t):
            total += declared_bytes(t)
    return total


def _with_references(model: ModelProto, refer, where) -> ModelProto:
    """A copy of ``model`` in which each initializer ``t`` for which ``refer(t)`` holds is an
    external-data reference (its type, dims and name, no data) to ``where(t)`` = (location,
    offset); nodes, functions, metadata and the other initializers are copied."""
    out = ModelProto()
    copy_except(model, out, skip=("graph",))
    copy_except(model.graph, out.graph, skip=("initializer",))
    for t in model.graph.initializer:
        ref = out.graph.initializer.add()
        if not refer(t):
            ref.CopyFrom(t)
            continue
        copy_except(t, ref, skip=("raw_data", "external_data"))  # a reference already: replaced
        ref.data_location = TensorProto.EXTERNAL
        location, offset = where(t)
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(declared_bytes(t)))):
            entry = ref.external_data.add()
            entry.key, entry.value = key, value
    return out


def weight_bytes(model: ModelProto) -> int:
    """The bytes of ``model``'s large initializers, inline (``strippable``) or external-data
    references (a ``split`` skeleton's, a file's), from their declared types and shapes."""
    return sum(declared_bytes(t) or 0 for t in model.graph.initializer
               if strippable(t) or t.data_location == TensorProto.EXTERNAL)


def array_of(t: TensorProto) -> np.ndarray:
    """A large initializer's values (type in ``NUMPY_TYPES``, data in ``raw_data``) as a read-only
    array over its bytes: one copy, the one reading ``raw_data`` makes."""
    return np.frombuffer(t.raw_data, NUMPY_TYPES[t.data_type]).reshape(tuple(t.dims))


def split(model: ModelProto, lazy: bool = False, keep: bool = True) -> tuple[ModelProto, Mapping[str, np.ndarray]]:
    """(skeleton, arrays): ``model`` with each large initializer of a type in ``NUMPY_TYPES``
    reduced to an external-data reference to ``IN_MEMORY``, and those initializers' values
    ({name: array}, each read once from its ``raw_data``). Nodes, functions, metadata and small
    initializers are copied. ``lazy``: each array is read when first asked for (``model`` must
    outlive the mapping), for sessions of models derived from the skeleton that use a few of
    them (the verification's tail of VGG-16 reads one of its 128 MB). ``keep`` (with ``lazy``):
    False reads an array at every access and holds none, for a user that hands each to onnxruntime
    (which copies it) and wants no second copy of the weights beside ``model``."""
    arrays = _LazyArrays(keep) if lazy else {}

    def take(t: TensorProto) -> tuple[str, int]:
        if lazy:
            arrays.tensors[t.name] = t
        else:
            arrays[t.name] = array_of(t)
        return IN_MEMORY, 0

    out = _with_references(model, lambda t: strippable(t) and t.data_type in NUMPY_TYPES, take)
    return out, arrays


class _LazyArrays(Mapping):
    """{name: array} whose arrays are read (``array_of``) on first access, and kept (``keep``) or
    read again at every access."""

    def __init__(self, keep: bool = True):
        self.tensors: dict[str, TensorProto] = {}
        self._read: dict[str, np.ndarray] = {}
        self._keep = keep

    def __getitem__(self, name: str) -> np.ndarray:
        if not self._keep:
            return array_of(self.tensors[name])
        if name not in self._read:
            self._read[name] = array_of(self.tensors[name])
        return self._read[name]

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


def in_memory_names(model: ModelProto) -> list[str]:
    """The initializers of ``model`` (a ``split`` skeleton, or a model derived from one) that
    reference ``IN_MEMORY``."""
    return [t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL
            and any(e.key == "location" and e.value == IN_MEMORY for e in t.external_data)]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_key(number: int) -> bytes:
    """The key of a length-delimited field (wire type 2) ``number``."""
    return _varint(number << 3 | 2)


def _fields(msg, keep) -> bytes:
    """``msg`` serialized with only the fields whose number ``keep`` accepts (protobuf writes the
    fields of a message in field-number order, so parts cut by number concatenate into the whole)."""
    part = type(msg)()
    copy_except(msg, part, skip=[fd.name for fd in msg.DESCRIPTOR.fields if not keep(fd.number)])
    return part.SerializeToString()


_GRAPH = ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER = GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA = TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def write_model(model: ModelProto, fh) -> dict[str, int]:
    """Write ``model.SerializeToString()``, byte for byte, to the binary file ``fh`` (at its start)
    without building it in memory: the message around the large initializers (``strippable``) is
    serialized in parts cut by field number, and each large tensor's ``raw_data`` is written as it
    is (one transient copy of one tensor at a time, instead of the whole model's bytes at once).
    Returns {name: offset in the file} of each large initializer's ``raw_data`` bytes: a reader
    may take them from the file as external data (``file_references``)."""
    if not isinstance(model, ModelProto) or not any(strippable(t) for t in model.graph.initializer):
        fh.write(model.SerializeToString())
        return {}
    graph = model.graph
    pieces = []  # bytes, or an initializer whose raw_data is written in its place
    for t in graph.initializer:
        if not strippable(t):
            data = t.SerializeToString()
            pieces.append(_length_key(_INITIALIZER) + _varint(len(data)) + data)
            continue
        size = declared_bytes(t)  # what check_stripped holds raw_data to
        head, tail = _fields(t, lambda n: n < _RAW_DATA), _fields(t, lambda n: n > _RAW_DATA)
        raw_key = _length_key(_RAW_DATA) + _varint(size)
        pieces += [_length_key(_INITIALIZER) + _varint(len(head) + len(raw_key) + size + len(tail)) + head + raw_key,
                   t, tail]
    graph_head, graph_tail = _fields(graph, lambda n: n < _INITIALIZER), _fields(graph, lambda n: n > _INITIALIZER)
    graph_size = len(graph_head) + len(graph_tail) + sum(
        declared_bytes(p) if isinstance(p, TensorProto) else len(p) for p in pieces)
    offsets = {}
    position = 0

    def put(data: bytes) -> None:
        nonlocal position
        fh.write(data)
        position += len(data)

    put(_fields(model, lambda n: n < _GRAPH))
    put(_length_key(_GRAPH) + _varint(graph_size) + graph_head)
    for piece in pieces:
        if isinstance(piece, TensorProto):
            raw = piece.raw_data
            if len(raw) != declared_bytes(piece):
                raise ValueError(f"initializer {piece.name}: raw_data holds {len(raw)} bytes, its type and "
                                 f"shape declare {declared_bytes(piece)}")
            offsets[piece.name] = position
            put(raw)
            del raw
        else:
            put(piece)
    put(graph_tail)
    put(_fields(model, lambda n: n > _GRAPH))
    return offsets


def _read_varint(data, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``data[pos]``; IndexError past the end."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint over 64 bits")


def _length_fields(data, start: int, end: int):
    """(field number, start, end) of each length-delimited field of the message in
    ``data[start:end]``, in order, the other fields skipped; ValueError for what this reader does
    not follow (groups, an unknown wire type, a field past the message's end)."""
    pos = start
    while pos < end:
        key, pos = _read_varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > end:
                raise ValueError("a field runs past its message")
            yield key >> 3, pos, pos + size
            pos += size
        else:
            raise ValueError(f"wire type {wire}")
    if pos != end:
        raise ValueError("a field runs past its message")


def raw_data_spans(data) -> list[tuple[int, int] | None] | None:
    """(offset, size) of each main-graph initializer's ``raw_data`` bytes in the serialized
    ModelProto ``data`` (None for one without), in the order a parse of ``data`` lists them; read
    from the wire format, no tensor copied. None where this reader cannot tell (a group, bytes
    that do not parse). Protobuf's merge rules are followed: each occurrence of a model's ``graph``
    adds its initializers, and the last ``raw_data`` of a tensor is the one it keeps."""
    spans = []
    try:
        view = memoryview(data)
        for number, start, end in _length_fields(view, 0, len(view)):
            if number != _GRAPH:
                continue
            for g_number, g_start, g_end in _length_fields(view, start, end):
                if g_number != _INITIALIZER:
                    continue
                span = None
                for t_number, t_start, t_end in _length_fields(view, g_start, g_end):
                    if t_number == _RAW_DATA:
                        span = (t_start, t_end - t_start)
                spans.append(span)
    except (ValueError, IndexError):
        return None
    return spans


def file_identity(st: os.stat_result) -> tuple:
    """What changes when a file is replaced or written to: device, inode, size, modification time."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class WeightFiles:
    """Where the large initializers of a model lie, byte for byte, in files of one folder (the model
    file it was read from and its external data files, or a file it was written to): onnxruntime
    maps them from there (``sessions.make_session``'s ``weights_folder``) instead of being handed
    copies.

    ``folder``: the files' folder (absolute); ``places``: {initializer name: (file name in
    ``folder``, offset of its bytes)}; ``identities``: {file name: ``file_identity`` when its bytes
    were read} (none for files of our own)."""

    folder: str
    places: dict
    identities: dict = field(default_factory=dict)

    @classmethod
    def of_file(cls, path: str, offsets: dict) -> "WeightFiles":
        """The initializers at ``offsets`` ({name: offset}) of the one file ``path`` (a file of our
        own: no identity kept to check)."""
        name = os.path.basename(path)
        return cls(os.path.dirname(os.path.abspath(path)), {n: (name, o) for n, o in offsets.items()}, {})

    def moved_to(self, path: str) -> "WeightFiles":
        """The same places in the one file under its new ``path`` (a temporary file put in place)."""
        return WeightFiles.of_file(path, {n: offset for n, (_, offset) in self.places.items()})

    def references(self, model: ModelProto) -> ModelProto:
        """``model`` with each of these initializers a reference to its bytes in its file
        (``file_references``): a structure that holds none of their data."""
        return file_references(model, self.places)

    def changed(self) -> str | None:
        """The first file read that is no longer the one whose bytes were read (another identity,
        or gone), as its path; None while all are."""
        for name, identity in self.identities.items():
            path = os.path.join(self.folder, name)
            try:
                if file_identity(os.stat(path)) != identity:
                    return path
            except OSError:
                return path
        return None


def file_references(model: ModelProto, places: dict) -> ModelProto:
    """A copy of ``model`` in which each initializer named in ``places`` ({name: (location,
    offset)}) is an external-data reference to its bytes at that offset of file ``location`` (a
    name relative to the folder the reader is given: a file ``write_model`` or
    ``write_external_data`` wrote, whose offsets they return or lay out; ``IN_MEMORY``: no data),
    and holds no data; the rest is copied."""
    return _with_references(model, lambda t: t.name in places, lambda t: places[t.name])


#: offsets of the tensors in a data file ``with_external_data`` lays out: a multiple of the page
#: size of every common system, so that a reader may map each tensor straight from the file
EXTERNAL_ALIGN = 65536


def with_external_data(model: ModelProto, location: str) -> tuple[ModelProto, list[tuple[TensorProto, int]]]:
    """(skeleton, layout): ``model`` with each large initializer (``strippable``) an external-data
    reference to file ``location`` (relative to the model file), at offsets ``EXTERNAL_ALIGN``
    apart, and [(initializer of ``model``, offset)] that ``write_external_data`` writes."""
    layout = []

    def place(t: TensorProto) -> tuple[str, int]:
        offset = 0
        if layout:
            last, at = layout[-1]
            offset = at + -(-declared_bytes(last) // EXTERNAL_ALIGN) * EXTERNAL_ALIGN
        layout.append((t, offset))
        return location, offset

    return _with_references(model, strippable, place), layout


def write_external_data(layout: list[tuple[TensorProto, int]], path: str) -> None:
    """Write the initializers of a ``with_external_data`` layout into file ``path``, each at its
    offset (the gaps between them are holes: zeros that take no disk space)."""
    with open(path, "wb") as f:
        for t, offset in layout:
            f.seek(offset)
            f.write(t.raw_data)
