"""Export a PyTorch model with PQA / QCFS activations to ONNX.

Each PQA (QCFS) becomes ONE node ``pmsm::PQA`` (``pmsm::QCFS``) with attributes L, alpha, beta and
λ as a scalar initializer input, backed by a model-local function (``pmsm_compiler.ops``), so stock
onnxruntime runs the exported ANN unchanged and the compiler recognises the activation at a glance.
``pqa_as="plain"`` instead traces the formula as plain ops (Div, Add, Floor, Clip, Mul), as any
third-party exporter would; the compiler recognises both forms.

The batch dimension is dynamic. The dynamo exporter (default, opset 20) folds BatchNorm into
Conv; ``exporter="legacy"`` uses TorchScript export (kept for models dynamo cannot trace).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings

import onnx
import torch

from pmsm_compiler import __version__
from pmsm_compiler.training.activations import _QuantizedActivation, quantize_reference, quantized_activations
from pmsm_compiler.metadata import get_metadata, set_metadata
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.defaults import FLOAT16_MIN_ELEMENTS
from pmsm_compiler.snn_format import EXPORT_METADATA_KEY

METADATA_KEY = EXPORT_METADATA_KEY  # the key the compiler reads (one definition, in the SNN format)


@contextlib.contextmanager
def _plain_quantizers(model: torch.nn.Module):
    """Temporarily make every quantizer trace as the plain formula."""
    originals = []
    for _, m in quantized_activations(model):
        originals.append((m, m.forward))
        m.forward = (lambda self: (lambda x: quantize_reference(x, self.lam, self.levels, self.k_min,
                                                                self.k_max)))(m)
    try:
        yield
    finally:
        for m, fwd in originals:
            m.forward = fwd


def export_onnx(model: torch.nn.Module, path: str | None = None, input_shape=(1, 3, 32, 32), *,
                exporter: str = "dynamo", pqa_as: str = "node", opset: int = 20, metadata: dict | None = None,
                input_name: str = "input", output_name: str = "logits", check: bool = True,
                weights_float16: bool = False) -> onnx.ModelProto:
    """Export ``model`` (eval mode) and return the ModelProto; also write it to ``path`` if given.
    ``weights_float16``: store the large weights as float16 (``store_weights_float16``)."""
    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    if pqa_as not in ("node", "plain"):
        raise ValueError(f"pqa_as must be 'node' or 'plain', got {pqa_as!r}")
    was_training = model.training
    model.eval()
    for module in model.modules():  # numbers a module writes into the graph (a level shift's m·s), from λ now
        if hasattr(module, "refresh_export_constants"):
            module.refresh_export_constants()
    example = torch.randn(*input_shape)
    try:
        with contextlib.ExitStack() as stack:
            if pqa_as == "plain":
                stack.enter_context(_plain_quantizers(model))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                program = torch.onnx.export(
                    model, (example,), dynamo=True, opset_version=opset, optimize=True,
                    input_names=[input_name], output_names=[output_name],
                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
                proto = program.model_proto
            else:
                import io

                if pqa_as == "node":
                    raise ValueError("the legacy exporter supports pqa_as='plain' only")
                buf = io.BytesIO()
                torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=min(opset, 18),
                                  input_names=[input_name], output_names=[output_name],
                                  dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
                proto = onnx.load_from_string(buf.getvalue())
    finally:
        model.train(was_training)

    if pqa_as == "node":
        add_functions(proto, quantizer_functions())
        _drop_unused_functions(proto)
    _name_quantizer_nodes(proto)
    info = {
        "exporter": f"pmsm-compiler {__version__} ({exporter}, pqa_as={pqa_as})",
        "activations": [
            {"name": name, "op": m.onnx_op, "L": m.levels, "alpha": m.alpha, "beta": m.beta,
             "lambda": float(m.lam.detach())}
            for name, m in quantized_activations(model)
        ],
    }
    if metadata:
        info.update(metadata)
    set_metadata(proto, METADATA_KEY, info)
    if weights_float16:
        store_weights_float16(proto)
    proto.producer_name = "pmsm-compiler"
    proto.producer_version = __version__
    if check:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    if path:
        from pmsm_compiler.loading import save_model_atomic

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_model_atomic(proto, path)
    return proto


def store_weights_float16(proto: onnx.ModelProto, min_elements: int = FLOAT16_MIN_ELEMENTS) -> list[str]:
    """Store each float32 initializer of at least ``min_elements`` elements (weight matrices,
    kernels, embeddings) as float16 read through a ``Cast`` to float32: half the file size.

    The model changes: its weights become their nearest float16 values (the Cast back is exact),
    and everything it computes is float32 as before. Scalars and small tensors (λ, biases of
    narrow layers, shapes) stay float32. onnxruntime folds the Casts when it loads the model, and so
    does the compiler (``canonicalize``), so the SNN compiled from such a file carries the same
    float32 values as the ANN runs. Left as they are: a tensor with a value beyond float16's range
    (it would become ±inf) and an initializer that is also a graph input (a feed may replace it).
    Returns the converted initializers' names; the model's ``pmsm.export`` metadata records them
    under ``weights_float16``."""
    import numpy as np
    from onnx import numpy_helper

    graph = proto.graph
    taken = {t.name for t in graph.initializer} | {t.name for t in graph.input} | \
        {o for n in graph.node for o in n.output}
    inputs = {t.name for t in graph.input}
    converted = []
    for init in graph.initializer:
        name = init.name
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements or name in inputs:
            continue
        value = numpy_helper.to_array(init)
        if not np.all(np.abs(value[np.isfinite(value)]) <= np.finfo(np.float16).max):
            continue
        stored = name + "_float16"
        while stored in taken:
            stored += "_"
        taken.add(stored)
        init.CopyFrom(numpy_helper.from_array(value.astype(np.float16), stored))
        graph.node.insert(0, onnx.helper.make_node("Cast", [stored], [name], to=onnx.TensorProto.FLOAT,
                                                   name=stored + "_cast"))
        converted.append(name)
    if converted:
        info = get_metadata(proto, METADATA_KEY) or {}
        info["weights_float16"] = converted
        set_metadata(proto, METADATA_KEY, info)
    return converted


def _name_quantizer_nodes(proto: onnx.ModelProto):
    """Name each quantizer node after its module path (e.g. ``layers.0.act1``), which the dynamo
    exporter records in the node's ``pkg.torch.onnx.name_scopes``; layer names in compiler and
    runtime reports come from here."""
    taken = {n.name for n in proto.graph.node}
    for node in proto.graph.node:
        if node.domain != "pmsm" and node.op_type != "Floor":
            continue
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = json.loads(prop.value.replace("'", '"'))
                except json.JSONDecodeError:
                    break
                if len(scopes) >= 2 and scopes[-2] and scopes[-2] not in taken:
                    taken.add(scopes[-2])
                    node.name = scopes[-2]
                break


def _drop_unused_functions(proto: onnx.ModelProto):
    used = {(n.domain, n.op_type) for n in proto.graph.node}
    keep = [f for f in proto.functions if (f.domain, f.name) in used]
    del proto.functions[:]
    proto.functions.extend(keep)


__all__ = ["export_onnx", "store_weights_float16", "set_metadata", "get_metadata", "METADATA_KEY", "_QuantizedActivation"]
