"""Verification: the SNN at T = 1 against the quantized ANN, in the same engine and level.

Both models run in onnxruntime at the same graph-optimization level on the same inputs. Per neuron
layer the quantization levels are compared exactly (ANN: k = rint(y / s_out); SNN: the emitted
spike counts k); for the network outputs the max |difference| and the top-1 agreement are reported.

Policy (documented in docs/report-schema.md):
- ``exact`` mode claims bit-identity: passed only if every AIF layer agrees on every level and the
  outputs are identical (max_abs_diff == 0);
- ``folded`` mode re-associates float sums (θ folded into weights), so rare level flips are
  expected; a flip early in the network moves the inputs of later layers, so the per-layer rates
  grow with depth (they are all reported). Passed if the mismatch rate over all AIF levels is
  ≤ ``max_level_mismatch`` (default 1e-2) and the top-1 agreement ≥ ``min_top1_agreement``
  (default 0.98).
QCFS layers (binary IF neurons) are lossy at T = 1 by design (Bu et al. 2022): they are reported
but excluded from the pass/fail policy, and so are the outputs of a model that contains them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from pmsm_compiler.errors import InputError
from pmsm_compiler.limits import MAX_TENSOR_BYTES, format_bytes

OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass
class VerificationPolicy:
    max_level_mismatch: float = 1e-2
    min_top1_agreement: float = 0.98


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
                 priority_order: bool = False, custom_ops_library: str | None = None):
    """An onnxruntime session without thread spinning.

    priority_order: execute in onnxruntime's priority-based topological order (Kahn's algorithm,
    lowest node index first) instead of its default reverse depth-first order. For an SNN step the
    default runs every neuron's reset and spike count after the whole forward chain, so each layer's
    membrane and spikes are read back from main memory at the end; the priority order runs them
    right after the layer's firing, while the tensors are still in cache. Same kernels, same
    results; the execution order changes no arithmetic.

    custom_ops_library: a custom-op library to register (the fused neuron kernels,
    ``pmsm_compiler.kernels``).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if priority_order:
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    cpu = (providers or ["CPUExecutionProvider"])[0] == "CPUExecutionProvider"
    if shared_arena and cpu and _register_shared_cpu_arena():
        so.add_session_config_entry("session.use_env_allocators", "1")
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 4  # fatal only: a failure raises, and the tools print it as their one error line
    if custom_ops_library:
        so.register_custom_ops_library(custom_ops_library)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, so, providers=providers or ["CPUExecutionProvider"])


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


def check_runs(model: onnx.ModelProto, x: np.ndarray, opt_level: str = "all", what: str = "the model") -> None:
    """InputError (one line) unless onnxruntime runs ``model`` on ``x``. The ONNX checker and
    shape inference accept some models onnxruntime refuses at run time (a Conv kernel_shape that
    contradicts its weight, a pooling window larger than its input)."""
    with onnxruntime_errors(what):
        session = make_session(model, opt_level)
        session.run(None, {session.get_inputs()[0].name: x})


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


def initial_state_feeds(info: dict, session) -> dict:
    ranks = {i.name: len(i.shape) for i in session.get_inputs()}
    return {s["input"]: np.full([1] * ranks[s["input"]], s["init"], np.float32) for s in info["states"]}


def input_dtype(spec: dict) -> np.dtype:
    """The numpy dtype of a compiled model's data input (``info["inputs"][i]``); InputError for an
    element type numpy has no native type for (e.g. bfloat16)."""
    name = spec.get("dtype") or "float"  # models compiled before the dtype was recorded: float
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(TensorProto.DataType.Value(name.upper())))
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "fiub":
        raise InputError(f"the model's input '{spec['name']}' has element type {name}; the tools feed "
                         f"float16/32/64, integer or bool inputs")
    return dtype


def random_inputs(info: dict, samples: int, seed: int = 0) -> np.ndarray:
    """Seeded random inputs of the model input's element type: floats standard normal (float64
    draws rounded to the type), integers uniform over the type's whole range, bools fair coins.

    Refused before allocating, in one line: an input without a static per-sample shape, an
    element type without a numpy type, and an array over ``limits.MAX_TENSOR_BYTES``.
    """
    spec = info["inputs"][0]
    shape = spec["shape"]
    if shape is None or any(not isinstance(d, int) for d in shape[1:]):
        raise InputError("the model input has no static per-sample shape; give --calibration-data")
    dtype = input_dtype(spec)
    dims = tuple(shape[1:])
    nbytes = samples * int(np.prod(dims, dtype=object)) * dtype.itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise InputError(f"random verification inputs for input '{spec['name']}' of shape {shape} ({dtype}): "
                         f"{samples:,} samples need {format_bytes(nbytes)}, over the limit of "
                         f"{format_bytes(MAX_TENSOR_BYTES)}; use fewer samples or calibration data")
    rng = np.random.default_rng(seed)
    out = np.empty((samples, *dims), dtype)
    if dtype.kind == "f":
        for i in range(samples):  # one sample at a time: the same stream as one call, without a float64 copy
            out[i] = rng.standard_normal(dims)
    elif dtype.kind == "b":
        out[...] = rng.integers(0, 2, size=out.shape, dtype=np.uint8).astype(bool)
    else:
        limits = np.iinfo(dtype)
        out[...] = rng.integers(limits.min, limits.max, size=out.shape, dtype=dtype, endpoint=True)
    return out


