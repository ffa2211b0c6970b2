"""Compile a quantized ANN (ONNX) into a stateful single-timestep SNN (ONNX).

The compiled model runs ONE timestep per call in stock onnxruntime. Its contract (also recorded
as JSON in ``metadata_props["pmsm.snn"]``: ``pmsm_compiler.snn_format.SNNInfo``):

- inputs: the ANN's input(s); one state input per neuron layer (membrane, initial ½) and per
  temporal wrapper (initial 0), declared rank-only so that a broadcast [1, …, 1] initial tensor
  can be fed at t = 1; ``pmsm_t`` (float32 [1], the 1-based step) when a wrapper needs it;
- outputs: the ANN's output(s) for this step (rate coding: average them over steps), the next
  value of every state, ``pmsm_spike_counts`` (int64 [batch, layers], Σ|k| per layer) and
  ``pmsm_spike_counters`` (int64 [batch, layers, counters], every counting rule of
  ``pmsm_compiler.ops.counters``; absent in models compiled before it existed).
"""

from __future__ import annotations

import gc
import time

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm_compiler import __version__, opset_upgrade, weights
from pmsm_compiler.errors import UnsupportedModelError
from pmsm_compiler.metadata import get_metadata
from pmsm_compiler.onnx_utils import downstream, export_model, import_graph, tensor_flow
from pmsm_compiler.ops import DOMAIN, add_functions
from pmsm_compiler.ops.counters import COUNTERS, counter_functions
from pmsm_compiler.ops.neurons import NEURON_OPS, neuron_functions
from pmsm_compiler.passes import FRONT, PIPELINE, PassContext, PassManager, PassRefusal
from pmsm_compiler.ops.supported import WEIGHTED_OPS
from pmsm_compiler.passes.absorb_threshold_scale import classify, weight_index
from pmsm_compiler.passes.graph_utils import numel, static_shape
from pmsm_compiler.passes.wrap_nonlinear import dynamic_tensors
from pmsm_compiler.snn_format import (EXPORT_METADATA_KEY, MODES, SNN_METADATA_KEY, DataInput, SNNInfo, read_snn_info,
                                      write_snn_info)


class CompiledModel:
    """The compiled ONNX model plus what the compiler learned (layers, states, notes).

    ``reference``: the ANN the verification compares with: the input model itself, or, when the
    front passes evaluated computed constants (weights stored quantized behind a
    DequantizeLinear, shape arithmetic), the input model with those constants evaluated. Same
    ONNX semantics, but onnxruntime picks other kernels for a weight computed at run time than
    for a constant one (a Gemm prepacks a constant weight and accumulates in another order: 1-ulp
    differences on Brevitas exports), and the SNN's weights are constants.
    """

    def __init__(self, model: onnx.ModelProto, info: SNNInfo, reference: onnx.ModelProto | None = None):
        self.model = model
        self.info = info
        self.reference = reference

    @property
    def layers(self):
        return self.info.layers


def _macs(node) -> int | None:
    """Multiply-accumulates per sample of a weighted op, from static shapes: output elements times
    the contracted length K (MatMul x·W, W [.., K, P] or [K]; W·x, W [.., M, K] or [K])."""
    out = static_shape(node.outputs[0])
    w = node.inputs[weight_index(node)] if node.op == "MatMul" else node.inputs[1]
    if out is None or w.shape is None:
        return None
    wshape = [int(d) for d in w.shape]
    if node.op == "Conv":
        return numel(out) * numel(wshape[1:])
    if node.op == "Gemm":
        k = wshape[1] if node.attrs.get("transB", 0) else wshape[0]
        return numel(out) * k
    if node.op == "MatMul":
        left = weight_index(node) == 0
        return numel(out) * (wshape[-1] if left or len(wshape) == 1 else wshape[-2])
    return None


def _synapse(node) -> bool:
    """Where spike traffic ends: a weighted op (its synapses) or a pmsm node (a neuron reads it as
    its current; a SpikeCounters only counts it)."""
    return node.domain == DOMAIN or (node.op in WEIGHTED_OPS and classify(node) == "weighted")


