"""ann_form_step: the one step of a T = 1 run, in the ANN's own form.

At T = 1 every membrane holds its initial value u₀ and nobody reads the next one, so an AIF
neuron computes

    k = clip(floor(I + u₀), s_min, s_max)        (AIFHalfEven: round half to even, u₀ = 0)

on the current I = X/θ: the quantizer's own ops, Add ½, Floor, Clip with constant bounds. Written
as those ops (``neurons_as_quantizer_ops``) the step is the ANN's graph op for op, and
onnxruntime optimizes it as it optimizes the ANN. Its rewrites cross a quantizer's boundary: at
level "extended" a head permutation is pushed down through the quantizer's elementwise ops and
merged with the Transpose of kᵀ, and a MatMul's input scale is folded into FusedMatMul's alpha.
Each rewrite changes float32 roundings; an opaque neuron op, or any extra reader of k (the spike
counting), stops it where the ANN has it, and the SNN's outputs then differ from the ANN's in the
last bits, now and then by a level and a prediction (docs/training.md, the interim ViT: 4 of
10,000 predictions).

So the step is built without its counting nodes (``detach_counting``), optimized by onnxruntime
at the session's level, and only then are the counting nodes attached to the optimized graph's k
tensors (``attach_counting``), where they can change no rewrite; the result runs with
onnxruntime's optimizations off (the same kernels onnxruntime chose). With the fused neuron
kernels loaded, the quantizer ops that onnxruntime left intact become neuron ops again
(``quantizer_ops_as_neurons``) and fuse with their counting (``fuse_neuron_kernels``): the same
float32 operations, in one pass. The whole model is the
step: no static prologue, since the ANN is one graph too.

The optimized graph may hold a k tensor in another layout than the compiled model's (a pushed
permutation). The counts are per-sample sums, the same in any layout that keeps the batch axis
first and adds no padding: that is checked on the tensor's shape (the per-sample shape is static,
so the one dynamic dimension must come first), as onnxruntime records it, as
ONNX shape inference gives it, or as traced back through the permutations and elementwise ops
before it (``_traced_shape``); where
it cannot be shown, the step is refused (``NotAnnForm``) and the runtime keeps its usual one.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm_compiler.ops import DOMAIN
from pmsm_compiler.snn_format import SNNInfo

#: the first-and-last-step neuron ops and how each fires: (rounding op, or None for a binary spike)
_FIRE_OPS = {"AIFFinal": "Floor", "AIFHalfEvenFinal": "Round", "IFFinal": None}
#: name of the node that emits layer k's spikes, by spike tensor: how k is found again after
#: onnxruntime's rewrites, which may rename the tensor but keep the node
FIRE_NODE_PREFIX = "pmsm_fire:"
#: ops through which a tensor keeps its shape (their other inputs being scalars)
_SHAPE_KEEPING = {"Floor", "Round", "Add", "Sub", "Mul", "Div", "Clip", "Cast", "Neg", "Identity"}


class NotAnnForm(Exception):
    """The step cannot be built in the ANN's form; the message says why."""


