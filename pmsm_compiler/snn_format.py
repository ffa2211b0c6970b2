"""The compiled SNN's record: what ``metadata_props["pmsm.snn"]`` holds, typed (docs/snn-format.md).

One definition: the compiler builds an :class:`SNNInfo` (``pqa_to_aif`` adds the neuron layers and
their membranes, ``wrap_nonlinear`` the temporal wrappers and their states, ``count_spikes`` the
counts, ``compiler`` the rest), writes it with :func:`write_snn_info`, and verify, the runtime, the
report and the CLI read it back with :func:`read_snn_info`. Live graph nodes never enter the record:
passes keep them in their ``PassContext``.

JSON in and out keep the format's keys and their order; a key a model compiled by an older version
lacks reads as None (and is not written back), and keys this version does not know are kept
(``extra``), so a file read and written again loses nothing.

The records also answer ``record["key"]``, ``record.get("key")`` and ``"key" in record`` with the
JSON's keys (an absent optional key is not ``in`` the record), for scripts written against the
JSON; the package itself reads attributes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper

from pmsm_compiler.errors import InputError
from pmsm_compiler.metadata import get_metadata, set_metadata
from pmsm_compiler.ops.neurons import INITIAL_MEMBRANES

#: ``metadata_props`` key of the compiled SNN's record, and of the exporter's record it carries over
SNN_METADATA_KEY = "pmsm.snn"
EXPORT_METADATA_KEY = "pmsm.export"
FORMAT = "pmsm-snn"
#: The version this code writes, and the newest it reads (every older one reads too).
FORMAT_VERSION = 1
MODES = ("folded", "exact")
#: Names of the graph outputs/inputs the compiler adds.
COUNTS_OUTPUT = "pmsm_spike_counts"
COUNTERS_OUTPUT = "pmsm_spike_counters"
TIME_INPUT = "pmsm_t"
#: Initial value of a temporal wrapper's states (running input sum, previous cumulative output).
WRAPPER_INITIAL_STATE = 0.0
STATE_KINDS = ("membrane", "input_sum", "cumulative_output")


class _Record:
    """JSON in and out for a record dataclass. ``_OPTIONAL``: keys left out of the JSON when None
    (absent in files written before they existed)."""

    _OPTIONAL: ClassVar[frozenset] = frozenset()
    _REQUIRED: ClassVar[tuple] = ()

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in self._OPTIONAL:
                continue
            out[f.name] = _json_value(value)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data, where: str):
        if not isinstance(data, dict):
            raise InputError(f"compiled-model metadata: {where} is {type(data).__name__}, expected an object")
        missing = [k for k in cls._REQUIRED if k not in data]
        if missing:
            raise InputError(f"compiled-model metadata: {where} lacks {', '.join(repr(k) for k in missing)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        record = cls(**cls._convert(known, where))
        record.extra = {k: v for k, v in data.items() if k not in names}
        return record

    @classmethod
    def _convert(cls, known: dict, where: str) -> dict:
        return known

    # read-only access by the JSON's keys
    def __getitem__(self, key: str):
        if key in self:
            return self.extra[key] if key in self.extra else getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default=None):
        return self[key] if key in self else default

    def __contains__(self, key) -> bool:
        if key in getattr(self, "extra", {}):
            return True
        if key == "extra" or key not in {f.name for f in dataclasses.fields(self)}:
            return False
        return not (getattr(self, key) is None and key in self._OPTIONAL)


def _json_value(value):
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


@dataclass
class DataInput(_Record):
    """A data input of the network."""

    name: str
    shape: list | None = None  # ints and symbolic names (str)
    dtype: str | None = None  # ONNX element type, lower case; None: recorded before it existed, "float"
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    _OPTIONAL: ClassVar[frozenset] = frozenset({"dtype"})
    _REQUIRED: ClassVar[tuple] = ("name",)

    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype the input takes; InputError for an element type numpy has no native type
        for (e.g. bfloat16)."""
        name = self.dtype or "float"  # models compiled before the dtype was recorded: float
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(TensorProto.DataType.Value(name.upper())))
        except (KeyError, TypeError, ValueError):
            dtype = None
        if dtype is None or dtype.kind not in "fiub":
            raise InputError(f"the model's input '{self.name}' has element type {name}; the tools feed "
                             f"float16/32/64, integer or bool inputs")
        return dtype