def _fan_out(layer, tensors, flow) -> float | None:
    """Mean synapses driven per spike: Σ MACs of the weighted ops the layer feeds (through
    reshapes, pooling, residual adds and synaptic scales: ``flow``, the tensor flow that stops at
    ``_synapse`` nodes) / neurons, plus 1 per neuron for every direct (identity) path into another
    neuron layer."""
    neurons = layer.neurons
    if not neurons:
        return None
    # From the spikes, not from the ANN tensor: in folded mode a neuron output that is also a graph
    # output is renamed (its consumers read the spikes, the output name gets k·θ).
    reached = downstream(flow, [layer.spike_tensor])
    targets = {id(node): node for name in reached for node in tensors[name].outputs if _synapse(node)}
    total = 0.0
    for node in targets.values():
        if node.domain != DOMAIN:
            total += _macs(node) or 0
        elif node.op in NEURON_OPS:  # not SpikeCounters: counting spikes drives no synapse
            shape = static_shape(node.inputs[0])
            total += numel(shape) if shape else 0
    return total / neurons


#: a compile whose pass graph holds at least this many bytes of weights collects the graph before
#: it returns
COLLECT_BYTES = 16 * 2**20


def compile_model(model: onnx.ModelProto, mode: str = "folded") -> CompiledModel:
    """Run the pass pipeline on a loaded (checked, shape-inferred) ANN model."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    start = time.perf_counter()
    graph = import_graph(model)
    ctx = PassContext(mode=mode)
    upgraded = opset_upgrade.note(model)
    if upgraded:
        ctx.notes.append(upgraded)
    reference = model
    try:
        graph = PassManager(FRONT).run(graph, ctx)
        if ctx.constants_evaluated:
            reference = _export_like(graph, model)
        graph = PassManager(PIPELINE[len(FRONT):]).run(graph, ctx)
    except PassRefusal as exc:
        raise UnsupportedModelError(str(exc)) from None
    tensors = graph.tensors()
    ann_macs, static_macs = 0, 0
    dynamic = dynamic_tensors(graph, {s.input for s in ctx.states})
    for node in graph.nodes:
        if node.op in WEIGHTED_OPS and classify(node) == "weighted":
            macs = _macs(node) or 0
            ann_macs += macs
            if not any(t.name in dynamic for t in node.inputs):  # reads the network input alone: no spikes
                static_macs += macs
    flow = tensor_flow(graph.nodes, skip=_synapse)
    for layer in ctx.layers:
        layer.fan_out = _fan_out(layer, tensors, flow)
    used_ops = {n.op for n in graph.nodes if n.domain == DOMAIN}
    _identity_outputs_written_by_their_producers(graph, _recorded_names(ctx))
    snn = export_model(graph)  # the weights' copies one tensor at a time
    keep = [f for f in snn.functions if f.domain != DOMAIN]
    del snn.functions[:]
    snn.functions.extend(keep)
    add_functions(snn, [f for f in neuron_functions() + counter_functions() if f.name in used_ops])
    snn.functions.extend(ctx.functions)  # wrap_nonlinear's mask regions
    for domain in {f.domain for f in ctx.functions} - {o.domain for o in snn.opset_import}:
        snn.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    snn.ir_version = model.ir_version
    snn.producer_name = "pmsm-compiler"
    snn.producer_version = __version__
    input_names = [t.name for t in graph.inputs if t.name not in {s.input for s in ctx.states}
                   and t.name != ctx.time_input]
    state_out = {s.output for s in ctx.states}
    outputs = [t.name for t in graph.outputs
               if t.name not in state_out and t.name not in (ctx.spike_counts_output, ctx.counters_output)]
    info = SNNInfo(
        compiler_version=__version__, mode=mode,
        inputs=[DataInput(n, _shape_of(graph, n), _elem_type_of(model, n)) for n in input_names],
        outputs=outputs, spike_counts_output=ctx.spike_counts_output, time_input=ctx.time_input,
        counters_output=ctx.counters_output, counters=list(COUNTERS) if ctx.counters_output else None,
        states=ctx.states, layers=ctx.layers, wrappers=ctx.wrappers, ann_macs=int(ann_macs),
        static_macs=int(static_macs), notes=ctx.notes, pass_seconds=ctx.timings)
    exported = get_metadata(model, EXPORT_METADATA_KEY, {})
    if isinstance(exported, dict) and "normalization" in exported:
        info.normalization = exported["normalization"]
    _copy_metadata(model, snn)
    try:
        # without the weights (see pmsm_compiler.weights), nor their sizes: the input's were checked
        # on loading, and every other initializer is an array's own (numpy_helper sets its dims)
        weights.checked_and_inferred(snn, infer=False, data_sizes=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UnsupportedModelError(f"internal error: the compiled model fails the ONNX checker: "
                                    f"{' '.join(str(exc).split())[:300]}") from None
    # The graph's nodes and tensors reference each other: without a collection now, the folded
    # weights it holds (a copy of the SNN's) would outlive the compile until the collector's next
    # run, which counts objects, not bytes, and may come after the verification's peak. A
    # collection costs tens of milliseconds in a large process: only for weights worth it.
    held = sum(t._values.nbytes for t in tensors.values()
               if isinstance(t, gs.Constant) and isinstance(t._values, np.ndarray))
    graph = tensors = flow = dynamic = node = ctx = None  # ``node``: the loop's last, a way into the graph
    if held >= COLLECT_BYTES:
        gc.collect()
    info.compile_seconds = round(time.perf_counter() - start, 3)
    write_snn_info(snn, info)
    return CompiledModel(snn, info, reference)


def _identity_outputs_written_by_their_producers(graph, recorded: set[str]) -> None:
    """Where a graph output is an ``Identity`` of a tensor that other nodes read too, the tensor's
    producer writes the output itself and every reader reads it (the same values; the Identity
    goes). onnxruntime's Identity elimination (level basic and up) renames such a tensor to the
    output's name and, in an SNN whose neuron functions it inlines, left the other readers on the
    old name: "Node input ... is not a graph input" (fuzzer seed 61973). Readers moved to the
    Identity's output instead keep the Identity between the producer and them, which stops
    onnxruntime's fusions across it that the ANN gets (a Mul + MatMul into a FusedMatMul from level
    extended: 1 ulp in exact mode, seed 80133); that is done only where the SNN's format records
    the tensor's name (``recorded``: a wrapper's output, a state), which must stay. The ANN keeps
    its names: a layer's ``ann_output`` still names the tensor it reads."""
    outputs = {id(t) for t in graph.outputs}
    inputs = {id(t) for t in graph.inputs}
    changed = False
    for node in list(graph.nodes):
        if node.op != "Identity" or len(node.inputs) != 1 or len(node.outputs) != 1 or id(node.outputs[0]) not in outputs:
            continue
        src, out = node.inputs[0], node.outputs[0]
        readers = [r for r in src.outputs if r is not node]
        if id(src) in outputs or not readers:
            continue
        if src.name not in recorded and id(src) not in inputs and len(src.inputs) == 1:
            node.inputs.clear()
            node.outputs.clear()
            graph.nodes.remove(node)
            producer = src.inputs[0]
            producer.outputs = [out if t is src else t for t in producer.outputs]
        for reader in readers:
            reader.inputs = [out if t is src else t for t in reader.inputs]
        changed = True
    if changed:  # a reader may come before the Identity's or the producer's place
        graph.toposort()


