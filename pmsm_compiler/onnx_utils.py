"""Helpers over ONNX graphs that the compiler passes, the verification and the runtime share; below
all three (it imports none of them)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper


def const_value(tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        node = tensor.inputs[0]
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        for key in ("value_float", "value_int"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        for key in ("value_floats", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
    return None


def is_const(tensor) -> bool:
    """Whether ``const_value(tensor)`` has a value, without reading it: onnx-graphsurgeon keeps
    the values it reads in the constant, so asking ``const_value`` of every weight held a second
    copy of all of them (ViT-S: 78 MiB of the compile's peak)."""
    if isinstance(tensor, gs.Constant):
        return True
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        attrs = tensor.inputs[0].attrs
        return (isinstance(attrs.get("value"), gs.Constant)
                or any(key in attrs for key in ("value_float", "value_int", "value_floats", "value_ints")))
    return False


class _RawDataValues(gs.ir.tensor.LazyValues):
    """onnx-graphsurgeon's lazy values of a large initializer, loaded with one copy instead of
    two (its ``load`` copies ``numpy_helper.to_array``'s array again): a read-only view of the
    tensor's ``raw_data`` bytes. Still ``LazyValues``: an unread constant is exported as its
    original TensorProto."""

    def load(self):
        from pmsm_compiler.weights import array_of

        return array_of(self.tensor)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``gs.import_onnx(model)``, detached from ``model``. onnx-graphsurgeon keeps the model's own
    ``opset_import`` (and each function's) as the graph's ``import_domains``, and its exporter
    appends every domain the graph's nodes use there: exporting a rewritten graph added the new
    domains to the model it was imported from (the verification's fused kernels wrote an import
    of 'pmsm.kernels' into the compiled SNN it verified, and so into the file written)."""
    from pmsm_compiler.weights import NUMPY_TYPES, strippable

    graph = gs.import_onnx(model)
    for t in graph.tensors().values():
        lazy = getattr(t, "_values", None)
        if (type(lazy) is gs.ir.tensor.LazyValues and strippable(lazy.tensor)
                and lazy.tensor.data_type in NUMPY_TYPES):
            t._values = _RawDataValues(lazy.tensor)
    for g in [graph, *graph.functions]:
        if g.import_domains is not None:
            g.import_domains = [helper.make_opsetid(o.domain, o.version) for o in g.import_domains]
    return graph


def export_model(graph: gs.Graph) -> onnx.ModelProto:
    """``gs.export_onnx(graph)`` with the data of its large constants (``weights.STRIP_BYTES`` or
    more, numpy values read by the main graph's nodes) written into the exported graph one tensor
    at a time. onnx-graphsurgeon first builds every initializer (the array's bytes, then a
    TensorProto of them) and then copies them all into the graph: three copies of the weights at
    once. Here the graph is exported with each such constant a plain name, and its initializer
    is appended afterwards from the array's bytes. The constants' consumers are put back, though
    not necessarily in their order (``Tensor.outputs``): for a graph no pass reads again."""
    from pmsm_compiler.weights import NUMPY_TYPES, STRIP_BYTES

    onnx_type = {np.dtype(v): k for k, v in NUMPY_TYPES.items()}
    outputs = {id(t) for t in graph.outputs}
    large = {}
    for node in graph.nodes:
        for t in node.inputs:
            if (isinstance(t, gs.Constant) and id(t) not in outputs and isinstance(t._values, np.ndarray)
                    and t.data_location is None and t.values.nbytes >= STRIP_BYTES and t.export_dtype == t.dtype
                    and t.values.dtype in onnx_type):
                large[t.name] = t
    placeholders = {name: gs.Variable(name) for name in large}
    swapped = []
    for node in graph.nodes:
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant) and large.get(t.name) is t:
                swapped.append((node, i, t))
                node.inputs[i] = placeholders[t.name]
    try:
        model = gs.export_onnx(graph)
    finally:
        for node, i, t in swapped:
            node.inputs[i] = t
    for name, t in large.items():
        init = model.graph.initializer.add()
        init.name, init.data_type = name, onnx_type[t.values.dtype]
        init.dims.extend(t.values.shape)
        init.raw_data = np.ascontiguousarray(t.values).tobytes()
    return model


def with_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the given intermediate tensors."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for name in names:
        if name not in present:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            present.add(name)
    return m


def _io(node) -> tuple[list[str], list[str]]:
    """(input names, output names) of an onnx-graphsurgeon node or an ONNX NodeProto; empty names
    (omitted optional inputs) left out."""
    if isinstance(node, onnx.NodeProto):
        return [n for n in node.input if n], [n for n in node.output if n]
    return [t.name for t in node.inputs if t.name], [t.name for t in node.outputs if t.name]


# The walks below are plain dicts of sets: they are all the graph algorithms the package needs, and
# networkx alone took 0.10-0.13 s to import, a fifth of pmsm-run's start-up (docs/benchmarks.md).

def tensor_flow(nodes, skip=None) -> dict[str, set[str]]:
    """Data flow between tensors (by name): each tensor's successors, the outputs of every node that
    reads it, for every node but those ``skip(node)`` is true for (their outputs do not follow
    their inputs: an op that reads only its input's shape, a consumer a walk stops at)."""
    flow: dict[str, set[str]] = {}
    for node in nodes:
        if skip is not None and skip(node):
            continue
        inputs, outputs = _io(node)
        for i in inputs:
            flow.setdefault(i, set()).update(outputs)
    return flow


def _reach(edges: dict, sources) -> set:
    """Everything reachable from ``sources`` along ``edges`` (node → set of nodes), the sources
    included: one walk from all of them together, each node visited once."""
    reached = set(sources)
    stack = list(reached)
    while stack:
        for succ in edges.get(stack.pop(), ()):
            if succ not in reached:
                reached.add(succ)
                stack.append(succ)
    return reached


def downstream(flow: dict[str, set[str]], sources) -> set[str]:
    """``sources`` and every tensor computed from one of them in ``flow`` (a walk per source was
    quadratic: the SNN's states are sources, one per neuron layer)."""
    return _reach(flow, sources)


def node_dag(nodes, cut=()) -> dict[int, set[int]]:
    """The producers of each node, by index into ``nodes`` (ONNX NodeProtos or graphsurgeon
    nodes), except through the tensors named in ``cut``: producer → consumer edges, stored
    against their direction for ``ancestors``."""
    ios = [_io(n) for n in nodes]
    producer = {out: i for i, (_, outputs) in enumerate(ios) for out in outputs}
    return {j: {producer[name] for name in inputs if name in producer and name not in cut}
            for j, (inputs, _) in enumerate(ios)}


def ancestors(dag: dict[int, set[int]], node: int) -> set[int]:
    """The strict ancestors of ``node`` in ``node_dag``'s graph: every node it depends on."""
    return _reach(dag, dag.get(node, ()))
