"""absorb_neighbours: the elementwise ops onnxruntime leaves around a fused neuron run inside it.

Runs on onnxruntime's *optimized* step graph (``runtime/optimized_step.py``), after its own fusions,
so it only takes what onnxruntime kept as separate kernels, each a full pass over memory::

    folded residual   C = Add(X, Mul(R, r))   →  neuron(X, U, R; res_scale = r)
    exact mode        C = Div(X, θ)           →  neuron(X, U; in_div = θ)        (or Mul(X, m): in_mul)
                      C = Div(Add(X, R), θ)   →  neuron(X, U, R; in_div = θ)
                      out = Mul(K, θ)         →  the neuron's spikes output is k·θ (out_mul = θ)
    counters          Unsqueeze(counters, [1]) → the kernel writes its counters as [N, 1, 7] (counters_row)

r, θ, m: one-element float32 constants, kept exactly (a float attribute is float32). The kernel
(``pmsm_compiler/kernels/neurons.c``) computes, per element and in this order, the same IEEE
float32 operations as the stock kernels it replaces: t = R·r; C = X + t; C = C / θ; then the
neuron on C; and k·θ for the output (counts are of k). Add and Mul are commutative in IEEE
arithmetic, so either operand order of the replaced node is the same operation; Div is taken only
as Div(tensor, constant). Results are bit-identical.

A residual is absorbed only when both operands of the Add have one static shape (``shapes``, from
ONNX shape inference on the step model before onnxruntime: no broadcasting), and every absorbed
intermediate has no other reader. The kernel checks the residual's shape again when it runs.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .fuse_neuron_kernels import KERNEL_DOMAIN


def _scalar(tensor) -> float | None:
    """The value of a one-element float32 constant, else None."""
    if not isinstance(tensor, gs.Constant) or tensor.shape is None or int(np.prod(tensor.shape)) != 1:
        return None  # (sized first: a large constant's values may live in a data file not loaded)
    value = tensor.values
    if value.dtype != np.float32 or value.size != 1 or value.ndim > 4:
        return None
    return float(value.reshape(-1)[0])


def _sole_producer(tensor, graph, op: str):
    """The node of type ``op`` producing ``tensor`` if ``tensor`` has exactly one reader and is no
    graph output, else None."""
    if len(tensor.inputs) != 1 or len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    node = tensor.inputs[0]
    return node if node.op == op and node.domain in (None, "", "ai.onnx") else None


def _tensor_and_scalar(node):
    """(tensor operand, constant) of a binary node with one one-element constant operand."""
    a, b = node.inputs
    if _scalar(b) is not None and not isinstance(a, gs.Constant):
        return a, _scalar(b)
    if node.op != "Div" and _scalar(a) is not None and not isinstance(b, gs.Constant):
        return b, _scalar(a)
    return None, None


def _same_static_shape(a, b, shapes: dict) -> bool:
    sa, sb = shapes.get(a.name), shapes.get(b.name)
    return sa is not None and sa == sb and all(d not in (None, "", 0) for d in sa)


def absorb_neighbours(graph: gs.Graph, shapes: dict) -> int:
    """Move the neighbours above into the fused neuron nodes of ``graph`` (in place); returns how
    many ops were absorbed. ``shapes``: {tensor name: [dims]} of the step model before
    onnxruntime (ints, or symbol names); an op whose operands and result do not all have one known
    static shape (no broadcasting) stays as it is."""

    def same(*tensors) -> bool:
        return all(_same_static_shape(tensors[0], t, shapes) for t in tensors[1:])

    def scaled(tensor):
        """(Mul node, tensor operand, constant) if ``tensor`` is Mul(t, constant) read only here."""
        mul = _sole_producer(tensor, graph, "Mul")
        t, value = _tensor_and_scalar(mul) if mul is not None else (None, None)
        return (mul, t, value) if t is not None and same(t, tensor) else None

    absorbed = 0
    for node in [n for n in graph.nodes if n.domain == KERNEL_DOMAIN]:
        # inputs: I, U, then the optional residual and pass (a time-batched step's, runtime/time_batched.py)
        if (len(node.inputs) < 2 or (len(node.inputs) > 2 and node.inputs[2].name)
                or any(k in node.attrs for k in ("in_div", "in_mul", "out_mul", "res_scale"))):
            continue
        current = node.inputs[0]
        pre = _sole_producer(current, graph, "Div")
        if pre is None:
            pre = _sole_producer(current, graph, "Mul")
        if pre is not None:
            x, value = _tensor_and_scalar(pre)
            if x is not None and same(x, current):
                node.attrs["in_div" if pre.op == "Div" else "in_mul"] = value
                node.inputs[0] = current = x
                pre.outputs.clear()
                pre.inputs.clear()
                absorbed += 1
        add = _sole_producer(current, graph, "Add")
        if add is not None and len(add.inputs) == 2 and not any(isinstance(t, gs.Constant) for t in add.inputs):
            x, residual = add.inputs
            if scaled(residual) is None and scaled(x) is not None:
                x, residual = residual, x  # the scaled operand is the residual
            if same(x, residual, current):
                found = scaled(residual)
                if found is not None:
                    mul, residual, node.attrs["res_scale"] = found
                    mul.outputs.clear()
                    mul.inputs.clear()
                    absorbed += 1
                add.outputs.clear()
                add.inputs.clear()
                node.inputs[0] = x
                if len(node.inputs) > 2:
                    node.inputs[2] = residual
                else:
                    node.inputs.append(residual)
                absorbed += 1
        spikes = node.outputs[0]
        if len(spikes.outputs) == 1 and spikes not in graph.outputs:
            post = spikes.outputs[0]
            if post.op == "Mul" and post.domain in (None, "", "ai.onnx"):
                k, value = _tensor_and_scalar(post)
                if k is spikes and same(spikes, post.outputs[0]):
                    node.attrs["out_mul"] = value
                    node.outputs[0] = post.outputs[0]
                    post.outputs.clear()
                    post.inputs.clear()
                    absorbed += 1
        if node.op.startswith(("AIFCounters", "IFCounters", "AIFHalfEvenCounters")):
            counters = node.outputs[-1]
            if len(counters.outputs) == 1 and counters not in graph.outputs:
                unsqueeze = counters.outputs[0]
                axes = unsqueeze.inputs[1] if len(unsqueeze.inputs) > 1 else None
                if (unsqueeze.op == "Unsqueeze" and isinstance(axes, gs.Constant) and list(axes.shape or []) == [1]
                        and list(np.asarray(axes.values).reshape(-1)) == [1]):
                    node.attrs["counters_row"] = 1
                    node.outputs[-1] = unsqueeze.outputs[0]
                    unsqueeze.outputs.clear()
                    unsqueeze.inputs.clear()
                    absorbed += 1
    if absorbed:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return absorbed
