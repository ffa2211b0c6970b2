"""blocked_layout: fused neurons read and write onnxruntime's blocked NCHWc tensors directly.

At level "all" onnxruntime runs convolutions (and pooling) in a blocked layout, NCHWc: a tensor
[N, C, H, W] is stored as [N, C/b, H, W, b] with the channel block b of the CPU (8 with AVX2, 16
with AVX-512), and converted back (``ReorderOutput``) for every op it cannot run blocked. A
ReLU network stays blocked from its first convolution to its last; an SNN step, whose neurons
are custom kernels, pays a ``ReorderOutput`` before each neuron and a ``ReorderInput`` after it,
two extra passes over memory per layer::

    Conv_nchwc → ReorderOutput → neuron → ReorderInput → Conv_nchwc
      becomes
    Conv_nchwc → neuron → Conv_nchwc

This is exact when C is a multiple of b: the blocked tensor then holds the same N·C·H·W values,
each sample's values contiguous, only permuted within the sample; the neuron is elementwise
(k_i, U_i from I_i, U_i and R_i at the same index i) and its counts are sums over a sample, so
every value and count is the one of the NCHW run, wherever each value sits. The membrane of a
neuron that runs blocked is itself stored blocked: a state is opaque to everything but its
neuron, and every step variant of a session must agree on it, so the middle step decides
(``required=None``) and the other variants follow its decisions (a neuron the middle step runs
blocked is reordered into the layout where a variant cannot feed it blocked; one it runs NCHW
stays NCHW). Readers of the spikes other than ``ReorderInput`` get one ``ReorderOutput``.

Runs on onnxruntime's optimized step graph (``runtime/optimized_step.py``); a channel count that
is not a multiple of b (padded blocks) keeps its reorders.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .fuse_neuron_kernels import KERNEL_DOMAIN

NCHWC_DOMAIN = "com.microsoft.nchwc"


def _is(node, op: str) -> bool:
    return node.op == op and node.domain == NCHWC_DOMAIN and int(node.attrs.get("channels_last", 0)) == 0


def _read_blocked(tensor) -> bool:
    return any(_is(reader, "ReorderInput") for reader in tensor.outputs)


def _state_key(node, state_inputs: set, state_of_output: dict) -> str | None:
    """The state a neuron node reads or writes (its input name), None when it does neither."""
    if len(node.inputs) > 1 and node.inputs[1].name in state_inputs:
        return node.inputs[1].name
    for t in node.outputs[1:2]:
        if t.name in state_of_output:
            return state_of_output[t.name]
    return None


def blocked_layout(graph: gs.Graph, block: int, states, required: dict | None = None,
                   shapes: dict | None = None) -> tuple[dict, int]:
    """Run the fused neurons of ``graph`` (in place) on blocked tensors where exact and useful.

    block: onnxruntime's NCHWc channel block on this CPU; states: [(input name, output name)] of
    the model's states; required: the middle step's decisions, {state input: channels} of the
    neurons that run blocked (None: decide); shapes: static shapes by tensor name (the channels of a
    neuron input that no ``ReorderOutput`` describes). Returns (decisions, neurons moved).
    """
    state_inputs = {i for i, _ in states}
    state_of_output = {o: i for i, o in states}
    graph.toposort()
    # tensor name -> (its blocked twin, channels)
    blocked = {}
    for node in graph.nodes:
        if _is(node, "ReorderOutput"):
            channels = int(node.attrs.get("channels", 0))
            if channels > 0 and channels % block == 0:
                blocked[node.outputs[0].name] = (node.inputs[0], channels)
    decisions, moved, spikes_moved = {}, 0, []
    for node in [n for n in graph.nodes if n.domain == KERNEL_DOMAIN]:
        key = _state_key(node, state_inputs, state_of_output)
        tensors = [node.inputs[0]] + [t for t in node.inputs[2:3] if t.name]  # the current, the residual if any
        available = [blocked.get(t.name) for t in tensors]
        if required is not None and key is not None:
            if key not in required:
                continue  # the middle step runs it NCHW: its membrane is NCHW
            channels = required[key]
            if any(a is not None and a[1] != channels for a in available):
                raise RuntimeError(f"{node.name}: blocked channels disagree with the middle step's")
        else:
            known = {a[1] for a in available if a is not None}
            missing = sum(a is None for a in available)
            if not known:  # channels from the static shape, as a ReorderOutput would say them
                shape = (shapes or {}).get(tensors[0].name)
                if shape and len(shape) == 4 and isinstance(shape[1], int) and shape[1] % block == 0:
                    known = {shape[1]}
            # Blocked when its inputs are; or when one input is not but a convolution reads the
            # spikes: the reorder moves from the spikes to that input (e.g. the first neuron, fed
            # by the static prologue), and the residuals that read these spikes can run blocked.
            if len(known) != 1 or (missing and (missing > 1 or not _read_blocked(node.outputs[0]))):
                continue
            channels = known.pop()
        for i, (t, a) in enumerate(zip(tensors, available)):
            if a is None:  # reorder the input into the layout (once per tensor)
                reorder = next((r for r in t.outputs if _is(r, "ReorderInput")), None)
                if reorder is None:
                    reorder = gs.Node("ReorderInput", name=f"{t.name}/reorder", domain=NCHWC_DOMAIN,
                                      attrs={"channels_last": 0}, inputs=[t],
                                      outputs=[gs.Variable(f"{t.name}/nchwc", dtype=np.float32)])
                    graph.nodes.append(reorder)
                a = (reorder.outputs[0], channels)
                blocked[t.name] = a
            node.inputs[0 if i == 0 else 2] = a[0]
        spikes = node.outputs[0]
        twin = gs.Variable(f"{spikes.name}/nchwc", dtype=np.float32)
        node.outputs[0] = twin
        blocked[spikes.name] = (twin, channels)
        spikes_moved.append((spikes, twin, channels))
        if key is not None:
            decisions[key] = channels
        moved += 1
    for spikes, twin, channels in spikes_moved:
        for reader in list(spikes.outputs):
            if _is(reader, "ReorderInput"):
                out = reader.outputs[0]
                for consumer in list(out.outputs):
                    consumer.inputs[consumer.inputs.index(out)] = twin
                for i, o in enumerate(graph.outputs):
                    if o is out:  # keep the graph output's name
                        graph.nodes.append(gs.Node("Identity", inputs=[twin], outputs=[out]))
                reader.outputs.clear()
                reader.inputs.clear()
        if spikes.outputs or spikes in graph.outputs:
            graph.nodes.append(gs.Node("ReorderOutput", name=f"{spikes.name}/reorder", domain=NCHWC_DOMAIN,
                                       attrs={"channels": channels, "channels_last": 0},
                                       inputs=[twin], outputs=[spikes]))
    if moved:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return decisions, moved
