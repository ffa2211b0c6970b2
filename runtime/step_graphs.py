"""The step graphs the runtime runs, rewritten from a compiled SNN's one-timestep model.

- ``split_static_prologue``: every node that depends only on the network input runs once per batch
  (rate coding), not once per step;
- ``step_variant``: the step specialised by position in time (initial states as constants at the
  first step, no next state at the last);
- ``states_safe_in_place``: the states whose one buffer may be both the step's input and output;
- ``fuse_neuron_kernels`` (its own module): a neuron layer and its counts as one fused kernel.

Runtime concerns: the compiled file never contains these rewrites; they read the model's record
(``pmsm_compiler.snn_format``) and nothing of the compiler.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm_compiler.onnx_utils import ancestors, downstream, import_graph, node_dag, tensor_flow
from pmsm_compiler.ops import DOMAIN, add_functions
from pmsm_compiler.ops.neurons import FINAL_STEP_OPS, final_step_functions
from pmsm_compiler.snn_format import SNNInfo


#: (static producer, state-dependent consumer) pairs that onnxruntime fuses into one kernel (from
#: level "basic": Conv+BatchNormalization; "all": Conv+Add, the residual, in the NCHWc rewrite).
#: The producer stays in the step: a session boundary between them would stop a fusion the ANN has.
FUSED_PAIRS = {("Conv", "Add"), ("Conv", "Sum"), ("Conv", "BatchNormalization"), ("BatchNormalization", "Add"),
               ("BatchNormalization", "Sum")}


def split_static_prologue(model: onnx.ModelProto, info: SNNInfo):
    """(prologue, step) models, or (None, model) when nothing static is worth splitting off.

    The prologue maps the network input to the *boundary* tensors: static tensors read by
    state-dependent nodes. The step model reads those instead of recomputing them.
    """
    graph = import_graph(model)
    input_names = {i.name for i in info.inputs}
    dynamic = {s.input for s in info.states}
    if info.time_input:
        dynamic.add(info.time_input)
    if not in_topological_order(graph):  # a loaded model is (the checker requires it); sorting costs
        graph.toposort()
    dyn_tensors = downstream(tensor_flow(graph.nodes), dynamic)
    static_nodes = [node for node in graph.nodes if not any(t.name in dyn_tensors for t in node.inputs)]
    # A static Conv (or Conv → BatchNormalization) whose output a state-dependent Add reads stays in
    # the step (FUSED_PAIRS): onnxruntime fuses such an Add (a residual) into the Conv, which rounds
    # differently, and a session boundary between them would stop that fusion where the ANN has it.
    while True:
        static_ids = {id(n) for n in static_nodes}
        fused = [n for n in static_nodes if any(
            (n.op, c.op) in FUSED_PAIRS and id(c) not in static_ids for t in n.outputs for c in t.outputs)]
        if not fused:
            break
        for n in fused:
            static_nodes.remove(n)
            dyn_tensors.update(t.name for t in n.outputs)
        # what reads a tensor now computed in the step is state-dependent too
        for node in graph.nodes:
            if id(node) in {id(m) for m in static_nodes} and any(t.name in dyn_tensors for t in node.inputs):
                static_nodes.remove(node)
                dyn_tensors.update(t.name for t in node.outputs)
    heavy = [n for n in static_nodes if n.op in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
    if not heavy:
        return None, model
    static_ids = {id(n) for n in static_nodes}
    boundary = []
    direct_inputs = set()  # network inputs read by state-dependent nodes (e.g. an input skip connection)
    for node in graph.nodes:
        if id(node) in static_ids:
            continue
        for t in node.inputs:
            if t.name in input_names:
                direct_inputs.add(t.name)
            elif (t.name and not isinstance(t, gs.Constant) and t.name not in dyn_tensors
                    and t not in boundary):
                boundary.append(t)
    outputs_static = [t for t in graph.outputs if t.name not in dyn_tensors and t.name not in input_names]
    if outputs_static:
        return None, model  # an output that never changes: keep the simple form
    if any(t.shape is None or t.dtype is None for t in boundary):
        return None, model
    # cleanup() only removes nodes, and a graph input only loses its producer: both keep the nodes in
    # topological order, so neither graph is sorted again (a gs toposort cost as much as the rest)
    pro = graph.copy()
    pro_tensors = pro.tensors()
    pro.inputs = [pro_tensors[n] for n in input_names]
    pro.outputs = [pro_tensors[t.name] for t in boundary]
    pro.cleanup(remove_unused_graph_inputs=True)
    step = graph  # the imported graph itself: one copy, not two
    step_tensors = step.tensors()
    for t in boundary:
        st = step_tensors[t.name]
        st.inputs.clear()  # now a graph input
    step.inputs = [step_tensors[t.name] for t in boundary] + [t for t in step.inputs
                                                              if t.name not in input_names or t.name in direct_inputs]
    step.cleanup(remove_unused_graph_inputs=False)
    pro_model = gs.export_onnx(pro)
    step_model = gs.export_onnx(step)
    for m in (pro_model, step_model):
        m.ir_version = model.ir_version
        del m.metadata_props[:]
    return pro_model, step_model


def in_topological_order(graph: gs.Graph) -> bool:
    """Whether every node of ``graph`` reads only graph inputs, constants and tensors that earlier
    nodes produce (a subgraph's outer-scope reads are not followed: such a graph is reported
    unsorted, and sorted)."""
    known = {t.name for t in graph.inputs}
    for node in graph.nodes:
        if any(isinstance(a, gs.Graph) or isinstance(a, list) and any(isinstance(g, gs.Graph) for g in a)
               for a in node.attrs.values()):
            return False
        for t in node.inputs:
            if t.name and not isinstance(t, gs.Constant) and t.name not in known:
                return False
        known.update(t.name for t in node.outputs)
    return True


def without_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` without graph output ``name`` and the nodes that only fed it."""
    graph = import_graph(model)
    graph.outputs = [t for t in graph.outputs if t.name != name]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return out


