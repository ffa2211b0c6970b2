"""wrap_nonlinear: make every non-linear op between neurons a stateful temporal wrapper.

An op is wrapped when it is not linear in a time-varying input (a tensor that depends on some
neuron state). Inputs that depend only on the network input are constant under rate coding and
need no wrapper, and so are the outputs of Shape and Size, which read only the shape of their
input. An affine op applied at every step (x − c, c·x, Where(cond, x, c), BN(x)) averages to the
op of the average and needs no wrapper either; one whose time-varying input is a shape, indices or a
condition is refused. So is a MatMul with a constant weight whose layout would contract or move the
batch axis (``absorb_threshold_scale.batch_axis_refusal``); the others are synaptic layers, no
wrappers. See ``pmsm_compiler.ops.temporal`` for the math:

    S_t = S_{t−1} + x_t;  F_t = t·f(S_t/t)  (F_t = f(S_t) for positively homogeneous f);
    out_t = F_t − F_{t−1}

Emitted as plain nodes: Add (sum), [Div by t], the original op with its attributes, [Mul by t],
Sub (difference), with state inputs/outputs ``<op>.sum*`` and ``<op>.prev`` (initial value 0) and,
for non-homogeneous ops, one scalar time input ``pmsm_t`` (the 1-based step, float32 [1]).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm_compiler.ops import DOMAIN
from pmsm_compiler.onnx_utils import downstream, tensor_flow
from pmsm_compiler.ops.temporal import (COMPARISON_OPS, GENERAL_OPS, HOMOGENEOUS_OPS, REGION_DOMAIN, bookkeeping_ops,
                                        dense_ops, region_dense_ops)
from pmsm_compiler.snn_format import TIME_INPUT, WRAPPER_INITIAL_STATE, State, Wrapper

from .absorb_threshold_scale import batch_axis_refusal, classify, linear_inputs
from .graph_utils import PassRefusal, fresh, numel, static_shape

LINEAR_CLASSES = {"weighted", "affine_add", "transparent_all", "transparent_first", "select", "affine_real",
                  "neuron"}


def dynamic_tensors(graph, state_inputs):
    """Tensors that depend on some state, i.e. change over time. Shape and Size read only the shape
    of their input, which is the same at every step: their outputs are not time-varying."""
    return downstream(tensor_flow(graph.nodes, skip=lambda node: classify(node) == "metadata"), state_inputs)


def wrap_nonlinear(graph: gs.Graph, ctx) -> gs.Graph:
    graph.toposort()
    dynamic = dynamic_tensors(graph, {s.input for s in ctx.states})
    time_input = None
    psp = {id(n) for n in ctx.psp_nodes}
    replaced = set()  # the readers of comparisons, now inside a region
    for node in list(graph.nodes):
        if node.domain == DOMAIN or id(node) in psp or id(node) in replaced:
            continue
        if node.op in COMPARISON_OPS and not node.domain and any(t.name in dynamic for t in node.inputs):
            for region in _comparison_regions(graph, ctx, node, replaced):
                if time_input is None:
                    time_input = _time_input(graph, ctx)
                _wrap(graph, ctx, region, [i for i, t in enumerate(region.inputs) if t.name in dynamic], False,
                      time_input)
            continue
        reason = batch_axis_refusal(node)  # on the network input too: a run would mix its samples
        if reason:
            raise PassRefusal(reason)
        dyn_idx = [i for i, t in enumerate(node.inputs) if t.name in dynamic]
        if not dyn_idx:
            continue
        cls = classify(node)
        if cls == "metadata":
            continue
        homogeneous = node.op in HOMOGENEOUS_OPS and len(dyn_idx) == 1
        if cls in LINEAR_CLASSES:
            linear = linear_inputs(node, cls)
            off = [i for i in dyn_idx if i not in linear]
            if off:
                i = off[0]
                raise PassRefusal(f"{node.op} '{node.name}' is not linear in its time-varying input {i} "
                                  f"('{node.inputs[i].name}'; linear only in input(s) "
                                  f"{', '.join(map(str, linear)) or 'none'}) and has no temporal wrapper")
        if cls in LINEAR_CLASSES and not (node.op in HOMOGENEOUS_OPS):
            continue
        if cls in LINEAR_CLASSES and node.op in HOMOGENEOUS_OPS:
            pass  # MaxPool & co. are scale-transparent but not additive over time: wrap them
        elif node.op not in GENERAL_OPS and node.op not in HOMOGENEOUS_OPS:
            hint = " (Round quantizers need an integer Clip)" if node.op == "Round" else ""  # recognize_pqa
            raise PassRefusal(f"{node.op} '{node.name}' is non-linear in spiking input and has no temporal "
                              f"wrapper{hint}; supported: {', '.join(sorted(GENERAL_OPS | HOMOGENEOUS_OPS))}")
        if any(len(o.shape or []) == 0 for o in node.outputs) or len(node.outputs) != 1:
            raise PassRefusal(f"{node.op} '{node.name}': the wrapper needs one output of known rank")
        if not homogeneous and time_input is None:
            time_input = _time_input(graph, ctx)
        _wrap(graph, ctx, node, dyn_idx, homogeneous, time_input)
    return graph


def _time_input(graph, ctx):
    time_input = gs.Variable(TIME_INPUT, dtype=np.float32, shape=[1])
    graph.inputs.append(time_input)
    ctx.time_input = TIME_INPUT
    return time_input


def _comparison_regions(graph, ctx, node, replaced: set) -> list:
    """A comparison on spike traffic with each of its readers (a Where that selects by it, a Cast of
    it to a number), as one node of a model-local function per reader (``ops.temporal``:
    ``REGION_DOMAIN``; the function bodies go to ``ctx.functions``), which ``_wrap`` then wraps; the
    comparison is copied into each. Refused: a comparison output read otherwise (another
    comparison, a graph output, a Where's value operand)."""
    out = node.outputs[0]
    readers = list(out.outputs)
    label = node.name or node.op
    if any(t is out for t in graph.outputs) or not readers:
        raise PassRefusal(f"{node.op} '{label}' on spike traffic: its boolean output is a graph output or unread")
    for reader in readers:
        selects = reader.op == "Where" and reader.inputs[0] is out and all(t is not out for t in reader.inputs[1:])
        converts = reader.op == "Cast" and reader.attrs.get("to") == onnx.TensorProto.FLOAT
        if reader.domain or not (selects or converts):
            raise PassRefusal(f"{node.op} '{label}' on spike traffic is read by {reader.op} '{reader.name}': a "
                              f"comparison of spikes compiles only into a Where that selects by it or a Cast of it "
                              f"to float (one function of numbers, wrapped)")
        if reader.outputs[0].dtype not in (np.float32, None):  # the wrapper's sums are float32
            raise PassRefusal(f"{node.op} '{label}' on spike traffic: {reader.op} '{reader.name}' makes "
                              f"{reader.outputs[0].dtype} of it; a wrapped function must give float32")
    regions = []
    for reader in readers:
        outer = []
        for t in [*node.inputs, *(t for t in reader.inputs if t is not out)]:
            if all(t is not o for o in outer):
                outer.append(t)
        name = fresh(graph, f"{node.op}_{reader.op}")
        formal = {id(t): f"x{i}" for i, t in enumerate(outer)}
        body = [onnx.helper.make_node(node.op, [formal[id(t)] for t in node.inputs], ["mask"], **node.attrs),
                onnx.helper.make_node(reader.op, ["mask" if t is out else formal[id(t)] for t in reader.inputs],
                                      ["y"], **reader.attrs)]
        ctx.functions.append(onnx.helper.make_function(
            REGION_DOMAIN, name, [formal[id(t)] for t in outer], ["y"], body,
            [onnx.helper.make_opsetid("", graph.opset)]))
        region = gs.Node(name, name, domain=REGION_DOMAIN, inputs=outer, outputs=list(reader.outputs))
        reader.outputs.clear()
        reader.inputs.clear()
        graph.nodes.append(region)
        replaced.add(id(reader))
        regions.append(region)
    node.inputs.clear()
    node.outputs.clear()
    return regions


def _state(graph, base, like):
    rank = len(like.shape) if like.shape is not None else None
    if rank is None:
        raise PassRefusal(f"tensor '{like.name}' has unknown rank; cannot hold it as state")
    name = fresh(graph, base)
    return gs.Variable(name, dtype=np.float32, shape=[f"{name}:{i}" for i in range(rank)])


def _count_dense_ops(record, node, dyn_idx):
    """What the wrapper computes every step, from the static shapes (``ops.temporal.dense_ops``)."""
    out = node.outputs[0]
    record.dense_ops = (region_dense_ops(out.shape) if node.domain == REGION_DOMAIN else
                        dense_ops(node.op, node.attrs, node.inputs[0].shape, out.shape,
                                  [bool(t.name) for t in node.inputs]))
    sizes = [static_shape(node.inputs[i]) for i in dyn_idx] + [static_shape(out)]
    if all(s is not None for s in sizes):
        record.bookkeeping_ops = bookkeeping_ops(record.homogeneous, [numel(s) for s in sizes[:-1]], numel(sizes[-1]))


def _wrap(graph, ctx, node, dyn_idx, homogeneous, time_input):
    label = node.name or fresh(graph, node.op)
    out = node.outputs[0]
    record = Wrapper(name=label, op=node.op, homogeneous=homogeneous, states=[],
                     # what the runtime's first-step variant needs to bypass the wrapper (S_1 = x, F_1 = f(x))
                     input_index=list(dyn_idx), inputs=[node.inputs[i].name for i in dyn_idx])
    _count_dense_ops(record, node, dyn_idx)
    for i in dyn_idx:
        x = node.inputs[i]
        s_in = _state(graph, f"{label}.sum{i}", x)
        s_out = gs.Variable(fresh(graph, f"{label}.sum{i}_next"), dtype=np.float32, shape=x.shape)
        graph.nodes.append(gs.Node("Add", name=fresh(graph, f"{label}/accumulate{i}"), inputs=[s_in, x],
                                   outputs=[s_out]))
        avg = s_out
        if not homogeneous:
            avg = gs.Variable(fresh(graph, f"{label}.mean{i}"), dtype=np.float32, shape=x.shape)
            graph.nodes.append(gs.Node("Div", name=fresh(graph, f"{label}/average{i}"), inputs=[s_out, time_input],
                                       outputs=[avg]))
        node.inputs[i] = avg
        graph.inputs.append(s_in)
        graph.outputs.append(s_out)
        ctx.states.append(State(s_in.name, s_out.name, WRAPPER_INITIAL_STATE, "input_sum", wrapper=label))
        record.states.append(s_in.name)
    value = gs.Variable(fresh(graph, f"{label}.value"), dtype=np.float32, shape=out.shape)
    node.outputs = [value]
    record.value, record.output = value.name, out.name
    cumulative = value
    if not homogeneous:
        cumulative = gs.Variable(fresh(graph, f"{label}.cumulative"), dtype=np.float32, shape=out.shape)
        graph.nodes.append(gs.Node("Mul", name=fresh(graph, f"{label}/times_t"), inputs=[value, time_input],
                                   outputs=[cumulative]))
    prev = _state(graph, f"{label}.prev", out)
    graph.nodes.append(gs.Node("Sub", name=fresh(graph, f"{label}/difference"), inputs=[cumulative, prev],
                               outputs=[out]))
    graph.inputs.append(prev)
    graph.outputs.append(cumulative)
    ctx.states.append(State(prev.name, cumulative.name, WRAPPER_INITIAL_STATE, "cumulative_output", wrapper=label))
    record.states.append(prev.name)
    ctx.wrappers.append(record)

