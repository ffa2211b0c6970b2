"""time_batched: T timesteps of an SNN in one run of its step graph, layer by layer.

A step-by-step simulator runs the whole network once per timestep; every neuron layer then reads
and writes its membranes each step, a pass over memory that a ReLU network does not make, and at a
small batch every op of the graph is scheduled T times. Under rate coding the input is the same at
every step, so the T steps can run layer by layer instead (the "multi-step" mode of SpikingJelly):
the step graph runs once on a batch of T·N samples, step-major (row t·N + n is sample n at step t).
Each neuron layer runs its T steps in order inside one fused kernel call (``neurons.c``, attribute
``time_batched``), the membranes of a tile of neurons held in L1 across the steps; each temporal
wrapper (``passes/wrap_nonlinear.py``) keeps its running input sum and its previous output the same
way (``TimeSum``, ``TimeDiff``). Everything else (convolutions, attention's matrix products, norms,
the classifier) computes each sample from that sample alone, so it computes on the T·N rows what T
step runs compute on N each.

Rewrite of the middle step with fused neuron kernels (``fuse_neuron_kernels``)::

    static input S [N, ...]       →  fed as T copies, [T·N, ...]    (the runtime: ``over_time``),
                                     or as it is where only neuron kernels read it, as their current
                                     (``static_current``: the first neuron of a CNN, fed by the
                                     static prologue)
    pmsm.kernels::AIFCounters     →  the same op with time_batched = 1: I, K, counts [T·N, ...],
                                     U, U_next [N, ...] (the membranes before and after the T steps),
                                     and the pass input P = [T, fresh] (``PASS_INPUT``): a run's first
                                     pass starts the membranes from their initial value (``u_init``),
                                     so no buffer of initial membranes is filled and read
    Add(sum, x) of an input sum   →  pmsm.kernels.time::TimeSum(x, sum): every step's sum, the last
    Sub(cum, prev) of an output   →  pmsm.kernels.time::TimeDiff(cum, prev): every step's difference
    time input t [1]              →  one value per row [T·N] (``time_rows``), reshaped for each reader
    network outputs, counts       →  [T·N, ...]: step t's are rows t·N .. t·N + N - 1

Each neuron and each wrapper performs per step the float32 operations of a step-by-step run on the
same operands, and onnxruntime's CPU kernels compute each row as they do in a batch of N (their
accumulation order is per output element, not per batch), so outputs, spikes and counts equal the
step-by-step run's. Except where the order follows the address: a few kernels sum a sample with
vector loads from an aligned address (``ALIGNMENT_SENSITIVE_OPS``: ReduceSum/ReduceMean over
trailing axes, ...), so a sample moved to a row of another alignment may differ in the last bit; a
batch runs layer by layer only where its samples keep their alignment (N times the per-sample bytes
a multiple of ``ALIGNMENT_BYTES``, ``misaligned``). Tested: ``tests/test_runtime_time_batched.py``
compares them exactly (the shipped
ResNet-20s and ViT, both modes), and the runtime tests compare runs against the neurons' ONNX
bodies step by step. A T = 1 run, the one the ANN contract is about, is one step and never runs
here. The graph's inputs fed as T copies take one symbol for their T·N rows (``ROWS_SYMBOL``), and
so do a static current's spikes (the kernels' shape inference): onnxruntime then fuses what follows
as it does when every input holds T·N rows. (With the spikes' rows unknown instead, it left a
residual Add out of the convolution before it in exact mode, and steps 7 on of a tiny ResNet
differed from step by step in the last bit.)
Memory: the activations of T·N samples instead of N; the runtime runs a long T in chunks of
``time_batch`` steps (``steps_per_run``), carrying the states from chunk to chunk, and only where
one step of the batch leaves the caches room (``time_batch_bytes``: by default twice a core's L2,
``default_time_batch_bytes``), in chunks of as many steps as keep a pass within
``time_pass_bytes``; a larger batch runs step by step.

Check (``time_batch_refusal``): every state is a fused neuron's membrane or a wrapper's state in
the form ``wrap_nonlinear`` emits, and ``batch_axes`` follows the batch axis through every op from
the step's inputs to its outputs (a transpose may move it, a gather or slice may act beside it, but
nothing may act along it, and every output has it first; a model exported with a fixed batch
passes where nothing depends on it); anything else runs step by step, with the reason.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm_compiler.limits import DEFAULT_TIME_BATCH_BYTES, DEFAULT_TIME_PASS_BYTES
from pmsm_compiler.onnx_utils import const_value, import_graph
from pmsm_compiler.ops.temporal import MASK_OPS, REGION_DOMAIN
from pmsm_compiler.snn_format import SNNInfo

from .fuse_neuron_kernels import KERNEL_DOMAIN


def steps_per_run(samples: int, timesteps: int, time_batch: int, budget_bytes: int, layer_bytes: int,
                  sample_bytes=(), pass_bytes: int = DEFAULT_TIME_PASS_BYTES) -> int:
    """How many steps one time-batched session run takes (< 2: run step by step): where one step
    of the batch holds at most ``budget_bytes`` of its largest neuron layer's current
    (``layer_bytes`` per sample), ``time_batch`` steps, at most T and at most as many as hold
    ``pass_bytes`` of it; else 1: a batch that large already fills the caches with one step, and
    passes of several steps only add traffic (docs/benchmarks.md). ``sample_bytes``:
    ``aligned_sample_bytes``; 1 where a pass would move a sample to another alignment
    (``misaligned``)."""
    if misaligned(samples, sample_bytes) is not None:
        return 1
    step = samples * layer_bytes
    if step > budget_bytes:
        return 1
    steps = min(time_batch, timesteps, pass_bytes // step if step else time_batch)
    return steps if steps >= 2 else 1


#: where Linux describes the first CPU's caches (``default_time_batch_bytes``)
CPU_CACHES = "/sys/devices/system/cpu/cpu0/cache"


def _cache_entry(root: str, index: str, name: str) -> str:
    with open(os.path.join(root, index, name)) as f:
        return f.read().strip()


@functools.lru_cache(maxsize=None)
def l2_cache_bytes(root: str = CPU_CACHES) -> int | None:
    """The size of the first CPU's level-2 cache (data or unified) in bytes, or None where the system
    does not say (not Linux, no sysfs, an entry that does not read as a size); read once per
    ``root`` (every ``SNNSession`` asks)."""
    try:
        indexes = sorted(e for e in os.listdir(root) if e.startswith("index"))
        for index in indexes:
            if _cache_entry(root, index, "level") != "2" or _cache_entry(root, index, "type") not in ("Unified", "Data"):
                continue
            size = _cache_entry(root, index, "size")  # "2048K"
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:].upper())
            value = int(size[:-1]) * scale if scale else int(size)
            return value if value > 0 else None
    except (OSError, ValueError):
        pass
    return None


def default_time_batch_bytes(root: str = CPU_CACHES) -> int:
    """The largest step (bytes of the largest neuron layer's current, the whole batch) that runs
    layer by layer by default: twice a core's L2 cache (each of two threads' halves of the step in
    its core's L2), ``DEFAULT_TIME_BATCH_BYTES`` where its size cannot be read. Measured on two
    2-core VMs (``limits``): 1 MiB of L2, passes paid up to 1 MiB a step and lost at 4 MiB; 2 MiB of
    L2, they paid up to 4 MiB and lost at 8 MiB."""
    l2 = l2_cache_bytes(root)
    return 2 * l2 if l2 else DEFAULT_TIME_BATCH_BYTES


#: ops whose result for one sample depends on where its values sit in memory: onnxruntime 1.32 sums
#: them with vector loads from an aligned address (Eigen), so one sample at another offset can round
#: its sum differently in the last bit. Measured (a sample alone and behind k others, k = 0..15):
#: ReduceSum and ReduceMean over trailing axes, ReduceLogSum, InstanceNormalization,
#: MeanVarianceNormalization, Einsum; the other sums are listed as a precaution (ReduceMax/Min and
#: the pooling, normalization, softmax and matrix kernels measured independent of it)
ALIGNMENT_SENSITIVE_OPS = {"ReduceSum", "ReduceMean", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ReduceL1",
                           "ReduceL2", "ReduceProd", "InstanceNormalization", "MeanVarianceNormalization", "Einsum"}
#: a pass puts sample n of step t at row t·N + n: the batch's bytes must keep every sample at the
#: alignment it has step by step (64: a cache line, the widest vector)
ALIGNMENT_BYTES = 64
#: elementwise ops whose result for one element depends on where it sits in the tensor, whatever
#: the alignment: onnxruntime 1.32 computes them with Eigen, vector code for the body of each block
#: its threads split the tensor into and scalar code (another approximation) for the rest, and the
#: blocks follow the tensor's length. Measured (``bench/position_sensitivity.py``): Log, Softplus,
#: Elu, Selu, Celu and Mish, also at an aligned batch on 2 threads; the other elementwise ops
#: ``batch_axes`` admits measured independent of it
POSITION_SENSITIVE_OPS = {"Log", "Softplus", "Elu", "Selu", "Celu", "Mish"}


def aligned_sample_bytes(graph: gs.Graph, axes: dict, shapes: dict) -> tuple[set | None, str | None]:
    """({bytes per sample of each ``ALIGNMENT_SENSITIVE_OPS`` input that carries the batch}, None),
    or (None, why) where such an input's batch axis is not first or its per-sample size unknown."""
    sizes = set()
    for node in graph.nodes:
        if node.op not in ALIGNMENT_SENSITIVE_OPS:
            continue
        for t in node.inputs:
            if t.name not in axes:
                continue
            shape = shapes.get(t.name) or t.shape
            dims = list(shape[1:]) if shape is not None else None
            if axes[t.name] != 0 or dims is None or not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
                return None, f"{node.name}: {node.op}, whose sums depend on where a sample sits, on {t.name} " \
                             f"without the batch axis first and a static per-sample shape"
            try:  # an intermediate tensor without a known type is float32, the step's only float type
                itemsize = np.dtype(t.dtype).itemsize if t.dtype is not None else 4
            except TypeError:
                return None, f"{node.name}: {node.op} on {t.name} of element type {t.dtype}"
            sizes.add(int(np.prod(dims)) * itemsize)
    return sizes, None


def position_sensitive(graph: gs.Graph, axes: dict) -> str | None:
    """Why a pass cannot run this step: a ``POSITION_SENSITIVE_OPS`` node that reads the batch
    (a pass changes the tensor's length, and so which of its elements take the scalar path); or None."""
    for node in graph.nodes:
        if node.op in POSITION_SENSITIVE_OPS and any(t.name in axes for t in node.inputs):
            return (f"{node.name}: {node.op}, whose result for an element depends on where it sits in the tensor "
                    f"(onnxruntime's vector and scalar paths round it differently)")
    return None


def misaligned(samples: int, sample_bytes) -> int | None:
    """The first per-sample size in ``sample_bytes`` that a batch of ``samples`` leaves off
    ``ALIGNMENT_BYTES`` (a pass would move its samples to other alignments), or None."""
    return next((b for b in sorted(sample_bytes) if samples * b % ALIGNMENT_BYTES), None)


#: elementwise ops (numpy broadcasting): each output element from the input elements at its index
ELEMENTWISE_OPS = {
    "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Floor", "Round", "Abs", "Neg", "Identity", "Cast", "Sqrt", "Erf",
    "Tanh", "Sigmoid", "Max", "Min", "Where", "QuantizeLinear", "DequantizeLinear", "Dropout", "LeakyRelu",
    "HardSigmoid", "Exp", "Pow", "Reciprocal", "Gelu", "Softplus", "Sum", "Log", "HardSwish", "PRelu", "Softsign",
    "ThresholdedRelu", "Elu", "Selu", "Celu", "Mish",
} | MASK_OPS  # comparisons and And/Or/Xor/Not
#: ops that read their input with the batch axis first and keep it first (their other inputs are
#: weights): convolutions, pooling, normalization over channels
BATCH_FIRST_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                   "BatchNormalization", "InstanceNormalization"}
#: ops that act along one axis (default in brackets), which must not be the batch axis
ALONG_AXIS_OPS = {"Softmax": -1, "LogSoftmax": -1, "Concat": None, "Split": 0}
REDUCE_OPS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ArgMax", "ArgMin"}