@dataclass
class State(_Record):
    """A state input and the output that holds its next value; ``layer`` (a membrane) or
    ``wrapper`` (a temporal wrapper's sum or previous output) says whose."""

    input: str
    output: str
    init: float
    kind: str  # STATE_KINDS
    layer: str | None = None
    wrapper: str | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    _OPTIONAL: ClassVar[frozenset] = frozenset({"layer", "wrapper"})
    _REQUIRED: ClassVar[tuple] = ("input", "output", "init", "kind")

    @classmethod
    def _convert(cls, known: dict, where: str) -> dict:
        if known["kind"] not in STATE_KINDS:
            raise InputError(f"compiled-model metadata: {where} has kind {known['kind']!r}, not one of "
                             f"{', '.join(STATE_KINDS)}")
        return known

    @classmethod
    def membrane(cls, layer: str, op: str, input: str, output: str) -> "State":
        """A neuron's membrane: its initial value is the neuron op's (``ops.neurons.INITIAL_MEMBRANES``)."""
        return cls(input=input, output=output, init=INITIAL_MEMBRANES[op], kind="membrane", layer=layer)


@dataclass
class Wrapper(_Record):
    """A temporal wrapper of a non-linear op. ``input_index``/``inputs`` (which op inputs carry
    spike traffic), ``value`` (the op's own output) and ``output`` (the wrapper's) are what the
    runtime's first step needs to bypass it; None in models compiled before they were recorded.
    ``dense_ops``/``bookkeeping_ops``: the dense operations per sample and step of the op and of the
    wrapper around it (``ops.temporal.dense_ops``, ``bookkeeping_ops``), None where a shape is not
    static and in models compiled before they were recorded."""

    name: str
    op: str
    homogeneous: bool
    states: list = field(default_factory=list)  # state input names
    input_index: list | None = None
    inputs: list | None = None
    value: str | None = None
    output: str | None = None
    dense_ops: int | None = None
    bookkeeping_ops: int | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    _OPTIONAL: ClassVar[frozenset] = frozenset({"input_index", "inputs", "value", "output", "dense_ops",
                                                "bookkeeping_ops"})
    _REQUIRED: ClassVar[tuple] = ("name", "op", "homogeneous", "states")


@dataclass
class NeuronLayer(_Record):
    """One neuron layer (one quantizer of the ANN). Thresholds: I = X/θ_in (``theta``, also
    ``theta_in``), PSP = K·θ_out; the spikes K are clipped to [s_min, s_max]."""

    name: str
    kind: str | None = None  # PQA, QCFS, QDQ
    neuron: str | None = None  # AIF, IF: the family
    op: str | None = None  # the node's op: AIF, AIFHalfEven, IF
    rounding: str | None = None  # half_up, half_even: how the source rounds x/θ
    s_min: int | None = None
    s_max: int | None = None
    levels: int | None = None
    lam: float | None = None
    theta: float | None = None
    theta_in: float | None = None
    theta_out: float | None = None
    source: str | None = None
    ann_output: str | None = None  # the quantizer's output tensor in the ANN
    ann_post_scale: float | None = None  # y = k · ann_post_scale in the ANN
    ann_post_op: str | None = None  # the source's output op: Mul, Div, DequantizeLinear or ""
    ann_post_value: float | None = None
    spike_tensor: str | None = None
    state_in: str | None = None
    state_out: str | None = None
    lossless_at_t1: bool | None = None
    # set by count_spikes
    shape: list | None = None
    neurons: int | None = None
    count_dtype: str | None = None  # float32-exact (exact below 2^24) or int64
    count_index: int | None = None
    counters_dtype: str | None = None  # as count_dtype; None: compiled before the counters
    # set by the compiler
    fan_out: float | None = None  # mean synapses driven per spike
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    # keys a layer may lack: models compiled before them; a fresh compile writes every one
    _OPTIONAL: ClassVar[frozenset] = frozenset({"rounding", "op", "ann_post_op", "ann_post_value", "theta_in",
                                                "ann_post_scale", "lossless_at_t1", "count_dtype", "count_index",
                                                "counters_dtype"})
    _REQUIRED: ClassVar[tuple] = ("name",)


