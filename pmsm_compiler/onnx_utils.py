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


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``gs.import_onnx(model)``, detached from ``model``. onnx-graphsurgeon keeps the model's own
    ``opset_import`` (and each function's) as the graph's ``import_domains``, and its exporter
    appends every domain the graph's nodes use there: exporting a rewritten graph added the new
    domains to the model it was imported from (the verification's fused kernels wrote an import
    of 'pmsm.kernels' into the compiled SNN it verified, and so into the file written)."""
    graph = gs.import_onnx(model)
    for g in [graph, *graph.functions]:
        if g.import_domains is not None:
            g.import_domains = [helper.make_opsetid(o.domain, o.version) for o in g.import_domains]
    return graph


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
