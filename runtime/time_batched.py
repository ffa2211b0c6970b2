"""time_batched: T timesteps of an SNN in one run of its step graph, layer by layer.

A step-by-step simulator runs the whole network once per timestep; every neuron layer then reads
and writes its membranes each step, a pass over memory that a ReLU network does not make. Under
rate coding the input is the same at every step, so the T steps can run layer by layer instead
(the "multi-step" mode of SpikingJelly): the step graph runs once on a batch of T·N samples,
step-major (row t·N + n is sample n at step t), and each neuron layer runs its T steps in order
inside one fused kernel call (``neurons.c``, attribute ``time_batched``), the membranes of a tile of
neurons held in L1 across the steps. Everything between the neurons (convolutions, pooling, the
classifier) is per sample, so it computes on the T·N rows what T step runs compute on N each.

Rewrite of the middle step with fused neuron kernels (``fuse_neuron_kernels``)::

    static input S [N, ...]     →  fed as T copies, [T·N, ...]    (the runtime: ``over_time``)
    pmsm.kernels::AIFCounters   →  the same op with time_batched = 1: I, K, counts [T·N, ...],
                                   U, U_next [N, ...] (the membranes before and after the T steps)
    network outputs, counts     →  [T·N, ...]: step t's are rows t·N .. t·N + N - 1

Each neuron performs per step the float32 operations of a single-step kernel on the same
operands, and onnxruntime's CPU convolutions, matrix products with constant weights and pooling
compute each row as they do in a batch of N (their accumulation order is per output element, not
per batch), so outputs, spikes and counts equal the step-by-step run's:
``tests/test_runtime_time_batched.py`` compares them exactly, and the runtime tests compare every
run against the neurons' ONNX bodies step by step. A T = 1 run, the one the ANN contract is about,
is one step and never runs here. Memory: the activations of T·N samples instead of N; the runtime runs a long T in
chunks of ``time_batch`` steps (``steps_per_run``), carrying the membranes from chunk to chunk,
and only where one step of the batch leaves the caches room (``time_batch_bytes``); a larger batch
runs step by step.

Check (``time_batch_refusal``): every state is a neuron's membrane whose kernel was fused (not a
temporal wrapper's sum, which is not elementwise in time), there is no time input, the batch axis is
not fixed, and every op of the step is one that treats each row on its own (``PER_ROW_OPS``, with
the axis checks below); anything else runs step by step, with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm_compiler.onnx_utils import const_value, import_graph
from pmsm_compiler.snn_format import SNNInfo

from .fuse_neuron_kernels import KERNEL_DOMAIN


def steps_per_run(samples: int, timesteps: int, time_batch: int, budget_bytes: int, layer_bytes: int) -> int:
    """How many steps one time-batched session run takes (< 2: run step by step): ``time_batch``
    (at most T) where one step of the batch holds at most ``budget_bytes`` of its largest neuron
    layer's current (``layer_bytes`` per sample), else 1: a batch that large already fills the
    caches with one step, and passes of several steps only add traffic (docs/benchmarks.md)."""
    return min(time_batch, timesteps) if samples * layer_bytes <= budget_bytes else 1


#: ops that compute each row of the batch from that row alone, whatever their attributes
PER_ROW_OPS = {
    "Conv", "ConvTranspose", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Floor", "Round", "Abs", "Neg",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "Identity",
    "Cast", "Sqrt", "Erf", "Tanh", "Sigmoid", "Max", "Min", "Where", "Equal", "Less", "Greater",
    "QuantizeLinear", "DequantizeLinear", "Dropout", "LeakyRelu", "HardSigmoid", "Exp", "Pow",
}
#: ops whose axis attribute (default in brackets) must not be the batch axis
AXIS_OPS = {"Concat": None, "Softmax": -1, "LogSoftmax": -1, "Flatten": 1, "Split": 0, "Gather": 0,
            "ArgMax": 0, "LayerNormalization": -1}


def _rank(tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def _touches_batch(axes, rank: int | None) -> bool:
    """Whether any of ``axes`` is axis 0 (negative axes need the rank; unknown rank: assume so)."""
    for a in axes:
        a = int(a)
        if a == 0 or (a < 0 and (rank is None or a + rank == 0)):
            return True
    return False


def _node_refusal(node) -> str | None:
    op = node.op
    if node.domain == KERNEL_DOMAIN:
        return None if len(node.outputs) >= 3 and not node.op.endswith("Final") else f"{node.name}: a *Final kernel"
    if node.domain not in (None, "", "ai.onnx"):
        return f"{node.name}: {node.domain}::{op} is not known to treat each sample on its own"
    rank = _rank(node.inputs[0]) if node.inputs else None
    if op in PER_ROW_OPS:
        if op in ("MaxPool", "AveragePool", "Conv", "ConvTranspose") or len(node.inputs) < 2:
            return None
        # a broadcast operand with a batch axis of its own would pair rows with rows
        for t in node.inputs:  # its shape only: a large constant's values are not in the step model
            shape = list(t.shape) if isinstance(t, gs.Constant) else []
            if shape and len(shape) == (rank or -1) and shape[0] > 1:
                return f"{node.name}: {op} with a constant that has a batch axis ({shape})"
        return None
    if op in AXIS_OPS:
        default = AXIS_OPS[op]
        axis = node.attrs.get("axis", default)
        if axis is None:
            return f"{node.name}: {op} without an axis"
        if op == "Flatten":
            return None if int(axis) >= 1 else f"{node.name}: Flatten at axis {axis} merges the batch"
        return f"{node.name}: {op} along the batch axis" if _touches_batch([axis], rank) else None
    if op in ("Gemm", "MatMul"):
        # the data operand's rows are the batch; the other must be a constant (the weights)
        if not all(isinstance(t, gs.Constant) for t in node.inputs[1:]):
            return f"{node.name}: {op} of two activations"
        if op == "Gemm" and int(node.attrs.get("transA", 0)):
            return f"{node.name}: Gemm with transA"
        return None
    if op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2"):
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            axes = const_value(node.inputs[1])
        if axes is None or len(np.asarray(axes).reshape(-1)) == 0:
            return f"{node.name}: {op} over every axis"
        return f"{node.name}: {op} over the batch axis" if _touches_batch(np.asarray(axes).reshape(-1), rank) else None
    if op in ("Unsqueeze", "Squeeze"):
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            axes = const_value(node.inputs[1])
        if axes is None:
            return f"{node.name}: {op} without constant axes"
        out_rank = _rank(node.outputs[0]) if op == "Unsqueeze" else rank
        return (f"{node.name}: {op} at the batch axis"
                if _touches_batch(np.asarray(axes).reshape(-1), out_rank) else None)
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return None if perm is not None and int(perm[0]) == 0 else f"{node.name}: Transpose moves the batch axis"
    if op == "Reshape":
        shape = const_value(node.inputs[1])
        if shape is None:
            return f"{node.name}: Reshape to a computed shape"
        shape = [int(v) for v in np.asarray(shape).reshape(-1)]
        return None if shape and shape[0] in (0, -1) else f"{node.name}: Reshape to {shape} fixes the batch"
    if op == "Pad":
        pads = const_value(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("pads")
        if pads is None:
            return f"{node.name}: Pad with computed pads"
        pads = np.asarray(pads).reshape(-1)
        half = len(pads) // 2
        return None if half and pads[0] == 0 and pads[half] == 0 else f"{node.name}: Pad along the batch axis"
    return f"{node.name}: {op} is not known to treat each sample on its own"


def time_batch_refusal(model: onnx.ModelProto, info: SNNInfo, fixed_batch: int | None, shapes: dict) -> str | None:
    """Why the fused middle step ``model`` cannot run its T steps as one batch, or None (``shapes``:
    ``static_shapes`` of the step)."""
    if info.time_input:
        return "the model reads the time step (a time input)"
    if fixed_batch is not None:
        return f"the model's batch is fixed ({fixed_batch}): its graph may depend on it"
    others = [s.input for s in info.states if s.kind != "membrane"]
    if others:
        return f"temporal wrapper states ({len(others)}), which are not elementwise in time"
    graph = import_graph(model)
    membranes = {s.input for s in info.states}
    fused_reads = {n.inputs[1].name for n in graph.nodes if n.domain == KERNEL_DOMAIN and len(n.inputs) > 1}
    unfused = sorted(membranes - fused_reads)
    if unfused:
        return f"{len(unfused)} neuron layer(s) without a fused kernel"
    for name, dims in membrane_dims(model, shapes).items():
        if name in membranes and not (dims and all(isinstance(d, int) and d > 0 for d in dims)):
            return f"the current of membrane {name} has no static per-sample shape ({dims})"
    for node in graph.nodes:
        why = _node_refusal(node)
        if why is not None:
            return why
    return None


def time_batched_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fused middle step ``model`` rewritten to run T steps at once (see the module docstring):
    its neuron kernels run their steps in order (``time_batched``); the runtime feeds the static
    inputs tiled T times (``over_time``). Intermediate shapes are dropped: their batch axis is now
    T·N where the membranes' is N, and a stale shared symbol would mislead onnxruntime's planner."""
    graph = import_graph(model)
    for node in graph.nodes:
        if node.domain == KERNEL_DOMAIN:
            node.attrs["time_batched"] = 1
    keep = {t.name for t in graph.inputs}
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Variable) and name not in keep:
            tensor.shape = None
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


def membrane_dims(model: onnx.ModelProto, shapes: dict) -> dict:
    """{membrane input: its per-sample dims} for the neuron kernels of ``model``: the dims of the
    current each reads (``shapes``: ``static_shapes`` of the step), which the initial membranes of
    a time-batched run take. A membrane in the blocked layout holds the same number of elements."""
    dims = {}
    for node in model.graph.node:
        if node.domain == KERNEL_DOMAIN and len(node.input) > 1:
            shape = shapes.get(node.input[0])
            dims[node.input[1]] = shape[1:] if shape else None
    return dims


def over_time(array: np.ndarray, steps: int) -> np.ndarray:
    """A static input [N, ...] as the T·N rows of a time-batched run (step-major: T copies)."""
    return np.tile(array, (steps,) + (1,) * (array.ndim - 1))


def split_rows(array: np.ndarray, steps: int) -> np.ndarray:
    """[T·N, ...] → [T, N, ...] (step-major rows)."""
    return array.reshape(steps, array.shape[0] // steps, *array.shape[1:])