def _rank(tensor, shapes: dict) -> int | None:
    shape = shapes.get(tensor.name)
    if shape is None and tensor.shape is not None:
        shape = tensor.shape
    return len(shape) if shape is not None else None


def _norm(axis, rank: int) -> int:
    axis = int(axis)
    return axis + rank if axis < 0 else axis


def _axes_input(node, index: int, attr: str = "axes"):
    axes = node.attrs.get(attr)
    if axes is None and len(node.inputs) > index and node.inputs[index].name:
        axes = const_value(node.inputs[index])
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def _elementwise_axis(node, axes: dict, shapes: dict):
    """The output's batch axis of a broadcasting op: every input that has one must put it at the
    same place counted from the last axis, and no other input may have more than one element there."""
    out_rank = _rank(node.outputs[0], shapes)
    ranks = [_rank(t, shapes) for t in node.inputs if t.name]
    if out_rank is None or None in ranks:
        return None, "a rank unknown"
    out_rank = max([out_rank] + ranks)
    from_end = {r - axes[t.name] for t, r in zip([t for t in node.inputs if t.name], ranks) if t.name in axes}
    if len(from_end) != 1:
        return None, "inputs with their batch axes at different places"
    b = out_rank - from_end.pop()
    for t in node.inputs:
        if not t.name or t.name in axes:
            continue
        shape = list(t.shape) if isinstance(t, gs.Constant) else shapes.get(t.name) or t.shape
        if shape is None:
            return None, f"operand {t.name} of unknown shape"
        i = b - (out_rank - len(shape))
        if i >= 0 and shape[i] != 1:
            return None, f"operand {t.name} has {shape[i]} elements along the batch axis"
    return b, None


