"""What every producer test checks on a model made by a real quantization toolchain.

``check_both_modes(path, x)`` compiles the model in exact and folded mode and checks, for each:

- weights stored quantized are folded: no QuantizeLinear / DequantizeLinear of a constant is left;
- the T = 1 verification passes (``verify``, Q/DQ as float simulation);
- exact mode is bit-identical: no level mismatch in any layer, outputs identical
  (``max_abs_diff == 0``);
- folded mode within its policy (the verification's pass) and its level agreement reported;
- a run of ``SNNSession.run_batch`` at T = 4: finite outputs, integer spike counts; in exact mode
  its first step equals the ANN's output bit for bit (the runtime's T = 1 is the verified one).

``activation_quantizers(model)`` reads each activation quantizer (a QuantizeLinear whose input is
not a constant, with its optional integer Clip and its DequantizeLinear) and the levels its scale,
zero point and integer range define; ``assert_levels_follow_quantizers`` checks that each became a
neuron with exactly those levels and threshold.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.loading import load_model
from pmsm_compiler.runtime import SNNSession
from pmsm_compiler.sessions import make_session, run_declared_batches
from pmsm_compiler.verify import verify

RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
          onnx.TensorProto.INT16: (-32768, 32767), onnx.TensorProto.UINT16: (0, 65535)}
T = 4


def constants(model):
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def activation_quantizers(model: onnx.ModelProto) -> dict:
    """{QuantizeLinear node name: (scale, zero point, k_min, k_max)} for every activation quantizer:
    k = q − zp over the integer range, narrowed by a Clip between Q and DQ (Brevitas)."""
    values = constants(model)
    readers = {}
    for node in model.graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    found = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in values:
            continue
        scale = values[node.input[1]]
        zp = values[node.input[2]] if len(node.input) > 2 and node.input[2] else np.uint8(0)
        assert scale.size == 1 and zp.size == 1, f"{node.name}: per-axis activation quantizer"
        qmin, qmax = RANGES[onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)]
        nxt = readers[node.output[0]][0]
        if nxt.op_type == "Clip":
            qmin = max(qmin, int(values[nxt.input[1]]))
            qmax = min(qmax, int(values[nxt.input[2]]))
        found[node.name] = (np.float32(scale.reshape(())), int(zp.reshape(())), qmin - int(zp), qmax - int(zp))
    return found


def assert_levels_follow_quantizers(model: onnx.ModelProto, compiled) -> list:
    """Each activation quantizer is a neuron layer with s_min = qmin − zp, s_max = qmax − zp and
    threshold θ = scale, firing as QuantizeLinear rounds (half to even). Returns the layers."""
    quantizers = activation_quantizers(model)
    layers = {layer["name"]: layer for layer in compiled.info["layers"]}
    assert set(layers) == set(quantizers)
    for name, (scale, _zp, k_min, k_max) in quantizers.items():
        layer = layers[name]
        assert (layer["s_min"], layer["s_max"]) == (k_min, k_max), name
        assert np.float32(layer["theta_in"]) == scale and np.float32(layer["theta_out"]) == scale, name
        assert layer["op"] == "AIFHalfEven" and layer["rounding"] == "half_even", name
    return list(layers.values())


def check_mode(ann: onnx.ModelProto, x: np.ndarray, mode: str):
    """Compile ``ann`` in ``mode`` and run the checks of the module docstring; returns (compiled,
    verification report, T = 4 BatchResult)."""
    compiled = compile_model(ann, mode=mode)
    values = constants(compiled.model)
    # quantized weights are folded into float weights: no Q/DQ of a constant is left
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] in values
                   for n in compiled.model.graph.node)
    report = verify(ann, compiled, x, mode=mode)
    assert report["passed"], report["failures"]
    if mode == "exact":
        assert report["max_abs_diff"] == 0
        assert all(p["mismatches"] == 0 for p in report["layers"]), report["layers"]
        assert report["level_agreement"] == 1.0
    else:
        assert report["level_agreement"] >= 1 - report["policy"]["max_level_mismatch"]
    n = min(8, len(x))
    result = SNNSession(compiled.model).run_batch(x[:n], T, keep_outputs=True)
    assert result.outputs_by_t.shape[:2] == (T, n) and np.isfinite(result.outputs_by_t).all()
    assert result.spikes.shape == (T, n, len(compiled.layers)) and (result.spikes >= 0).all()
    assert result.spikes.sum() > 0
    if mode == "exact":
        reference = make_session(compiled.reference or ann, "all", qdq_fusion=False)
        y = run_declared_batches(reference, x[:n])  # a fixed batch (Brevitas: 1) is fed as declared
        assert np.array_equal(result.outputs_by_t[0], y)
    return compiled, report, result


def check_both_modes(path, x: np.ndarray) -> dict:
    """{mode: (compiled, report, result)} for exact and folded, each checked by ``check_mode``."""
    ann = load_model(path)
    return {mode: check_mode(ann, x, mode) for mode in ("exact", "folded")}


def export_torch(net, x, path, exporter: str) -> list[str]:
    """``net`` (a torch module in eval mode) exported to ``path`` by torch's ``exporter``, "dynamo"
    or "legacy" (TorchScript), with a dynamic batch; returns the exported graph's op types."""
    import torch

    if exporter == "dynamo":
        program = torch.onnx.export(net, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("N")},),
                                    verbose=False)
        onnx.save(program.model_proto, path)
    else:
        torch.onnx.export(net, (x,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    return [n.op_type for n in onnx.load(path).graph.node]