def _recorded_names(ctx) -> set[str]:
    """The tensor names the SNN's format records (states, wrappers, spikes), which must stay."""
    names = {n for s in ctx.states for n in (s.input, s.output)}
    for w in ctx.wrappers:
        names.update(n for n in [w.value, w.output, *(w.inputs or [])] if n)
    names.update(n for layer in ctx.layers for n in (layer.spike_tensor, layer.state_in, layer.state_out) if n)
    return names


def _export_like(graph, model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as a model with ``model``'s IR version, functions and metadata."""
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.functions[:]
    out.functions.extend(model.functions)
    _copy_metadata(model, out)
    return out


def _shape_of(graph, name):
    for t in graph.inputs:
        if t.name == name and t.shape is not None:
            return [int(d) if isinstance(d, (int, np.integer)) else (None if d is None else str(d)) for d in t.shape]
    return None


def _elem_type_of(model, name):
    """The ONNX element type of graph input ``name``, lower case ("float", "uint8", ...)."""
    for v in model.graph.input:
        if v.name == name and v.type.HasField("tensor_type"):
            return onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()
    return None


def _copy_metadata(src, dst):
    del dst.metadata_props[:]
    for prop in src.metadata_props:
        if prop.key != SNN_METADATA_KEY:
            dst.metadata_props.add(key=prop.key, value=prop.value)


def strip_counters(model: onnx.ModelProto) -> onnx.ModelProto:
    """A compiled SNN as compiled before the counters existed: without the ``pmsm_spike_counters``
    output, the nodes that only fed it, the ``SpikeCounters`` function and the metadata keys
    (``counters_output``, ``counters``, ``layers[].counters_dtype``). For the runtime's
    compatibility tests and the counters' cost benchmark."""
    info = read_snn_info(model)
    if info is None:
        raise ValueError("not a compiled SNN")
    graph = import_graph(model)
    graph.outputs = [t for t in graph.outputs if t.name != info.counters_output]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.functions[:]
    out.functions.extend(f for f in model.functions if not (f.domain == DOMAIN and f.name == "SpikeCounters"))
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    info.counters_output = info.counters = None
    for layer in info.layers:
        layer.counters_dtype = None
    write_snn_info(out, info)
    return out