def _output_axis(node, b: int, axes: dict, shapes: dict):
    """(output batch axis, None) or (None, why) for ``node``, whose first input's batch axis is ``b``."""
    op, rank = node.op, _rank(node.inputs[0], shapes)
    if op in ELEMENTWISE_OPS:
        return _elementwise_axis(node, axes, shapes)
    if rank is None:
        return None, "its input's rank is unknown"
    if op in BATCH_FIRST_OPS:
        ok = b == 0 and all(isinstance(t, gs.Constant) or not t.name for t in node.inputs[1:])
        return (0, None) if ok else (None, "its input is not batch-first with constant weights")
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return (list(perm).index(b), None) if perm is not None else (None, "no perm")
    if op in ALONG_AXIS_OPS:
        axis = node.attrs.get("axis", ALONG_AXIS_OPS[op])
        if axis is None or _norm(axis, rank) == b:
            return None, f"{op} along the batch axis"
        return b, None
    if op == "LayerNormalization":
        return (b, None) if b < _norm(node.attrs.get("axis", -1), rank) else (None, "it normalizes over the batch axis")
    if op == "Flatten":
        axis = _norm(node.attrs.get("axis", 1), rank)
        return (0, None) if b == 0 and axis == 1 else (None, f"Flatten at axis {axis} merges the batch")
    if op == "Reshape":
        shape = const_value(node.inputs[1])
        if shape is None:
            return None, "a computed shape"
        shape = [int(v) for v in np.asarray(shape).reshape(-1)]
        # the first dim copied (0, unless allowzero) or inferred (-1: the rows stay step-major)
        keeps = {-1} if int(node.attrs.get("allowzero", 0)) else {0, -1}
        ok = b == 0 and shape and shape[0] in keeps
        return (0, None) if ok else (None, f"Reshape to {shape} does not keep the batch axis first")
    if op in ("Squeeze", "Unsqueeze"):
        given = _axes_input(node, 1)
        if given is None:
            return None, "no constant axes"
        if op == "Squeeze":
            squeezed = [_norm(a, rank) for a in given]
            return (None, "it squeezes the batch axis") if b in squeezed else (b - sum(a < b for a in squeezed), None)
        out = b
        for a in sorted(_norm(a, rank + len(given)) for a in given):
            if a <= out:
                out += 1
        return out, None
    if op == "Slice":
        given = _axes_input(node, 3)
        if given is None:
            return None, "no constant axes"
        return (None, "it slices the batch axis") if b in [_norm(a, rank) for a in given] else (b, None)
    if op == "Gather":
        axis = _norm(node.attrs.get("axis", 0), rank)
        if axis == b or not isinstance(node.inputs[1], gs.Constant):
            return None, "it gathers along the batch axis or by computed indices"
        return (b if b < axis else b - 1 + node.inputs[1].values.ndim), None
    if op in REDUCE_OPS:
        given = _axes_input(node, 1) if op not in ("ArgMax", "ArgMin") else [node.attrs.get("axis", 0)]
        if not given:
            return None, "it reduces every axis"
        reduced = [_norm(a, rank) for a in given]
        if b in reduced:
            return None, "it reduces the batch axis"
        return (b if int(node.attrs.get("keepdims", 1)) else b - sum(a < b for a in reduced)), None
    if op == "MatMul":
        other = node.inputs[1]
        if other.name in axes:  # two activations (attention): the same batch axis among the leading ones
            ok = axes[other.name] == b and _rank(other, shapes) == rank and b < rank - 2
            return (b, None) if ok else (None, "two activations whose batch axis is not a leading axis of both")
        return (b, None) if b < rank - 1 else (None, "it contracts the batch axis")
    if op == "Gemm":
        ok = b == 0 and not int(node.attrs.get("transA", 0)) and not any(t.name in axes for t in node.inputs[1:])
        return (0, None) if ok else (None, "not rows of the batch times constant weights")
    if op == "Pad":
        pads = const_value(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("pads")
        if pads is None or len(node.inputs) > 3:
            return None, "computed pads, or pads on chosen axes"
        pads = [int(v) for v in np.asarray(pads).reshape(-1)]
        return (b, None) if pads[b] == 0 and pads[b + rank] == 0 else (None, "it pads the batch axis")
    return None, "not known to treat each sample on its own"


def batch_axes(graph: gs.Graph, shapes: dict, batch_inputs) -> tuple[dict | None, str | None]:
    """({tensor: its batch axis}, None), or (None, why): the batch axis of every tensor computed from
    ``batch_inputs`` (their batch axis first), followed op by op through ``graph`` (in topological
    order), for a graph that computes every sample from that sample alone. An op that could mix
    samples, or whose effect on the batch axis is not known here, is the reason."""
    axes = {name: 0 for name in batch_inputs}
    for node in graph.nodes:
        carriers = [t for t in node.inputs if t.name in axes]
        if not carriers:
            continue
        if node.domain == KERNEL_DOMAIN:
            if any(axes[t.name] != 0 for t in carriers) or node.op.endswith("Final"):
                return None, f"{node.name}: a neuron kernel off the batch axis"
            axes.update({t.name: 0 for t in node.outputs})
            continue
        if node.domain == REGION_DOMAIN:  # a mask region (ops.temporal): comparisons, logical ops, a Where or Cast
            out, why = _elementwise_axis(node, axes, shapes)
            if why is not None:
                return None, f"{node.name}: {node.op}: {why}"
            axes.update({t.name: out for t in node.outputs if t.name})
            continue
        if node.domain not in (None, "", "ai.onnx"):
            return None, f"{node.name}: {node.domain}::{node.op} is not known to treat each sample on its own"
        if node.op not in ELEMENTWISE_OPS and node.inputs[0].name not in axes:
            return None, f"{node.name}: {node.op} with the batch in a later input"
        if node.op == "Concat" and (len({axes[t.name] for t in carriers}) != 1
                                    or len(carriers) != len([t for t in node.inputs if t.name])):
            return None, f"{node.name}: Concat of inputs without one batch axis at one place"
        out, why = _output_axis(node, axes[carriers[0].name], axes, shapes)
        if why is not None:
            return None, f"{node.name}: {node.op}: {why}"
        axes.update({t.name: out for t in node.outputs if t.name})
    return axes, None


#: the domain of the kernels that keep the temporal wrappers' states over a pass (``TimeSum``, ``TimeDiff``)
TIME_DOMAIN = "pmsm.kernels.time"
#: the input of a time-batched step that describes each pass to its neuron kernels: int64 [steps,
#: fresh] (``pass_value``)
PASS_INPUT = "pmsm_time_batched_pass"
#: the symbol of the T·N rows in a time-batched step: the first dimension of its inputs fed as T
#: copies and, by the kernels' shape inference, of a static current's spikes (``neurons.c``)
ROWS_SYMBOL = "pmsm_rows"


def _wrapper_plan(graph: gs.Graph, info: SNNInfo):
    """([(state, node)] to rewrite, None) or (None, why): each input sum's ``Add(sum, x)`` and each
    previous output's ``Sub(cumulative, prev)``, as ``wrap_nonlinear`` emits them."""
    tensors = graph.tensors()
    plan = []
    for s in info.states:
        if s.kind == "membrane":
            continue
        state_in, state_out = tensors.get(s.input), tensors.get(s.output)
        if state_in is None or state_out is None:
            return None, f"state {s.input} is not in the step"
        if s.kind == "input_sum":
            node = state_out.inputs[0] if len(state_out.inputs) == 1 else None
            if node is None or node.op != "Add" or len(node.inputs) != 2 or state_in not in node.inputs \
                    or list(state_in.outputs) != [node]:
                return None, f"input sum {s.input} is not one Add of the sum and the input"
        elif s.kind == "cumulative_output":
            readers = list(state_in.outputs)
            node = readers[0] if len(readers) == 1 else None
            if node is None or node.op != "Sub" or len(node.inputs) != 2 or node.inputs[0] is not state_out \
                    or node.inputs[1] is not state_in or len(state_out.inputs) != 1:
                return None, f"previous output {s.input} is not one Sub of the cumulative output and it"
        else:
            return None, f"state {s.input} of kind {s.kind}"
        plan.append((s, node))
    return plan, None


def _time_readers(graph: gs.Graph, info: SNNInfo, shapes: dict):
    """([(node, rank of its other operand)], None) or (None, why): the readers of the time input."""
    if not info.time_input:
        return [], None
    tensor = graph.tensors().get(info.time_input)
    if tensor is None:
        return [], None
    readers = []
    for node in tensor.outputs:
        others = [t for t in node.inputs if t is not tensor]
        rank = _rank(others[0], shapes) if node.op in ("Div", "Mul") and len(others) == 1 else None
        if rank is None or rank < 1:
            return None, f"{node.name}: {node.op} of the time input and an operand of unknown rank"
        readers.append((node, rank))
    return readers, None


def time_batch_refusal(model: onnx.ModelProto, info: SNNInfo, shapes: dict) -> tuple[str | None, set]:
    """(why the fused middle step ``model`` cannot run its T steps as one batch, or None; the
    per-sample bytes a batch must keep aligned, ``aligned_sample_bytes``) (``shapes``:
    ``static_shapes`` of the step). A model exported with a fixed batch B passes where nothing in its
    graph depends on B (a Reshape to [B, ...] or a constant of B rows is refused by ``batch_axes``):
    its inputs then take T·B rows (``time_batched_model``)."""
    why = _refusal(model, info, shapes)
    return (why, set()) if isinstance(why, str) else (None, why)


def _refusal(model: onnx.ModelProto, info: SNNInfo, shapes: dict) -> str | set:
    graph = import_graph(model)
    _, why = _wrapper_plan(graph, info)
    if why is None:
        _, why = _time_readers(graph, info, shapes)
    if why is not None:
        return why
    membranes = {s.input for s in info.states if s.kind == "membrane"}
    fused_reads = {n.inputs[1].name for n in graph.nodes if n.domain == KERNEL_DOMAIN and len(n.inputs) > 1}
    unfused = sorted(membranes - fused_reads)
    if unfused:
        return f"{len(unfused)} neuron layer(s) without a fused kernel"
    for name, dims in state_dims(model, shapes, info).items():
        if not (dims and all(isinstance(d, int) and d > 0 for d in dims)):
            return f"state {name} has no static per-sample shape ({dims})"
    batch_inputs = [t.name for t in graph.inputs if t.name != info.time_input]
    axes, why = batch_axes(graph, shapes, batch_inputs)
    if why is not None:
        return why
    # every output (network outputs, counts, the next states) with its batch axis first, and every
    # reader of the time input multiplying a tensor whose batch axis is first (its rows: row t·N + n)
    for t in graph.outputs:
        if axes.get(t.name) != 0:
            return f"output {t.name} does not have the batch axis first"
    for node, _ in _time_readers(graph, info, shapes)[0]:
        if any(axes.get(t.name, 0) != 0 for t in node.inputs):
            return f"{node.name}: the time input meets a tensor whose batch axis is not first"
    why = _static_shape_fusion(graph, axes, shapes, batch_inputs) or position_sensitive(graph, axes)
    if why is not None:
        return why
    sizes, why = aligned_sample_bytes(graph, axes, shapes)
    return why if why is not None else sizes


def _static_shape_fusion(graph: gs.Graph, axes: dict, shapes: dict, batch_inputs) -> str | None:
    """Why onnxruntime would optimize a step of this fixed-batch model differently from a pass,
    or None. A step's shapes are all static and a pass's leading axis is not (T·B rows): onnxruntime
    fuses a MatMul of rank-3 (or more) activations with the Add of its bias into Reshape → Gemm →
    Reshape only on static shapes (MatMulAddFusion), and a pass then runs FusedMatMul + Add, which
    round differently (fuzzer, seeds 60800, 61809, 61860, exact mode, levels extended and all)."""
    fixed = any(isinstance((shapes.get(name) or [None])[0], (int, np.integer)) for name in batch_inputs)
    if not fixed:
        return None  # a dynamic batch: a step's leading axis is not static either
    for node in graph.nodes:
        if node.op == "MatMul" and any(t.name in axes and (_rank(t, shapes) or 0) >= 3 for t in node.inputs):
            return (f"{node.name}: a MatMul of rank-3 activations in a model of fixed batch (onnxruntime fuses it "
                    f"with a bias on the static shapes of a step, not on a pass's)")
    return None


def time_batched_model(model: onnx.ModelProto, info: SNNInfo, shapes: dict) -> onnx.ModelProto:
    """The fused middle step ``model`` rewritten to run T steps at once (see the module docstring):
    its neuron kernels run their steps in order (``time_batched``), each temporal wrapper's input sum
    and previous output run as ``TimeSum`` and ``TimeDiff`` (``TIME_DOMAIN``), the time input holds
    one value per row (``time_rows``), reshaped for each reader; the runtime feeds the static inputs
    tiled T times (``over_time``). Intermediate shapes are dropped: their batch axis is now T·N where
    the states' is N, and a stale shared symbol would mislead onnxruntime's planner."""
    graph = import_graph(model)
    plan, why = _wrapper_plan(graph, info)
    readers, why_time = _time_readers(graph, info, shapes)
    if why or why_time:
        raise ValueError(why or why_time)
    pass_input = gs.Variable(PASS_INPUT, dtype=np.int64, shape=[2])
    initial = {s.input: s.init for s in info.states if s.kind == "membrane"}
    state_inputs = {s.input for s in info.states}
    for node in graph.nodes:
        if node.domain == KERNEL_DOMAIN:
            node.attrs["time_batched"] = 1
            if len(node.inputs) > 1 and node.inputs[1].name in initial:
                node.attrs["u_init"] = float(initial[node.inputs[1].name])
            while len(node.inputs) < 3:
                node.inputs.append(gs.Variable.empty())
            node.inputs.append(pass_input)
    for tensor in graph.inputs:  # a static input only neuron kernels read as their current: one step of it
        if tensor.name in state_inputs or tensor.name == info.time_input:
            continue
        consumers = list(tensor.outputs)
        if consumers and all(_reads_as_static_current(node, tensor) for node in consumers):
            for node in consumers:
                node.attrs["static_current"] = 1
    graph.inputs.append(pass_input)
    tensors = graph.tensors()
    for s, node in plan:
        state_in, state_out = tensors[s.input], tensors[s.output]
        rows = gs.Variable(f"{s.output}/over_time", dtype=np.float32)
        if s.kind == "input_sum":  # Add(sum, x) -> TimeSum(x, sum): every step's sum, and the last
            x = next(t for t in node.inputs if t is not state_in)
            for reader in list(state_out.outputs):
                reader.inputs = [rows if t is state_out else t for t in reader.inputs]
            node.op, node.domain = "TimeSum", TIME_DOMAIN
            node.inputs = [x, state_in]
            node.outputs = [rows, state_out]
        else:  # Sub(cumulative, prev) -> TimeDiff(cumulative, prev): every step's difference, the last
            producer = state_out.inputs[0]
            producer.outputs = [rows if t is state_out else t for t in producer.outputs]
            for reader in list(state_out.outputs):
                if reader is not node:
                    reader.inputs = [rows if t is state_out else t for t in reader.inputs]
            out = node.outputs[0]
            node.op, node.domain = "TimeDiff", TIME_DOMAIN
            node.inputs = [rows, state_in]
            node.outputs = [out, state_out]
    if readers:
        time = tensors[info.time_input]
        time.shape = ["pmsm_time_rows"]
        per_rank = {}
        for node, rank in readers:
            if rank not in per_rank:
                per_rank[rank] = gs.Variable(f"{info.time_input}/rank{rank}", dtype=np.float32)
                shape = gs.Constant(f"{info.time_input}/rank{rank}/shape", np.array([-1] + [1] * (rank - 1), np.int64))
                graph.nodes.append(gs.Node("Reshape", name=f"{info.time_input}/rank{rank}", inputs=[time, shape],
                                           outputs=[per_rank[rank]]))
            node.inputs = [per_rank[rank] if t is time else t for t in node.inputs]
    keep = {t.name for t in graph.inputs}
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Variable) and name not in keep:
            tensor.shape = None
    for tensor in graph.inputs:  # the inputs fed as T copies hold T·N rows, one symbol for them all
        if (tensor.shape and tensor.name not in (info.time_input, PASS_INPUT) and tensor.name not in state_inputs
                and not (tensor.outputs and all(n.attrs.get("static_current") for n in tensor.outputs))):
            tensor.shape = [ROWS_SYMBOL, *tensor.shape[1:]]
    graph.toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    if plan and not any(o.domain == TIME_DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(TIME_DOMAIN, 1))
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


