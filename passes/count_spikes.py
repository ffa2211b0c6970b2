"""count_spikes: per-layer spike counts inside the graph, so the runtime reads counts, not spikes.

Two outputs, both int64 and exact:

- ``pmsm_spike_counts`` [batch, layers]: count = Σ_neurons |k| per sample and layer (column order =
  the layer order in the metadata, ``count_index``). The sum is taken in float32 (Abs +
  ReduceSum) when it is exact, i.e. when neurons · max|k| < 2^24 so that every partial sum is an
  exactly representable integer; otherwise the spikes are cast to int64 first.
- ``pmsm_spike_counters`` [batch, layers, counters]: every counting rule of
  ``pmsm_compiler.ops.counters`` (spikes, events, positive, negative, at the lower cap, at the
  upper cap, at zero; order ``COUNTERS``, recorded in the metadata as ``counters``), one
  ``pmsm::SpikeCounters`` node per layer. It sums in the spikes' type: float32 under the same
  exactness condition, the spikes cast to int64 otherwise.

The first output stays as it was (models compiled before the counters have only it); the runtime
fuses each neuron with both counts into one kernel (``fuse_neuron_kernels``).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from pmsm_compiler.ops import DOMAIN
from pmsm_compiler.ops.counters import COUNTERS, float_sums_exact
from pmsm_compiler.snn_format import COUNTERS_OUTPUT, COUNTS_OUTPUT

from .graph_utils import fresh, make_const, numel, static_shape

FLOAT_EXACT_LIMIT = 2 ** 24


def count_spikes(graph: gs.Graph, ctx) -> gs.Graph:
    tensors = graph.tensors()
    columns = []
    for layer in ctx.layers:
        spikes = tensors[layer.spike_tensor]
        shape = static_shape(spikes)
        if shape is None:
            shape = static_shape(ctx.neuron_nodes[layer.name].inputs[0])
        layer.shape = list(shape) if shape else None
        layer.neurons = numel(shape) if shape else None
        max_k = max(abs(layer.s_min), abs(layer.s_max))
        flat = gs.Variable(fresh(graph, f"{layer.name}.flat_spikes"), dtype=np.float32)
        graph.nodes.append(gs.Node("Flatten", name=fresh(graph, f"{layer.name}/flatten_spikes"),
                                   attrs={"axis": 1}, inputs=[spikes], outputs=[flat]))
        axes = make_const(graph, "pmsm_axis1", np.array([1], dtype=np.int64), dtype=np.int64)
        count = gs.Variable(fresh(graph, f"{layer.name}.spike_count"), dtype=np.float32)
        if layer.neurons is not None and layer.neurons * max_k < FLOAT_EXACT_LIMIT:
            # Abs + ReduceSum: onnxruntime's vectorized kernels are faster than its ReduceL1;
            # non-negative spikes (IF, or AIF with s_min = 0) need no Abs at all.
            mag = flat
            if layer.s_min < 0:
                mag = gs.Variable(fresh(graph, f"{layer.name}.spikes_abs"), dtype=np.float32)
                graph.nodes.append(gs.Node("Abs", name=fresh(graph, f"{layer.name}/magnitude"), inputs=[flat],
                                           outputs=[mag]))
            graph.nodes.append(gs.Node("ReduceSum", name=fresh(graph, f"{layer.name}/count"),
                                       attrs={"keepdims": 1}, inputs=[mag, axes], outputs=[count]))
            layer.count_dtype = "float32-exact"
        else:
            as_int = gs.Variable(fresh(graph, f"{layer.name}.spikes_int"), dtype=np.int64)
            mag = gs.Variable(fresh(graph, f"{layer.name}.spikes_abs"), dtype=np.int64)
            count = gs.Variable(count.name, dtype=np.int64)
            graph.nodes += [
                gs.Node("Cast", attrs={"to": 7}, inputs=[flat], outputs=[as_int]),
                gs.Node("Abs", inputs=[as_int], outputs=[mag]),
                gs.Node("ReduceSum", name=fresh(graph, f"{layer.name}/count"), attrs={"keepdims": 1},
                        inputs=[mag, axes], outputs=[count]),
            ]
            layer.count_dtype = "int64"
        columns.append(count)
    if all(c.dtype == np.float32 for c in columns):
        cat = gs.Variable(fresh(graph, "pmsm_spike_counts_f"), dtype=np.float32)
        graph.nodes.append(gs.Node("Concat", attrs={"axis": 1}, inputs=columns, outputs=[cat]))
        out = gs.Variable(COUNTS_OUTPUT, dtype=np.int64, shape=["batch", len(columns)])
        graph.nodes.append(gs.Node("Cast", attrs={"to": 7}, inputs=[cat], outputs=[out]))
    else:
        ints = []
        for c in columns:
            if c.dtype == np.float32:
                ci = gs.Variable(fresh(graph, c.name + "_i64"), dtype=np.int64)
                graph.nodes.append(gs.Node("Cast", attrs={"to": 7}, inputs=[c], outputs=[ci]))
                ints.append(ci)
            else:
                ints.append(c)
        out = gs.Variable(COUNTS_OUTPUT, dtype=np.int64, shape=["batch", len(columns)])
        graph.nodes.append(gs.Node("Concat", attrs={"axis": 1}, inputs=ints, outputs=[out]))
    for i, layer in enumerate(ctx.layers):
        layer.count_index = i
    graph.outputs.append(out)
    ctx.spike_counts_output = COUNTS_OUTPUT
    _add_counters(graph, ctx, tensors)
    return graph


def _add_counters(graph: gs.Graph, ctx, tensors) -> None:
    """One ``pmsm::SpikeCounters`` per layer → ``pmsm_spike_counters`` int64 [batch, layers, counters]."""
    rows = []
    axis1 = make_const(graph, "pmsm_axis1", np.array([1], dtype=np.int64), dtype=np.int64)
    for layer in ctx.layers:
        spikes = tensors[layer.spike_tensor]
        s_min, s_max = int(layer.s_min), int(layer.s_max)
        source = spikes
        if float_sums_exact(layer.neurons, s_min, s_max, FLOAT_EXACT_LIMIT):
            layer.counters_dtype = "float32-exact"
        else:
            source = gs.Variable(fresh(graph, f"{layer.name}.spikes_int64"), dtype=np.int64)
            graph.nodes.append(gs.Node("Cast", name=fresh(graph, f"{layer.name}/spikes_to_int64"),
                                       attrs={"to": 7}, inputs=[spikes], outputs=[source]))
            layer.counters_dtype = "int64"
        counters = gs.Variable(fresh(graph, f"{layer.name}.spike_counters"), dtype=np.int64,
                               shape=[spikes.shape[0] if spikes.shape else "batch", len(COUNTERS)])
        graph.nodes.append(gs.Node("SpikeCounters", name=fresh(graph, f"{layer.name}/counters"), domain=DOMAIN,
                                   attrs={"s_min": s_min, "s_max": s_max}, inputs=[source], outputs=[counters]))
        row = gs.Variable(fresh(graph, f"{layer.name}.spike_counters_row"), dtype=np.int64)
        graph.nodes.append(gs.Node("Unsqueeze", inputs=[counters, axis1], outputs=[row]))
        rows.append(row)
    out = gs.Variable(COUNTERS_OUTPUT, dtype=np.int64, shape=["batch", len(rows), len(COUNTERS)])
    graph.nodes.append(gs.Node("Concat", name=fresh(graph, "pmsm_spike_counters/concat"), attrs={"axis": 1},
                               inputs=rows, outputs=[out]))
    graph.outputs.append(out)
    ctx.counters_output = COUNTERS_OUTPUT