def verify(ann: onnx.ModelProto, compiled, x: np.ndarray, opt_level: str = "all", mode: str | None = None,
           policy: VerificationPolicy | None = None, batch_size: int = 32, data_label: str = "random") -> dict:
    info = compiled.info
    mode = mode or info["mode"]
    policy = policy or VerificationPolicy()
    layers = info["layers"]
    outputs = info["outputs"]
    ann_sess = make_session(with_outputs(ann, [l["ann_output"] for l in layers]), opt_level)
    snn_sess = make_session(with_outputs(compiled.model, [l["spike_tensor"] for l in layers]), opt_level)
    input_name = info["inputs"][0]["name"]
    states = initial_state_feeds(info, snn_sess)
    ann_names = [o.name for o in ann_sess.get_outputs()]
    snn_names = [o.name for o in snn_sess.get_outputs()]
    agree = np.zeros(len(layers), np.int64)
    total = np.zeros(len(layers), np.int64)
    max_abs = 0.0
    top1_same = 0
    top1_compared = 0  # top-1 applies only to a [batch, classes] first output
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        feeds = {input_name: xb, **states}
        if info.get("time_input"):
            feeds[info["time_input"]] = np.ones([1], np.float32)
        a = dict(zip(ann_names, ann_sess.run(None, {input_name: xb})))
        s = dict(zip(snn_names, snn_sess.run(None, feeds)))
        for j, layer in enumerate(layers):
            y = a[layer["ann_output"]]
            k = s[layer["spike_tensor"]]
            if layer["neuron"] == "AIF":
                k_ann = np.rint(y / np.float32(layer["ann_post_scale"]))
                same = k_ann == k
            else:  # IF: compare the real outputs, informational only
                same = np.abs(y - k * np.float32(layer["theta_out"])) <= 1e-6 * max(1.0, layer["theta_out"])
            agree[j] += int(same.sum())
            total[j] += same.size
        for name in outputs:
            diff = np.abs(a[name].astype(np.float64) - s[name].astype(np.float64))
            max_abs = max(max_abs, float(diff.max()) if diff.size else 0.0)
        first = outputs[0]
        if a[first].ndim == 2:
            top1_same += int((a[first].argmax(1) == s[first].argmax(1)).sum())
            top1_compared += len(xb)
    n = len(x)
    per_layer = []
    for j, layer in enumerate(layers):
        rate = float(agree[j] / total[j]) if total[j] else 1.0
        per_layer.append({"name": layer["name"], "neuron": layer["neuron"], "level_agreement": rate,
                          "mismatches": int(total[j] - agree[j]), "compared": int(total[j]),
                          "in_policy": layer["neuron"] == "AIF"})
    lossless = [p for p in per_layer if p["in_policy"]]
    overall = (sum(p["compared"] - p["mismatches"] for p in lossless) / max(1, sum(p["compared"] for p in lossless))
               if lossless else None)
    top1 = top1_same / top1_compared if top1_compared else None
    has_if = any(l["neuron"] == "IF" for l in layers)
    failures = []
    if mode == "exact":
        for p in lossless:
            if p["mismatches"]:
                failures.append(f"layer {p['name']}: {p['mismatches']} level mismatch(es)")
        if not has_if and max_abs != 0.0:
            failures.append(f"outputs differ (max |diff| = {max_abs:.3g})")
    else:
        if overall is not None and 1 - overall > policy.max_level_mismatch:
            failures.append(f"level mismatch rate {1 - overall:.2e} > {policy.max_level_mismatch:g}")
        if not has_if and top1 is not None and top1 < policy.min_top1_agreement:
            failures.append(f"top-1 agreement {top1:.4f} < {policy.min_top1_agreement:g}")
    return {
        "passed": not failures, "skipped": False, "failures": failures, "mode": mode, "opt_level": opt_level,
        "samples": n, "data": data_label, "policy": asdict(policy) if mode == "folded" else {"exact": True},
        "level_agreement": overall, "top1_agreement": top1, "max_abs_diff": max_abs,
        "lossy_layers_excluded": has_if, "layers": per_layer,
    }
