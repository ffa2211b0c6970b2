"""optimized_step: a CPU step session built from onnxruntime's own optimized step graph.

onnxruntime optimizes the step graph (level "all": constant folding, Conv fusions, the blocked
NCHWc layout); the runtime then rewrites what that left around the fused neuron kernels
(``absorb_neighbours``: elementwise neighbours into the neuron; ``blocked_layout``: no layout
conversions around it) and runs the rewritten graph with onnxruntime's optimizations off, so every
other kernel is the one onnxruntime chose, on the same weights: only the neurons' neighbours
change, into operations that are bit-identical (see both modules). Where nothing is rewritten,
the first session is the one used.

The optimized graph comes from ``SessionOptions.optimized_model_filepath`` (onnxruntime writes
it while it builds the session) into a temporary folder, in memory where the system has one
(/dev/shm), with the weights in a data file beside it: the rewrite reads the graph alone, writes
the rewritten graph beside the same data file, and the second session loads both from there. (The
weights never pass through protobuf again: for VGG-16, 128 MiB, the rewrite adds about 0.15 s to
a step session's 0.8 s instead of 4 s.)
"""

from __future__ import annotations

import os
import tempfile

import onnx
import onnx_graphsurgeon as gs

from .absorb_neighbours import absorb_neighbours
from .blocked_layout import NCHWC_DOMAIN, blocked_layout

_BLOCK: dict = {}


def nchwc_block() -> int | None:
    """onnxruntime's NCHWc channel block on this CPU (the channels ``ReorderInput`` pads a
    four-channel tensor to: it takes multiples of 4, the block is 8 or 16), or None when it has no
    NCHWc kernels."""
    if "block" not in _BLOCK:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC_DOMAIN, channels_last=0)], "block",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid(NCHWC_DOMAIN, 1)])
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4
        try:
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            block = int(sess.run(None, {"x": np.ones([1, 4, 1, 1], np.float32)})[0].shape[1])
        except Exception:  # noqa: BLE001 - no NCHWc kernels in this build or on this CPU
            block = None
        _BLOCK["block"] = block if block and block > 1 else None
    return _BLOCK["block"]


def _without_weight_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its large initializers reduced to their type and dims: what shape inference
    reads of them, without copying the weights."""
    graph = model.graph
    light = onnx.GraphProto(name=graph.name, node=graph.node, input=graph.input, output=graph.output,
                            value_info=graph.value_info, sparse_initializer=graph.sparse_initializer)
    from pmsm_compiler.weights import strippable

    for init in graph.initializer:
        if strippable(init):  # not ``ByteSize()``: it serializes the tensor to size it
            light.initializer.append(onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims))
        else:
            light.initializer.append(init)
    out = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, graph=light,
                          functions=model.functions)
    return out


def static_shapes(model: onnx.ModelProto) -> dict:
    """{tensor name: [dim value, or symbol, or None]} from ONNX shape inference (functions included)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weight_data(model))
    except Exception:  # noqa: BLE001 - no shapes: nothing is absorbed that needs one
        return {}
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return shapes


def optimized_step_session(model: bytes | onnx.ModelProto, shapes: dict, states, required: dict | None, make,
                           optimize, profiling: bool = False):
    """(session, decisions, rewrites) for ``model`` (the step graph with fused neuron kernels,
    serialized or not, at any size: its weights reach onnxruntime as arrays, and the optimized
    graph is rewritten without them).

    make(model, opt_level, profile=False): builds the session that runs, with the runtime's options
    (``profile``: with its per-node trace, when ``profiling``); optimize(model, path): writes
    onnxruntime's optimized graph of ``model`` to ``path`` with the same options
    (``pmsm_compiler.sessions.write_optimized_model``). ``shapes``: ``static_shapes`` of the step
    before kernel fusion; ``states``, ``required``: as ``blocked_layout``. decisions: {state input:
    channels} of the neurons that run blocked; rewrites: {"absorbed_ops": n, "blocked_layers": n}.
    """
    with tempfile.TemporaryDirectory(prefix="pmsm_step_", dir=_memory_folder(model)) as tmp:
        path = os.path.join(tmp, "step.optimized.onnx")
        optimize(model, path)
        optimized = onnx.load(path, load_external_data=False)
        graph = gs.import_onnx(optimized)
        absorbed = absorb_neighbours(graph, shapes)
        block = nchwc_block()
        decisions, moved = blocked_layout(graph, block, states, required, shapes) if block else ({}, 0)
        rewrites = {"absorbed_ops": absorbed, "blocked_layers": moved}
        if not absorbed and not moved:  # onnxruntime's own graph, as it optimizes it
            return make(model, "all", profile=profiling), decisions, rewrites
        out = gs.export_onnx(graph)  # the weights stay references to the data file
        out.ir_version = optimized.ir_version
        rewritten = os.path.join(tmp, "step.rewritten.onnx")
        onnx.save(out, rewritten)
        return make(rewritten, "disable", profile=profiling), decisions, rewrites


def _memory_folder(model: onnx.ModelProto | bytes | None = None) -> str | None:
    """/dev/shm when it is a writable folder (a file system in memory) with room for ``model``'s
    weights twice over (onnxruntime writes them, perhaps in a larger layout, beside the optimized
    graph) and 16 MiB more, else the default temporary folder: a container's /dev/shm is often
    64 MiB, and a full one would fail the session."""
    from pmsm_compiler.weights import weight_bytes

    shm = "/dev/shm"
    if not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        return None
    need = len(model) if isinstance(model, bytes) else weight_bytes(model) if model is not None else 0
    try:
        stats = os.statvfs(shm)
    except OSError:
        return None
    return shm if stats.f_bavail * stats.f_frsize >= 2 * need + (16 << 20) else None