def _reads_as_static_current(node, tensor) -> bool:
    """Whether ``node`` is a fused neuron kernel (inputs I, U, R, P as ``time_batched_model`` pads
    them) that reads ``tensor`` as its current only, without a residual, so that it may read one
    step of it for all T (``static_current``)."""
    return (node.domain == KERNEL_DOMAIN and node.inputs[0] is tensor and tensor not in node.inputs[1:]
            and node.inputs[2].name == "")


def static_current_inputs(model: onnx.ModelProto) -> set:
    """The inputs of a ``time_batched_model`` that its kernels read as a static current (one step,
    [N, ...]): the runtime feeds them as they are, not as T copies."""
    readers: dict = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, index))
    out = set()
    for value in model.graph.input:
        found = readers.get(value.name, [])
        if found and all(n.domain == KERNEL_DOMAIN and i == 0 and any(a.name == "static_current" and a.i == 1
                                                                      for a in n.attribute) for n, i in found):
            out.add(value.name)
    return out


def pass_value(steps: int, fresh: bool) -> np.ndarray:
    """The ``PASS_INPUT`` of a pass: its steps, and 1 where its membranes start from their initial
    values (``u_init``) instead of the state buffers' contents (a run's first pass)."""
    return np.array([steps, int(fresh)], np.int64)


