"""Models below the supported opsets, upgraded by onnx's version converter and checked in onnxruntime.

Models at opset 11 to 14 are common: onnxruntime's ``quantize_static`` keeps the float model's opset
(13 in many of its examples), and torch's legacy exporter defaulted to 14 and below for years. The
compiled SNN needs opset 15 (``limits.MIN_OPSET``: its neuron bodies use CastLike), so such a model
was refused with the command to convert it. ``upgrade`` now converts it the same way,
``onnx.version_converter.convert_version(model, MIN_OPSET)``, on the model's weight-free skeleton
(``weights.skeleton``): the converter never sees the weights, nothing of them is serialized or
copied, and the model keeps its own large initializers under the converted graph. IR version 8 at
least (the first with model-local functions, which the SNN's neurons are).

The converter only promises equal semantics, so ``check`` verifies it where it matters: the original
graph and the upgraded one run in onnxruntime on the same probe inputs (``PROBE_SAMPLES`` random
samples, the same weight arrays, Q/DQ as float simulation, level "all" as the verification runs
the ANN) and every output is compared. Identical bit for bit is the rule; a difference is recorded
and, beyond ``MAX_RELATIVE_DIFF`` of the largest output, the model is refused (the converter changed
what the model computes: re-export it at opset 15 or newer). What was done goes into the model's
metadata (``METADATA_KEY``), and from there into the compile report's notes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper

from pmsm_compiler import weights
from pmsm_compiler.errors import UnsupportedModelError, one_line
from pmsm_compiler.limits import supported_opsets
from pmsm_compiler.metadata import get_metadata, set_metadata

METADATA_KEY = "pmsm.opset_upgrade"
#: the IR version that introduced model-local functions
MIN_IR_VERSION = 8
PROBE_SAMPLES = 2
#: largest accepted max |upgraded − original| / max |original| over the probe's outputs
MAX_RELATIVE_DIFF = 1e-5


def default_opset(model: ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def upgrade(model: ModelProto) -> dict | None:
    """Convert ``model`` in place to the lowest supported opset when it imports an older one; None
    when it does not. Returns what ``check`` needs: the original graph without its large
    initializers (``check`` references the loaded model's) and the two opsets. Raises
    UnsupportedModelError (one line) where the converter fails."""
    version, (low, _) = default_opset(model), supported_opsets()
    if version is None or version >= low:
        return None
    if any(o.domain in ("", "ai.onnx") for f in model.functions for o in f.opset_import):
        return None  # the converter leaves model-local functions at their opset: refused as before
    # the original graph without its large weights (inline or external data not loaded yet): ``check``
    # gives it the loaded model's, by reference
    original = ModelProto()
    weights.copy_except(model, original, skip=("graph",))
    weights.copy_except(model.graph, original.graph, skip=("initializer",))
    original.graph.initializer.extend(t for t in model.graph.initializer
                                      if not weights.strippable(t) and t.data_location != TensorProto.EXTERNAL)
    stripped = {t.name for t in model.graph.initializer if weights.strippable(t)}
    listed = {v.name for v in model.graph.input}
    try:
        converted = onnx.version_converter.convert_version(weights.skeleton(model), low)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError, ValidationError, ...
        raise UnsupportedModelError(
            f"the model imports the default ONNX domain at opset {version}; supported from {low}; onnx's version "
            f"converter could not convert it ({one_line(str(exc))[:200]}): re-export it with opset_version={low} or "
            f"newer") from None
    inputs = {v.name for v in converted.graph.input}
    if not stripped <= inputs:
        missing = sorted(stripped - inputs)[:3]
        raise UnsupportedModelError(f"onnx's version converter (opset {version} → {low}) renamed weights of the "
                                    f"model ({', '.join(missing)}): re-export it with opset_version={low} or newer")
    graph = model.graph
    for i in reversed(range(len(graph.initializer))):  # the large ones stay where they are
        if graph.initializer[i].name not in stripped:
            del graph.initializer[i]
    graph.initializer.extend(converted.graph.initializer)
    for field in ("node", "output", "value_info"):
        graph.ClearField(field)
        getattr(graph, field).extend(getattr(converted.graph, field))
    graph.ClearField("input")  # the skeleton's inputs for the weights go again, unless they were inputs
    graph.input.extend(v for v in converted.graph.input if v.name not in stripped or v.name in listed)
    model.ClearField("opset_import")
    model.opset_import.extend(converted.opset_import)
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    return {"from": version, "to": low, "original": original}


def check(model: ModelProto, upgraded: dict, what: str) -> None:
    """Run ``upgraded["original"]`` and ``model`` (the upgraded graph) in onnxruntime on the same
    probe inputs and compare every output (module docstring); refuse beyond
    ``MAX_RELATIVE_DIFF``, and record the result in ``model``'s metadata."""
    from pmsm_compiler.sessions import make_session, onnxruntime_errors

    original = upgraded["original"]
    for v in original.graph.input:  # the shapes the loader fixed (``--input-shape``)
        fixed = next((i for i in model.graph.input if i.name == v.name), None)
        if fixed is not None:
            v.type.CopyFrom(fixed.type)
    skeleton, arrays = weights.split(model, lazy=True, keep=False)
    # the weights the original lacks, as loaded: the large ones by reference, those that were in external
    # data under STRIP_BYTES inline (the converter leaves tensors it does not rewrite as they are)
    present = {t.name for t in original.graph.initializer}
    original.graph.initializer.extend(t for t in skeleton.graph.initializer if t.name not in present)
    feeds = probe_feeds(skeleton)
    with onnxruntime_errors(f"{what} at its own opset {upgraded['from']}"):
        before = make_session(original, "all", threads=1, qdq_fusion=False, initializers=arrays).run(None, feeds)
    with onnxruntime_errors(f"{what} converted to opset {upgraded['to']}"):
        after = make_session(skeleton, "all", threads=1, qdq_fusion=False, initializers=arrays).run(None, feeds)
    pairs = list(zip(map(np.asarray, before), map(np.asarray, after), strict=True))
    identical = all(a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
                    for a, b in pairs)
    diff = max((_max_difference(a, b) for a, b in pairs), default=0.0)
    scale = max((float(np.abs(a[np.isfinite(a)]).max(initial=0.0)) for a, _ in pairs if a.dtype.kind in "fiu"),
                default=0.0)
    if not identical and not diff <= MAX_RELATIVE_DIFF * scale:
        raise UnsupportedModelError(
            f"onnx's version converter changed what the model computes (opset {upgraded['from']} → "
            f"{upgraded['to']}: max |diff| {diff:.3g} of outputs up to {scale:.3g}, on {PROBE_SAMPLES} random "
            f"samples): re-export it with opset_version={upgraded['to']} or newer")
    set_metadata(model, METADATA_KEY, {"from": upgraded["from"], "to": upgraded["to"], "identical": bool(identical),
                                       "max_abs_diff": diff, "probe_samples": PROBE_SAMPLES})


def _max_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| over the finite elements; inf where the shapes, the types or the places of the
    non-finite elements differ, or non-numeric outputs are not equal."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return float("inf")
    if a.dtype.kind not in "fiu":
        return 0.0 if np.array_equal(a, b) else float("inf")
    finite = np.isfinite(a)
    if not np.array_equal(finite, np.isfinite(b)) or not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        return float("inf")
    return float(np.abs(a[finite].astype(np.float64) - b[finite]).max(initial=0.0))


def note(model: ModelProto) -> str | None:
    """The compile report's note on an upgraded model, or None."""
    record = get_metadata(model, METADATA_KEY)
    if not isinstance(record, dict):
        return None
    how = ("its outputs identical to the original's, bit for bit" if record.get("identical")
           else f"its outputs within {record.get('max_abs_diff', 0):.3g} of the original's")
    return (f"the model was converted from opset {record.get('from')} to {record.get('to')} by onnx's version "
            f"converter ({how} on {record.get('probe_samples')} random samples in onnxruntime); the SNN and its "
            f"verification follow the converted model")


def probe_feeds(model: ModelProto, samples: int = PROBE_SAMPLES, seed: int = 0) -> dict:
    """Random inputs for every graph input that is not an initializer: a symbolic first dimension
    is ``samples``; float inputs normal, integer ones in [0, 4), booleans random."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for v in model.graph.input:
        if v.name in initializers:
            continue
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        shape = [samples if d is None and i == 0 else d for i, d in enumerate(dims)]
        if any(d is None for d in shape):
            raise UnsupportedModelError(f"input '{v.name}' has a dynamic dimension other than the batch: fix it "
                                        f"with --input-shape {v.name}:DIMS")
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if dtype.kind == "f":
            feeds[v.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[v.name] = rng.random(shape) < 0.5
        else:
            feeds[v.name] = rng.integers(0, 4, size=shape).astype(dtype)
    return feeds