def neurons_as_quantizer_ops(graph: gs.Graph, info: SNNInfo) -> int:
    """Replace every neuron of the first-and-last step (its membrane input a constant) by the
    quantizer's ops; the spike tensor keeps its name and its producer is named
    ``FIRE_NODE_PREFIX + spike tensor``. Returns how many were replaced."""
    spike_names = {layer.spike_tensor for layer in info.layers}
    replaced = 0
    for node in list(graph.nodes):
        if node.domain != DOMAIN or node.op not in _FIRE_OPS:
            continue
        current, membrane = node.inputs[0], node.inputs[1]
        k = node.outputs[0]
        if not isinstance(membrane, gs.Constant) or k.name not in spike_names:
            raise NotAnnForm(f"neuron {node.name!r} does not start from a constant membrane")
        base = node.name or k.name
        m = gs.Variable(f"{base}.m", dtype=np.float32)
        nodes = [gs.Node("Add", name=f"{base}/integrate", inputs=[current, membrane], outputs=[m])]
        rounding = _FIRE_OPS[node.op]
        if rounding is None:  # IF: k = 1[m >= 1]
            fired = gs.Variable(f"{base}.fired", dtype=bool)
            one = gs.Constant(f"{base}.one", np.array(1.0, np.float32))
            nodes += [gs.Node("GreaterOrEqual", inputs=[m, one], outputs=[fired]),
                      gs.Node("Cast", name=FIRE_NODE_PREFIX + k.name, attrs={"to": onnx.TensorProto.FLOAT},
                              inputs=[fired], outputs=[k])]
        else:
            level = gs.Variable(f"{base}.level", dtype=np.float32)
            lo = gs.Constant(f"{base}.s_min", np.array(float(node.attrs["s_min"]), np.float32))
            hi = gs.Constant(f"{base}.s_max", np.array(float(node.attrs["s_max"]), np.float32))
            nodes += [gs.Node(rounding, inputs=[m], outputs=[level]),
                      gs.Node("Clip", name=FIRE_NODE_PREFIX + k.name, inputs=[level, lo, hi], outputs=[k])]
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.remove(node)
        graph.nodes.extend(nodes)
        replaced += 1
    return replaced


def quantizer_ops_as_neurons(graph: gs.Graph, info: SNNInfo) -> int:
    """The inverse of ``neurons_as_quantizer_ops`` on onnxruntime's optimized graph: each fire
    node that still reads its own Add (of a scalar constant membrane) and rounding op, which
    nothing else reads, becomes the ``*Final`` neuron op again (the same float32 operations), so
    that the runtime can fuse it with its counting into one kernel (``fuse_neuron_kernels``). The
    graph runs with onnxruntime's optimizations off: no rewrite sees the opaque op any more.
    Returns how many were restored; the others stay as the quantizer's ops (same results)."""
    by_name = {n.name: n for n in graph.nodes}
    restored = 0
    for layer in info.layers:
        fire = by_name.get(FIRE_NODE_PREFIX + layer.spike_tensor)
        pattern = _fire_pattern(fire, graph) if fire is not None else None
        if pattern is None:
            continue
        op, current, membrane, bounds, dropped = pattern
        k = fire.outputs[0]
        neuron = gs.Node(op, name=f"{layer.name}/neuron", domain=DOMAIN, inputs=[current, membrane], outputs=[])
        if bounds is not None:
            neuron.attrs = {"s_min": bounds[0], "s_max": bounds[1]}
        for node in dropped:
            node.inputs.clear()
            node.outputs.clear()
        graph.nodes = [n for n in graph.nodes if all(n is not d for d in dropped)]
        neuron.outputs.append(k)
        graph.nodes.append(neuron)
        restored += 1
    if restored:
        graph.toposort()
    return restored


def _fire_pattern(fire: gs.Node, graph: gs.Graph):
    """(op, current, membrane, (s_min, s_max) or None, nodes) for a fire node reading its intact
    quantizer ops; None otherwise."""
    def only(tensor, op):
        if (tensor is None or len(tensor.inputs) != 1 or len(tensor.outputs) != 1 or tensor in graph.outputs
                or tensor.inputs[0].op != op):
            return None
        return tensor.inputs[0]

    def scalar(t):
        return float(t.values) if isinstance(t, gs.Constant) and math.prod(t.shape) == 1 else None

    if fire.op == "Clip" and len(fire.inputs) == 3:
        lo, hi = scalar(fire.inputs[1]), scalar(fire.inputs[2])
        rounding = next((r for r in ("Floor", "Round") if only(fire.inputs[0], r) is not None), None)
        if lo is None or hi is None or rounding is None or lo != int(lo) or hi != int(hi):
            return None
        rounder = fire.inputs[0].inputs[0]
        op, bounds, chain = {"Floor": "AIFFinal", "Round": "AIFHalfEvenFinal"}[rounding], (int(lo), int(hi)), [rounder]
        m = rounder.inputs[0]
    elif fire.op == "Cast" and fire.attrs.get("to") == onnx.TensorProto.FLOAT:
        compare = only(fire.inputs[0], "GreaterOrEqual")
        if compare is None or scalar(compare.inputs[1]) != 1.0:
            return None
        op, bounds, chain = "IFFinal", None, [compare]
        m = compare.inputs[0]
    else:
        return None
    add = only(m, "Add")
    if add is None or len(add.inputs) != 2:
        return None
    membranes = [t for t in add.inputs if scalar(t) is not None]
    if len(membranes) != 1:
        return None
    current = next(t for t in add.inputs if t is not membranes[0])
    return op, current, membranes[0], bounds, [add, *chain, fire]


