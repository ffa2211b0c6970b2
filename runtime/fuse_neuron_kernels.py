"""fuse_neuron_kernels: one fused kernel per neuron layer, for the runtime's step graphs.

Pattern (what ``pqa_to_aif`` and ``count_spikes`` emit for every neuron layer)::

    K, U_next = pmsm::AIF|AIFHalfEven|IF (I, U)     (K only for the ``*Final`` variants)
    count     = ReduceSum(Abs(Flatten(K)), [1])     float32, when exact below 2^24
              | ReduceSum(Abs(Cast<int64>(Flatten(K))), [1])   otherwise
                (no Abs for non-negative spikes: IF, or AIF with s_min >= 0)
    counters  = pmsm::SpikeCounters<s_min, s_max>(K | Cast<int64>(K))   (models compiled with the
                counters; s_min, s_max the neuron's, 0 and 1 for IF)

Rewrite::

    K, U_next, count = pmsm.kernels::AIFCount|AIFHalfEvenCount|IFCount (I, U)   (``*CountFinal``: K, count)
    K, U_next, count, counters = pmsm.kernels::AIFCounters|AIFHalfEvenCounters|IFCounters (I, U)
                                                                     (``*CountersFinal``: K, count, counters)

The fused op (``pmsm_compiler/kernels/neurons.c``) performs the same float32 operations in the
same order in one pass over memory, so spikes, membranes and counts are bit-identical (the
counters are integers, exact on both paths); the count keeps its dtype (attribute
``count_float``). It exists only in the step graphs that ``SNNSession`` builds when the kernel
library is loaded, never in a compiled model file, which stays portable ONNX.

Check (each failure leaves that layer as it is and says why): the spike tensor feeds exactly one
count chain of that shape, every intermediate of the chain has no other reader, the Flatten
keeps the batch axis (axis = 1), which is what makes the fused per-sample count equal, and the
levels are within the kernel's ±``KERNEL_MAX_LEVEL`` (16-bit Q/DQ activations go beyond: their
layers run as the ONNX body, with the same results). A ``SpikeCounters`` reader is fused in when
it is the only one and counts with the neuron's bounds; otherwise the neuron fuses with its count
alone and the counters stay as they are (with a note).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm_compiler.onnx_utils import const_value, import_graph

KERNEL_DOMAIN = "pmsm.kernels"
# neurons.c sums |k| over blocks of 2^20 neurons in 32-bit integers: exact for |k| <= 1024 (the
# kernel refuses to be created beyond)
KERNEL_MAX_LEVEL = 1024
FUSED_OP = {"AIF": "AIFCount", "AIFFinal": "AIFCountFinal", "IF": "IFCount", "IFFinal": "IFCountFinal",
            "AIFHalfEven": "AIFHalfEvenCount", "AIFHalfEvenFinal": "AIFHalfEvenCountFinal"}
#: the fused op with every counting rule: AIFCount → AIFCounters, AIFCountFinal → AIFCountersFinal, ...
FUSED_COUNTERS_OP = {k: v.replace("Count", "Counters") for k, v in FUSED_OP.items()}
IF_BOUNDS = (0, 1)


def _only_reader(tensor, graph):
    if tensor in graph.outputs or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def _count_chain(spikes: gs.Variable, graph: gs.Graph):
    """(chain nodes, count tensor, why-not) for the count chain reading ``spikes``."""
    flattens = [n for n in spikes.outputs if n.op == "Flatten"]
    if len(flattens) != 1:
        return None, None, f"{len(flattens)} Flatten readers of the spikes (expected 1)"
    flatten = flattens[0]
    if int(flatten.attrs.get("axis", 1)) != 1:
        return None, None, "the count's Flatten does not keep the batch axis"
    chain, tensor = [flatten], flatten.outputs[0]
    while True:
        node = _only_reader(tensor, graph)
        if node is None:
            return None, None, f"{tensor.name} is read by more than the count"
        chain.append(node)
        if node.op == "ReduceSum":
            axes = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
            if axes is None or list(np.asarray(axes).reshape(-1)) != [1] or int(node.attrs.get("keepdims", 1)) != 1:
                return None, None, "the count's ReduceSum is not over axis 1 with keepdims"
            return chain, node.outputs[0], None
        if node.op == "Abs" or (node.op == "Cast" and int(node.attrs.get("to", 0)) == onnx.TensorProto.INT64):
            tensor = node.outputs[0]
            continue
        return None, None, f"unexpected {node.op} in the count chain"


def _counters_chain(spikes: gs.Variable, graph: gs.Graph, domain: str, bounds):
    """(chain nodes, counters tensor, why-not) for the ``SpikeCounters`` reading ``spikes``
    (directly, or through a Cast to int64 that nothing else reads); (None, None, None) if none."""
    found = []
    for node in spikes.outputs:
        if node.domain == domain and node.op == "SpikeCounters":
            found.append([node])
        elif node.op == "Cast" and int(node.attrs.get("to", 0)) == onnx.TensorProto.INT64:
            reader = _only_reader(node.outputs[0], graph)
            if reader is not None and reader.domain == domain and reader.op == "SpikeCounters":
                found.append([node, reader])
    if not found:
        return None, None, None
    if len(found) > 1:
        return None, None, f"{len(found)} SpikeCounters readers of the spikes (expected 1)"
    chain = found[0]
    counters = chain[-1]
    got = (int(counters.attrs.get("s_min", 0)), int(counters.attrs.get("s_max", 0)))
    if got != tuple(bounds):
        return None, None, f"its SpikeCounters counts caps {got}, the neuron fires in {tuple(bounds)}"
    return chain, counters.outputs[0], None


def fuse_neuron_kernels(graph: gs.Graph, domain: str = "pmsm") -> tuple[gs.Graph, list[str]]:
    """Rewrite every neuron + count chain of ``graph`` into one fused node.

    Returns (graph, notes): one note per neuron left unfused, with the reason.
    """
    notes = []
    for node in list(graph.nodes):
        if node.domain != domain or node.op not in FUSED_OP:
            continue
        final = node.op.endswith("Final")
        if len(node.outputs) != (1 if final else 2) or len(node.inputs) != 2:
            notes.append(f"{node.name}: unexpected inputs/outputs")
            continue
        if node.op.startswith("AIF"):
            levels = (int(node.attrs["s_min"]), int(node.attrs["s_max"]))
            if max(abs(k) for k in levels) > KERNEL_MAX_LEVEL:
                notes.append(f"{node.name}: levels [{levels[0]}, {levels[1]}] beyond the fused kernel's "
                             f"±{KERNEL_MAX_LEVEL}")
                continue
        chain, count, why = _count_chain(node.outputs[0], graph)
        if chain is None:
            notes.append(f"{node.name}: {why}")
            continue
        count_float = int(count.dtype == np.float32)
        attrs = {"count_float": count_float}
        bounds = IF_BOUNDS
        if node.op.startswith("AIF"):
            attrs["s_min"] = int(node.attrs["s_min"])
            attrs["s_max"] = int(node.attrs["s_max"])
            bounds = (attrs["s_min"], attrs["s_max"])
        outputs = list(node.outputs) + [count]
        op = FUSED_OP[node.op]
        counters_chain, counters, why = _counters_chain(node.outputs[0], graph, domain, bounds)
        if why is not None:
            notes.append(f"{node.name}: counters not fused: {why}")
        elif counters_chain is not None:
            op = FUSED_COUNTERS_OP[node.op]
            outputs.append(counters)
            chain = chain + counters_chain
        for n in chain:
            n.outputs.clear()
            n.inputs.clear()
        new = gs.Node(op, name=f"{node.name or node.outputs[0].name}/fused", domain=KERNEL_DOMAIN,
                      attrs=attrs,
                      inputs=list(node.inputs), outputs=outputs)
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.append(new)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph, notes


def fused_layers(graph: gs.Graph) -> int:
    """The fused neuron kernels in ``graph``."""
    return sum(1 for n in graph.nodes if n.domain == KERNEL_DOMAIN)


def with_kernel_domain(model: onnx.ModelProto, fused: int) -> onnx.ModelProto:
    """``model`` importing the kernels' domain when it has ``fused`` > 0 fused kernels."""
    if fused and not any(o.domain == KERNEL_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(KERNEL_DOMAIN, 1))
    return model


def fuse_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, list[str]]:
    """``fuse_neuron_kernels`` on a ModelProto: (new model, fused layers, notes)."""
    graph = import_graph(model)
    graph, notes = fuse_neuron_kernels(graph)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    fused = fused_layers(graph)
    with_kernel_domain(out, fused)
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out, fused, notes
