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
from pmsm_compiler.ops.temporal import (GENERAL_OPS, HOMOGENEOUS_OPS, LOGICAL_OPS, MASK_OPS, REGION_DOMAIN,
                                        bookkeeping_ops, dense_ops, region_dense_ops)
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
    masks = []  # comparisons and logical ops on spike traffic: taken into their readers' regions
    for node in list(graph.nodes):
        if node.domain == DOMAIN or id(node) in psp:
            continue
        if not node.domain and node.op in MASK_OPS and any(t.name in dynamic for t in node.inputs):
            masks.append(node)
            continue
        if _reads_a_mask(node, dynamic):
            region = _mask_region(graph, ctx, node, dynamic)
            if time_input is None:
                time_input = _time_input(graph, ctx)
            _wrap(graph, ctx, region, [i for i, t in enumerate(region.inputs) if t.name in dynamic], False, time_input)
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
    for node in masks:  # read by something other than a region
        out = node.outputs[0]
        label = node.name or node.op
        if any(t is out for t in graph.outputs):
            raise PassRefusal(f"{node.op} '{label}' on spike traffic: its boolean output is a graph output")
        for reader in out.outputs:
            if not (reader.op in MASK_OPS and not reader.domain):
                raise PassRefusal(f"{node.op} '{label}' on spike traffic is read by {reader.op} '{reader.name}': a "
                                  f"mask of spikes compiles only into a Where that selects by it or a Cast of it "
                                  f"to float (one function of numbers, wrapped)")
    return graph


def _time_input(graph, ctx):
    time_input = gs.Variable(TIME_INPUT, dtype=np.float32, shape=[1])
    graph.inputs.append(time_input)
    ctx.time_input = TIME_INPUT
    return time_input


def _reads_a_mask(node, dynamic) -> bool:
    """A Where that selects by a time-varying mask of ``MASK_OPS``, or a Cast of one: the end of a
    mask region (a Where whose condition is made otherwise is refused as not linear in it)."""
    if node.domain or node.op not in ("Where", "Cast") or not node.inputs or node.inputs[0].name not in dynamic:
        return False
    mask = node.inputs[0]
    return bool(mask.inputs) and mask.inputs[0].op in MASK_OPS and not mask.inputs[0].domain


def _mask_region(graph, ctx, reader, dynamic):
    """``reader`` (``_reads_a_mask``) with the ops that make its time-varying mask (comparisons of
    numbers, And/Or/Xor/Not of masks: ``ops.temporal.MASK_OPS``), as one node of a model-local
    function of numbers (``REGION_DOMAIN``; its body goes to ``ctx.functions``), which the caller
    wraps. The mask's ops stay where another reader needs them (copied into each region); a mask
    made otherwise, a Where that selects masks, a Cast to anything but float is refused."""
    mask = reader.inputs[0]
    label = reader.name or reader.op
    if reader.op == "Cast" and reader.attrs.get("to") != onnx.TensorProto.FLOAT:
        raise PassRefusal(f"{reader.op} '{label}' of a mask of spikes to {reader.outputs[0].dtype}: a mask of spikes "
                          f"compiles only into a Where that selects by it or a Cast of it to float")
    if reader.outputs[0].dtype not in (np.float32, None):  # the wrapper's sums are float32
        raise PassRefusal(f"{reader.op} '{label}' selects {reader.outputs[0].dtype} by a mask of spikes; a wrapped "
                          f"function must give float32")
    body, seen = [], set()

    def visit(t):
        if t.name not in dynamic:
            return  # a mask the same at every step: an input of the function
        producer = t.inputs[0] if t.inputs else None
        if producer is None or producer.domain or producer.op not in MASK_OPS:
            raise PassRefusal(f"{reader.op} '{label}' selects by a mask of spikes made by "
                              f"{producer.op if producer else 'no op'}: only comparisons of numbers and "
                              f"And/Or/Xor/Not of masks go into a wrapped function")
        if id(producer) in seen:
            return
        seen.add(id(producer))
        if producer.op in LOGICAL_OPS:
            for i in producer.inputs:
                visit(i)
        body.append(producer)

    visit(mask)
    made = {id(o) for n in body for o in n.outputs}
    outer = []
    for t in [*(i for n in body for i in n.inputs), *reader.inputs]:
        if id(t) not in made and all(t is not o for o in outer):
            outer.append(t)
    names = {id(t): f"x{i}" for i, t in enumerate(outer)}
    names.update({id(o): f"m{i}" for i, n in enumerate(body) for o in n.outputs})
    name = fresh(graph, "_".join([n.op for n in body] + [reader.op]))
    nodes = [onnx.helper.make_node(n.op, [names[id(t)] for t in n.inputs], [names[id(o)] for o in n.outputs],
                                   **n.attrs) for n in body]
    nodes.append(onnx.helper.make_node(reader.op, [names[id(t)] for t in reader.inputs], ["y"], **reader.attrs))
    ctx.functions.append(onnx.helper.make_function(REGION_DOMAIN, name, [names[id(t)] for t in outer], ["y"], nodes,
                                                   [onnx.helper.make_opsetid("", graph.opset)]))
    region = gs.Node(name, name, domain=REGION_DOMAIN, inputs=outer, outputs=list(reader.outputs))
    reader.outputs.clear()
    reader.inputs.clear()
    graph.nodes.append(region)
    return region


def _state(graph, base, like):
    rank = len(like.shape) if like.shape is not None else None
    if rank is None:
        raise PassRefusal(f"tensor '{like.name}' has unknown rank; cannot hold it as state")
    name = fresh(graph, base)
    return gs.Variable(name, dtype=np.float32, shape=[f"{name}:{i}" for i in range(rank)])


def _count_dense_ops(record, node, dyn_idx, ctx):
    """What the wrapper computes every step, from the static shapes (``ops.temporal.dense_ops``; a
    mask region: one op per element for each op of its function)."""
    out = node.outputs[0]
    if node.domain == REGION_DOMAIN:
        body = next(f for f in ctx.functions if f.domain == REGION_DOMAIN and f.name == node.op).node
        record.dense_ops = region_dense_ops(out.shape, len(body))
    else:
        record.dense_ops = dense_ops(node.op, node.attrs, node.inputs[0].shape, out.shape,
                                     [bool(t.name) for t in node.inputs])
    sizes = [static_shape(node.inputs[i]) for i in dyn_idx] + [static_shape(out)]
    if all(s is not None for s in sizes):
        record.bookkeeping_ops = bookkeeping_ops(record.homogeneous, [numel(s) for s in sizes[:-1]], numel(sizes[-1]))


def _wrap(graph, ctx, node, dyn_idx, homogeneous, time_input):
    label = node.name or fresh(graph, node.op)
    out = node.outputs[0]
    record = Wrapper(name=label, op=node.op, homogeneous=homogeneous, states=[],
                     # what the runtime's first-step variant needs to bypass the wrapper (S_1 = x, F_1 = f(x))
                     input_index=list(dyn_idx), inputs=[node.inputs[i].name for i in dyn_idx])
    _count_dense_ops(record, node, dyn_idx, ctx)
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