def detach_counting(graph: gs.Graph, info: SNNInfo) -> list[gs.Node]:
    """Remove the spike counting (the nodes between the spike tensors and the count outputs) and
    its outputs from ``graph``; returns those nodes in their order, their tensors intact."""
    count_outputs = [n for n in (info.spike_counts_output, info.counters_output) if n]
    spike_names = {layer.spike_tensor for layer in info.layers}
    outputs = [t for t in graph.outputs if t.name in count_outputs]
    chosen: set[int] = set()
    pending = list(outputs)
    while pending:
        tensor = pending.pop()
        if tensor.name in spike_names or isinstance(tensor, gs.Constant):
            continue
        for producer in tensor.inputs:
            if id(producer) not in chosen:
                chosen.add(id(producer))
                pending.extend(producer.inputs)
    counting = [n for n in graph.nodes if id(n) in chosen]
    # nothing else may read what the counting computes
    produced = {t.name for n in counting for t in n.outputs}
    for n in graph.nodes:
        if id(n) not in chosen and any(t.name in produced for t in n.inputs):
            raise NotAnnForm(f"node {n.name!r} reads the spike counting")
    graph.nodes = [n for n in graph.nodes if id(n) not in chosen]
    graph.outputs = [t for t in graph.outputs if t.name not in count_outputs]
    return counting


def attach_counting(graph: gs.Graph, counting: list[gs.Node], info: SNNInfo, outputs: list[gs.Variable]) -> None:
    """Append the ``counting`` nodes to ``graph`` (onnxruntime's optimized graph), each spike
    tensor they read replaced by the optimized graph's k tensor of that layer (found by its fire
    node), and make ``outputs`` (the count outputs) graph outputs again."""
    by_node = {n.name: n for n in graph.nodes}
    network_input = next((t for t in graph.inputs if t.name == info.inputs[0].name), None)
    batch = network_input.shape[0] if network_input is not None and network_input.shape else None
    found = {}
    for layer in info.layers:
        fire = by_node.get(FIRE_NODE_PREFIX + layer.spike_tensor)
        if fire is None:
            raise NotAnnForm(f"layer {layer.name}: its fire node is gone from the optimized graph")
        k = fire.outputs[0]
        shape = _traced_shape(k)
        if shape is None:
            raise NotAnnForm(f"layer {layer.name}: the shape of its spikes in the optimized graph is unknown")
        per_sample = shape[1:]
        # the per-sample shape is static, so the batch dimension is the only dynamic one: a fixed
        # batch is the network input's, a dynamic one any symbol (onnxruntime names an unnamed one)
        first_is_batch = shape[0] == batch if isinstance(batch, int) else not isinstance(shape[0], int)
        if (not first_is_batch or any(not isinstance(d, int) for d in per_sample)
                or (layer.neurons is not None and math.prod(per_sample) != layer.neurons)):
            raise NotAnnForm(f"layer {layer.name}: its spikes are laid out as {shape} in the optimized graph")
        found[layer.spike_tensor] = k
    for node in counting:
        node.inputs = [found.get(t.name, t) for t in node.inputs]
    graph.nodes.extend(counting)
    graph.outputs.extend(outputs)


