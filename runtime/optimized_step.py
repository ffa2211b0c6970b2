"""optimized_step: a CPU step session built from onnxruntime's own optimized step graph.

onnxruntime optimizes the step graph (level "all": constant folding, Conv fusions, the blocked
NCHWc layout); the runtime then rewrites what that left around the fused neuron kernels
(``absorb_neighbours``: elementwise neighbours into the neuron) and runs the rewritten graph with
onnxruntime's optimizations off, so every other kernel is the one onnxruntime chose, on the same
weights: only the neurons' neighbours change, into operations that are bit-identical. Where
nothing is rewritten, the first session is the one used.

The optimized graph comes from ``SessionOptions.optimized_model_filepath`` (onnxruntime writes
it while it builds the session), into a temporary folder.
"""

from __future__ import annotations

import os
import tempfile

import onnx
import onnx_graphsurgeon as gs

from .absorb_neighbours import absorb_neighbours

# protobuf cannot serialize a model of 2 GiB or more in one piece
MAX_MODEL_BYTES = 1 << 30


def static_shapes(model: onnx.ModelProto) -> dict:
    """{tensor name: [dim value, or symbol, or None]} from ONNX shape inference (functions included)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no shapes: nothing is absorbed that needs one
        return {}
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return shapes


def optimized_step_session(model: onnx.ModelProto, shapes: dict, states, required: dict | None, make,
                           profiling: bool = False):
    """(session, decisions, rewrites) for ``model`` (the step graph with fused neuron kernels).

    make(model, opt_level, optimized_model_path=None, profile=False): builds a session with the
    runtime's options (``profile``: with its per-node trace, when ``profiling``). ``shapes``:
    ``static_shapes`` of the step before kernel fusion; ``states``, ``required``: as
    ``blocked_layout``. decisions: {state input: channels} of the neurons that run blocked;
    rewrites: {"absorbed_ops": n, "blocked_layers": n}.
    """
    if model.ByteSize() > MAX_MODEL_BYTES:
        if required:
            raise RuntimeError("the middle step runs neurons blocked, this variant is too large to rewrite")
        return make(model, "all", profile=profiling), {}, {"absorbed_ops": 0, "blocked_layers": 0}
    with tempfile.TemporaryDirectory(prefix="pmsm_step_") as tmp:
        path = os.path.join(tmp, "step.optimized.onnx")
        first = make(model, "all", optimized_model_path=path)
        optimized = onnx.load(path)
    graph = gs.import_onnx(optimized)
    absorbed = absorb_neighbours(graph, shapes)
    decisions, moved = {}, 0
    rewrites = {"absorbed_ops": absorbed, "blocked_layers": moved}
    if not absorbed and not moved:
        return (make(model, "all", profile=True) if profiling else first), decisions, rewrites
    del first
    out = gs.export_onnx(graph)
    out.ir_version = optimized.ir_version
    return make(out, "disable", profile=profiling), decisions, rewrites
