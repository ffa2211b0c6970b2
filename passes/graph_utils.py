"""Small helpers over onnx-graphsurgeon graphs shared by the passes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from pmsm_compiler.onnx_utils import const_value, is_const  # noqa: F401 - the passes import them from here
from pmsm_compiler.ops.temporal import per_sample_dims

INTERNAL_DOMAIN = "pmsm.internal"


class PassRefusal(Exception):
    """A pass cannot transform the graph; the message says why (one line)."""


def scalar_value(tensor) -> float | None:
    value = const_value(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def producer(tensor):
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def consumers(tensor):
    return list(tensor.outputs)


def sole_consumer(tensor, graph):
    """The only consumer of ``tensor`` if it has exactly one and is not a graph output."""
    if tensor in graph.outputs or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def is_weight_shared(tensor, node) -> bool:
    return any(other is not node for other in tensor.outputs)


def const_operand(node):
    """For a binary op with one constant input: (variable input, constant value, const index)."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    va, vb = const_value(a), const_value(b)
    if vb is not None and va is None:
        return a, vb, 1
    if va is not None and vb is None:
        return b, va, 0
    return None


def node_label(node) -> str:
    return f"{node.op} '{node.name}'" if node.name else node.op


def static_shape(tensor):
    """Per-sample shape (dims after the batch axis) as ints, or None if unknown."""
    return per_sample_dims(tensor.shape)


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


_TAKEN = "_pmsm_taken_names"


def forget_names(graph) -> None:
    """Drop the name set ``fresh`` keeps on ``graph`` (the pass manager does, before every pass)."""
    vars(graph).pop(_TAKEN, None)  # vars(): gs.Graph's __getattr__ logs an error for a missing attribute


def fresh(graph, base: str) -> str:
    """A tensor/node name not used in the graph: ``base``, else ``base_1``, ``base_2``, ...

    The graph's tensor and node names are collected once per pass and kept on the graph, with
    every name handed out since added: one walk over the graph per pass instead of one per call
    (quadratic in the nodes: 8 of 9.7 s of a ViT-S compile). A name a pass frees stays taken until
    the next pass, which can only skip a free name, never hand out a used one.
    """
    names = vars(graph).get(_TAKEN)
    if names is None:
        names = vars(graph)[_TAKEN] = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
    name, i = base, 0
    while name in names:
        i += 1
        name = f"{base}_{i}"
    names.add(name)
    return name


#: elements per block of ``times_in_float64``
_BLOCK = 1 << 16


def times_in_float64(w: np.ndarray, factor, *, reciprocal: bool = False, dtype=None) -> np.ndarray:
    """``w · factor`` (``(1 / w) · factor`` with ``reciprocal``) computed in float64 and rounded to
    ``dtype`` (default ``w``'s): the same elementwise operations as
    ``(w.astype(np.float64) * factor).astype(dtype)`` without the float64 copy of the whole weight
    (four times its size in fresh memory: folding VGG-16's 128 MB of weights spent most of its time
    in the page faults of them): one ufunc that casts in numpy's own small buffers, or, for the
    reciprocal (two float64 roundings), a block of rows of ``w`` at a time.

    ``factor``: a scalar or an array that broadcasts to ``w``'s shape (e.g. one value per output
    channel, [C, 1, 1, 1])."""
    w = np.asarray(w)
    factor = np.asarray(factor, dtype=np.float64)
    if w.ndim == 0 or w.size <= _BLOCK or np.broadcast_shapes(w.shape, factor.shape) != w.shape:
        v = w.astype(np.float64)
        return (((1.0 / v) if reciprocal else v) * factor).astype(dtype or w.dtype)
    out = np.empty(w.shape, dtype or w.dtype)
    if not reciprocal:  # one ufunc: numpy casts to float64 and back in its own small buffers
        np.multiply(w, factor, out=out, dtype=np.float64, casting="unsafe")
        return out
    f = np.broadcast_to(factor, w.shape) if factor.ndim else factor
    rows = max(1, _BLOCK // max(1, w[0].size))
    buffer = np.empty((rows, *w.shape[1:]), np.float64)  # one block's float64 values, reused
    for i in range(0, w.shape[0], rows):
        block = w[i:i + rows]
        v = buffer[:len(block)]
        v[...] = block  # exact: every float32 (or float16) is a float64
        np.divide(1.0, v, out=v)
        np.multiply(v, f[i:i + rows] if f.ndim else f, out=v)
        out[i:i + rows] = v
    return out


def replace_constant(node, index: int, new) -> None:
    """``node.inputs[index] = new``, and the values of the constant it replaces dropped once no
    node reads it. (onnx-graphsurgeon's tensors and their node lists form reference cycles, so a
    replaced weight, whose values the fold had read, stayed until the cyclic garbage collector
    ran: ViT-S's folds held a second copy of all its weights, 78 MiB, through the compile.)"""
    old = node.inputs[index]
    node.inputs[index] = new
    if isinstance(old, gs.Constant) and not old.outputs:
        old.values = np.zeros(0, np.float32)  # an orphan: nothing exports or reads it


def make_const(graph, base: str, value, dtype=np.float32) -> gs.Constant:
    return gs.Constant(fresh(graph, base), np.asarray(value, dtype=dtype))


def replace_uses(graph, old, new):
    """Make every consumer of ``old`` (and the graph outputs) read ``new`` instead."""
    for node in list(old.outputs):
        node.inputs = [new if t is old else t for t in node.inputs]
    graph.outputs = [new if t is old else t for t in graph.outputs]