def step_variant(step: onnx.ModelProto, info: SNNInfo, first: bool, last: bool) -> onnx.ModelProto:
    """The step model specialised for where it runs in time (``variant_graph``, exported)."""
    return export_variant(variant_graph(step, info, first, last), step, last)


def export_variant(graph: gs.Graph, step: onnx.ModelProto, last: bool) -> onnx.ModelProto:
    """A ``variant_graph`` of ``step`` (rewritten further or not) as a model."""
    model = gs.export_onnx(graph)
    model.ir_version = step.ir_version
    if last:
        add_functions(model, final_step_functions())
    del model.metadata_props[:]
    return model


def variant_graph(step: onnx.ModelProto, info: SNNInfo, first: bool, last: bool) -> gs.Graph:
    """The step graph specialised for where it runs in time.

    first: every state still holds its initial value, so the state inputs become constant
    scalars (½ for membranes, 0 for wrapper sums) — the same values the broadcast initial
    tensors hold, so the same results, without reading a state tensor.
    Each temporal wrapper is bypassed at the first step: its op reads the inputs themselves
    (S_1/1 = x) and its consumers read the op's value (F_1 − F_0 = f(x)), so that onnxruntime
    sees the ANN's own graph around the op and optimizes it the same way (a MatMul followed by a
    Mul by a constant is fused into one kernel, which rounds differently from the two ops). That
    holds fully at T = 1 (first and last): a first step that also computes the next states reads
    the op's value a second time, which can stop such a fusion, so the first step of a longer run
    can differ from a T = 1 run in the last bit (the T = 1 run is the one equal to the ANN).
    last: nobody reads the next states, so they are dropped, and the neurons use their
    ``*Final`` functions without the reset (onnxruntime inlines a function's whole body, so an
    unused output would still be computed). At T = 1 the single step is both first and last.
    """
    graph = import_graph(step)
    if first:
        tensors = graph.tensors()
        for state in info.states:
            var = tensors[state.input]
            const = gs.Constant(state.input + ".initial", np.array(state.init, dtype=np.float32))
            for node in list(var.outputs):
                node.inputs = [const if t is var else t for t in node.inputs]
        names = {s.input for s in info.states}
        graph.inputs = [t for t in graph.inputs if t.name not in names]
        _bypass_wrappers(graph, info)
    if last:
        state_outputs = {s.output for s in info.states}
        graph.outputs = [t for t in graph.outputs if t.name not in state_outputs]
        for node in graph.nodes:
            if node.domain == DOMAIN and node.op in FINAL_STEP_OPS and len(node.outputs) == 2:
                node.op = FINAL_STEP_OPS[node.op]
                node.outputs = node.outputs[:1]
    graph.cleanup(remove_unused_graph_inputs=False)
    if not in_topological_order(graph):  # the rewrites above keep the step's order; checked, not assumed
        graph.toposort()
    return graph


def _bypass_wrappers(graph, info: SNNInfo) -> None:
    tensors = graph.tensors()
    for w in info.wrappers:
        value, out = tensors.get(w.value), tensors.get(w.output)
        if value is None or out is None or len(value.inputs) != 1:
            continue  # a model compiled before wrappers recorded their tensors: keep the wrapper
        op = value.inputs[0]
        for i, name in zip(w.input_index, w.inputs):
            op.inputs[i] = tensors[name]
        if out not in graph.outputs:
            for consumer in list(out.outputs):
                consumer.inputs = [value if t is out else t for t in consumer.inputs]


def states_safe_in_place(step: onnx.ModelProto, info: SNNInfo) -> set[str]:
    """State inputs whose buffer may receive the state's next value within the same step.

    Safe when every node that reads the state (after inlining the neuron and wrapper functions,
    which is what onnxruntime executes) is a strict ancestor of the node that writes the next
    value: any execution order then finishes every read before the write starts, so binding one
    buffer as both input and output changes no result. A writer that itself reads the state, a
    reader off the path to the writer, or a state read inside a subgraph is refused.
    """
    from onnx import inliner

    from pmsm_compiler.weights import skeleton

    graph = inliner.inline_local_functions(skeleton(step)).graph  # the nodes only: no copy of the weights
    nodes = list(graph.node)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute):
        return set()
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    dag = node_dag(nodes)
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in set(n.input):
            readers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in graph.output}
    safe = set()
    for state in info.states:
        writer = producer.get(state.output)
        reads = readers.get(state.input, [])
        if writer is None or not reads or state.input in graph_outputs:
            continue
        upstream = ancestors(dag, writer)  # strict ancestors of the writer
        if all(r in upstream for r in reads):
            safe.add(state.input)
    return safe
