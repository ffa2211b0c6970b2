"""onnxruntime sessions, made one way for the whole package: the runtime's step graphs, the
verification's reference and SNN, the benchmarks. Threads never spin (a spinning pool steals the
cores other sessions and processes need), the optimization level is named (``OPT_LEVELS``), and an
onnxruntime failure becomes one line (``onnxruntime_errors``). Also the batching a model's declared
batch size imposes (``declared_batch``, ``padded_batches``).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import onnx

from pmsm_compiler.errors import InputError

OPT_LEVELS = ("disable", "basic", "extended", "all")


_SHARED_ARENA = {"registered": False}


def _register_shared_cpu_arena() -> bool:
    """One CPU memory arena for every session that asks for it (the SNN's step variants), instead
    of one arena each: the same speed at about half the peak memory (docs/benchmarks.md)."""
    import onnxruntime as ort

    if not _SHARED_ARENA["registered"]:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _SHARED_ARENA["registered"] = True
        except Exception:  # noqa: BLE001 - an older onnxruntime without env allocators: keep per-session arenas
            return False
    return True


def make_session(model, opt_level: str = "all", providers=None, threads: int = 0, shared_arena: bool = False,
                 priority_order: bool = False, custom_ops_library: str | None = None, qdq_fusion: bool = True,
                 profile_prefix: str | None = None, optimized_model_path: str | None = None,
                 prepack: bool = True, initializers: dict | None = None, weights_folder: str | None = None):
    """An onnxruntime session without thread spinning, at ``opt_level`` (a name of ``OPT_LEVELS``, or
    an ``onnxruntime.GraphOptimizationLevel``).

    priority_order: execute in onnxruntime's priority-based topological order (Kahn's algorithm,
    lowest node index first) instead of its default reverse depth-first order. For an SNN step the
    default runs every neuron's reset and spike count after the whole forward chain, so each layer's
    membrane and spikes are read back from main memory at the end; the priority order runs them
    right after the layer's firing, while the tensors are still in cache. Same kernels, same
    results; the execution order changes no arithmetic.

    custom_ops_library: a custom-op library to register (the fused neuron kernels,
    ``pmsm_compiler.kernels``).

    qdq_fusion: False keeps QuantizeLinear/DequantizeLinear as float-simulation ops (the model's
    ONNX semantics) instead of letting onnxruntime fuse them into integer kernels.

    profile_prefix: record onnxruntime's per-node trace (``SessionOptions.enable_profiling``) into a
    JSON file whose path starts with this prefix; ``session.end_profiling()`` writes it and returns
    the path.

    optimized_model_path: onnxruntime writes the graph it optimized there (what it will run), its
    initializers of 1 KiB or more in a data file beside it (``<name>.data``), so that the graph
    loads without them.

    prepack: False leaves the weights as they are (``session.disable_prepacking``): no prepacked
    copy, slower kernels; for a session built only for its ``optimized_model_path``.

    A ModelProto reaches onnxruntime as its skeleton plus its large initializers as arrays
    (``pmsm_compiler.weights.split``; the same session, without serializing the weights, and at
    any size). initializers: the arrays of a model that is already such a skeleton ({name:
    array}, e.g. shared by several sessions of models derived from one split); only the names
    the model references are used.

    weights_folder: the folder of the files that a ModelProto's (or serialized model's)
    external-data references name (``weights.file_references``): onnxruntime maps them from there
    instead of being handed arrays. (A model given as a path finds its files beside it.)
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if priority_order:
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    cpu = (providers or ["CPUExecutionProvider"])[0] == "CPUExecutionProvider"
    if shared_arena and cpu and _register_shared_cpu_arena():
        so.add_session_config_entry("session.use_env_allocators", "1")
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so.graph_optimization_level = levels[opt_level] if isinstance(opt_level, str) else opt_level
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not qdq_fusion:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        so.intra_op_num_threads = threads
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    os.path.basename(optimized_model_path) + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    if weights_folder and not isinstance(model, (str, os.PathLike)):
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", weights_folder)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.log_severity_level = 4  # fatal only: a failure raises, and the tools print it as their one error line
    if custom_ops_library:
        so.register_custom_ops_library(custom_ops_library)
    values = []
    if isinstance(model, onnx.ModelProto):
        from pmsm_compiler import weights

        if initializers is None:
            model, initializers = weights.split(model)
        names = weights.in_memory_names(model)
        if names:
            # onnxruntime copies each array into its graph while it loads; the arrays must live until then
            values = [ort.OrtValue.ortvalue_from_numpy(initializers[n]) for n in names]
            so.add_external_initializers(names, values)
        model = model.SerializeToString()
    session = ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])
    del values
    return session


def write_optimized_model(model, path: str, opt_level: str = "all", providers=None, **options) -> None:
    """onnxruntime's optimized graph of ``model`` written to ``path`` (``make_session``'s
    ``optimized_model_path``, the weights in a data file beside it), by a session built for that
    alone and freed at once: onnxruntime as a graph optimizer. ``options``: ``make_session``'s, as
    the session that will run the graph gets them; the weights are not prepacked (prepacking comes
    after the graph is optimized and written: it changes nothing written)."""
    make_session(model, opt_level, providers, optimized_model_path=path, prepack=False, **options)


@contextlib.contextmanager
def onnxruntime_errors(what: str):
    """Turn an onnxruntime failure inside the block into InputError("onnxruntime cannot run
    <what>: <its message>"), one line."""
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    failures = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
    package = os.path.dirname(onnxruntime.__file__)
    try:
        yield
    except (*failures, RuntimeError) as exc:
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        # run_with_iobinding reports a failed run as a plain RuntimeError: only those raised in onnxruntime
        if not isinstance(exc, failures) and not tb.tb_frame.f_code.co_filename.startswith(package):
            raise
        message = " ".join(str(exc).split())
        raise InputError(f"onnxruntime cannot run {what}: {message[:300]}") from None


def declared_batch(shape) -> int | None:
    """The fixed batch size of an input shape ([B, ...] with an integer B), or None if dynamic."""
    if shape and isinstance(shape[0], (int, np.integer)) and shape[0] > 0:
        return int(shape[0])
    return None


def padded_batches(x: np.ndarray, batch: int):
    """Yield (batch array of exactly ``batch`` rows, number of real rows): the last batch is padded
    with copies of its last row, for models declared with a fixed batch size."""
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        n = len(xb)
        if n < batch:
            xb = np.concatenate([xb, np.repeat(xb[-1:], batch - n, axis=0)])
        yield xb, n


def run_declared_batches(session, x: np.ndarray, output: int = 0) -> np.ndarray:
    """One output of a one-input onnxruntime session on ``x``, in batches of the input's declared
    batch size when it has a fixed one (padding dropped), else in one run."""
    arg = session.get_inputs()[0]
    batch = declared_batch(arg.shape)
    if batch is None or len(x) == batch:
        return session.run(None, {arg.name: x})[output]
    return np.concatenate([session.run(None, {arg.name: xb})[output][:n] for xb, n in padded_batches(x, batch)])