def time_rows(first_step: int, steps: int, samples: int) -> np.ndarray:
    """The time input of a pass: each row's 1-based step (float32 [steps·samples], step-major)."""
    return np.repeat(np.arange(first_step, first_step + steps, dtype=np.float32), samples)


def state_dims(model: onnx.ModelProto, shapes: dict, info: SNNInfo) -> dict:
    """{state input: its per-sample dims}, which the initial states of a time-batched run take: a
    membrane's are those of the current its neuron kernel reads (a membrane in the blocked layout
    holds the same number of elements), a wrapper state's its own (``shapes``: ``static_shapes``
    of the step)."""
    dims = {}
    for node in model.graph.node:
        if node.domain == KERNEL_DOMAIN and len(node.input) > 1:
            shape = shapes.get(node.input[0])
            dims[node.input[1]] = shape[1:] if shape else None
    producer = {out: node for node in model.graph.node for out in node.output}
    for s in info.states:
        if s.kind == "membrane":
            continue
        # the state's declared shape is symbolic; its next value's, or the summed input's, is static
        node = producer.get(s.output)
        names = [s.output] + ([i for i in node.input if i != s.input] if node is not None else [])
        found = [shapes[n][1:] for n in names if shapes.get(n) and all(isinstance(d, int) for d in shapes[n][1:])]
        dims[s.input] = found[0] if found else (shapes.get(s.input) or [None])[1:]
    return {s.input: dims.get(s.input) for s in info.states}


def over_time(array: np.ndarray, steps: int) -> np.ndarray:
    """A static input [N, ...] as the T·N rows of a time-batched run (step-major: T copies)."""
    return np.tile(array, (steps,) + (1,) * (array.ndim - 1))


def split_rows(array: np.ndarray, steps: int) -> np.ndarray:
    """[T·N, ...] → [T, N, ...] (step-major rows)."""
    return array.reshape(steps, array.shape[0] // steps, *array.shape[1:])