def _traced_shape(tensor) -> list | None:
    """``tensor``'s shape as the optimized graph records it, or traced back through the ops that
    keep a shape (scalar second operands) and Transposes to a tensor whose shape is recorded."""
    perm_chain = []
    t = tensor
    for _ in range(64):
        if t.shape is not None and sum(not isinstance(d, int) for d in t.shape) <= 1:  # at most the batch
            shape = list(t.shape)
            for perm in reversed(perm_chain):
                shape = [shape[p] for p in perm]
            return shape
        if len(t.inputs) != 1:
            return None
        node = t.inputs[0]
        if node.op == "Transpose" and "perm" in node.attrs:
            perm_chain.append(list(node.attrs["perm"]))
            t = node.inputs[0]
        elif node.op in _SHAPE_KEEPING and node.inputs:
            variables = [i for i in node.inputs if not isinstance(i, gs.Constant) and i.name]
            constants = [i for i in node.inputs if isinstance(i, gs.Constant)]
            if len(variables) != 1 or any(math.prod(c.shape) != 1 for c in constants):
                return None
            t = variables[0]
        else:
            return None
    return None


def ann_form_step_session(model: onnx.ModelProto, info: SNNInfo, make, optimize, kernels: bool = False):
    """(session, fused layers) of the T = 1 step in the ANN's form (see the module docstring).

    ``model``: the compiled SNN (the whole model); make(path): the session that runs a model
    file with onnxruntime's optimizations off; optimize(model, path): writes onnxruntime's
    optimized graph of ``model`` to ``path`` at the session's level; ``kernels``: the fused
    neuron kernels are loaded (make registers them), so the neurons that onnxruntime left intact
    become neuron ops again and fuse with their counting. NotAnnForm where the form cannot be
    built or its counts cannot be shown per sample."""
    from pmsm_compiler.onnx_utils import import_graph

    from .step_graphs import export_variant, variant_graph

    graph = variant_graph(model, info, first=True, last=True)
    neurons_as_quantizer_ops(graph, info)
    names = (info.spike_counts_output, info.counters_output)
    count_outputs = [t for t in graph.outputs if t.name in names]
    counting = detach_counting(graph, info)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    step = export_variant(graph, model, last=True)
    functions = list(step.functions)
    with tempfile.TemporaryDirectory(prefix="pmsm_t1_", dir=_memory_folder(step)) as tmp:
        path = os.path.join(tmp, "t1.optimized.onnx")
        optimize(step, path)
        optimized = onnx.load(path, load_external_data=False)
        try:  # the shapes of tensors onnxruntime's rewrites created (it records only the others)
            optimized = onnx.shape_inference.infer_shapes(optimized)
        except Exception:  # noqa: BLE001 - then the recorded shapes alone, and tracing
            pass
        opt_graph = import_graph(optimized)
        attach_counting(opt_graph, counting, info, count_outputs)
        fused = 0
        if kernels:
            from .fuse_neuron_kernels import fuse_neuron_kernels, fused_layers

            quantizer_ops_as_neurons(opt_graph, info)
            opt_graph, _ = fuse_neuron_kernels(opt_graph)
            fused = fused_layers(opt_graph)
        out = gs.export_onnx(opt_graph)  # the weights stay references to the data file
        out.ir_version = optimized.ir_version
        present = {f.name for f in out.functions}
        out.functions.extend(f for f in functions if f.name not in present)
        have = {o.domain for o in out.opset_import}
        out.opset_import.extend(o for o in step.opset_import if o.domain not in have)
        from .fuse_neuron_kernels import with_kernel_domain

        with_kernel_domain(out, fused)
        rewritten = os.path.join(tmp, "t1.counted.onnx")
        onnx.save(out, rewritten)
        return make(rewritten), fused


def _memory_folder(model: onnx.ModelProto) -> str | None:
    from .optimized_step import _memory_folder as folder

    return folder(model)
