"""The pass manager: runs named passes in order and checks the graph after each."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from .graph_utils import PassRefusal, forget_names


@dataclass
class PassContext:
    """What passes share: options, the records of the compiled model's format
    (``pmsm_compiler.snn_format``: neuron layers, states, wrappers) as they are built, the graph
    nodes behind them, and notes for the report."""

    mode: str = "folded"  # "folded" or "exact"
    layers: list = field(default_factory=list)  # [snn_format.NeuronLayer], filled by pqa_to_aif
    # the live neuron node of each layer (by layer name): a graph reference, never in the record
    neuron_nodes: dict = field(default_factory=dict)
    wrappers: list = field(default_factory=list)  # [snn_format.Wrapper]
    # exact mode's output ops of the neurons (k → y, e.g. Cast → DequantizeLinear): linear in k
    # although built from ops that are not (the Cast of an integer level is exact)
    psp_nodes: list = field(default_factory=list)
    # set when a pass replaced a computed constant (a quantized weight, a shape chain) by its value
    constants_evaluated: bool = False
    states: list = field(default_factory=list)  # [snn_format.State]
    notes: list = field(default_factory=list)
    # model-local FunctionProtos a pass made (wrap_nonlinear's mask regions), for the SNN
    functions: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    time_input: str | None = None
    spike_counts_output: str | None = None
    counters_output: str | None = None


def check_graph(graph: gs.Graph, after: str) -> None:
    """Structural invariants: every node input is defined; no dangling or duplicate producers."""
    defined = {t.name for t in graph.inputs}
    produced = set()
    for node in graph.nodes:
        for t in node.inputs:
            if t.name == "" or isinstance(t, gs.Constant):
                continue
            if t.name not in defined and t.name not in produced:
                raise PassRefusal(f"after {after}: node {node.name or node.op} reads undefined tensor '{t.name}'")
        for t in node.outputs:
            if t.name in produced:
                raise PassRefusal(f"after {after}: tensor '{t.name}' produced twice")
            produced.add(t.name)
    for t in graph.outputs:
        if t.name not in produced and t.name not in defined and not isinstance(t, gs.Constant):
            raise PassRefusal(f"after {after}: graph output '{t.name}' is not produced")


class PassManager:
    def __init__(self, passes):
        self.passes = list(passes)

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        for p in self.passes:
            start = time.perf_counter()
            forget_names(graph)  # names the last pass freed are free again
            graph = p(graph, ctx) or graph
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
            check_graph(graph, p.__name__)
            ctx.timings[p.__name__] = round(time.perf_counter() - start, 4)
        return graph