@dataclass
class SNNInfo(_Record):
    """The compiled SNN's record (``metadata_props["pmsm.snn"]``)."""

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    compiler_version: str | None = None
    mode: str | None = None  # MODES
    inputs: list = field(default_factory=list)  # [DataInput]
    outputs: list = field(default_factory=list)  # network output names
    spike_counts_output: str | None = None
    time_input: str | None = None
    counters_output: str | None = None  # None: compiled before the counters existed
    counters: list | None = None  # the counters' column names (ops.counters.COUNTERS)
    states: list = field(default_factory=list)  # [State]
    layers: list = field(default_factory=list)  # [NeuronLayer]
    wrappers: list = field(default_factory=list)  # [Wrapper]
    ann_macs: int | None = None
    static_macs: int | None = None  # of ann_macs, those on the network input alone (once per sample)
    notes: list = field(default_factory=list)
    pass_seconds: dict = field(default_factory=dict)
    normalization: dict | None = None  # {mean, std} of the input, when the exporter recorded it
    compile_seconds: float | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    _OPTIONAL: ClassVar[frozenset] = frozenset({"counters_output", "counters", "normalization", "static_macs"})
    _REQUIRED: ClassVar[tuple] = ("format", "format_version", "inputs", "outputs", "states", "layers")

    @classmethod
    def _convert(cls, known: dict, where: str) -> dict:
        if known["format"] != FORMAT or not isinstance(known["format_version"], int) \
                or isinstance(known["format_version"], bool):
            raise InputError(f"unsupported compiled-model format {known['format']} v{known['format_version']}")
        if known["format_version"] > FORMAT_VERSION:
            raise InputError(f"unsupported compiled-model format {known['format']} v{known['format_version']} "
                             f"(this version reads up to v{FORMAT_VERSION}): upgrade pmsm-compiler")
        for key, kind in (("inputs", DataInput), ("states", State), ("layers", NeuronLayer),
                          ("wrappers", Wrapper)):
            items = known.get(key, [])
            if not isinstance(items, list):
                raise InputError(f"compiled-model metadata: {key!r} is {type(items).__name__}, expected a list")
            known[key] = [kind.from_json(item, f"{key}[{i}]") for i, item in enumerate(items)]
        if not known["inputs"]:
            raise InputError("compiled-model metadata: no data input")
        return known

    @classmethod
    def from_json(cls, data, where: str = "'pmsm.snn'") -> "SNNInfo":
        return super().from_json(data, where)


def read_snn_info(model: onnx.ModelProto) -> SNNInfo | None:
    """The record of a compiled SNN; None for a model without one (an ANN). InputError (one line)
    for a record this version cannot read."""
    data = get_metadata(model, SNN_METADATA_KEY)
    return None if data is None else SNNInfo.from_json(data)


def write_snn_info(model: onnx.ModelProto, info: SNNInfo) -> None:
    set_metadata(model, SNN_METADATA_KEY, info.to_json())


def documented_keys() -> dict[str, set]:
    """The JSON keys of every record, by record: what docs/snn-format.md must list."""
    return {cls.__name__: {f.name for f in dataclasses.fields(cls)} - {"extra"}
            for cls in (SNNInfo, DataInput, State, Wrapper, NeuronLayer)}


__all__ = ["SNNInfo", "NeuronLayer", "State", "Wrapper", "DataInput", "read_snn_info", "write_snn_info",
           "SNN_METADATA_KEY", "EXPORT_METADATA_KEY", "FORMAT", "FORMAT_VERSION", "MODES", "COUNTS_OUTPUT",
           "COUNTERS_OUTPUT", "TIME_INPUT", "WRAPPER_INITIAL_STATE", "STATE_KINDS"]
