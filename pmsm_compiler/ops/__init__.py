"""The ``pmsm`` ONNX domain: custom ops as model-local functions over standard ONNX ops.

Every ``pmsm`` op ships its own ``FunctionProto`` body inside the model, so stock onnxruntime
(any execution provider), ``onnx.reference`` and shape inference run it unchanged; a compiled
kernel registered later for the same (domain, op) would take precedence.

Families, one file each, with the math in its docstring:
- ``quantizers``: PQA and QCFS, the ANN activations (trained and exported by ``pmsm_compiler.training``);
- ``neurons``: AIF (multi-spike, signed) and IF (binary) neurons in threshold units, with a numpy
  reference built from the same explicit parts (integrate, fire, reset);
- ``temporal``: the stateful wrapper that makes any other non-linear op consistent over time.
"""

from __future__ import annotations

import onnx
from onnx import helper

DOMAIN = "pmsm"
DOMAIN_VERSION = 1
ONNX_OPSET = 20


def parse_function(text: str, opset: int = ONNX_OPSET) -> onnx.FunctionProto:
    header = f'<domain: "{DOMAIN}", opset_import: ["": {opset}]>\n'
    return onnx.parser.parse_function(header + text)


def add_functions(model: onnx.ModelProto, functions) -> onnx.ModelProto:
    """Attach function bodies (replacing same-named ones) and the pmsm opset import."""
    opset = default_opset(model)
    names = {(f.domain, f.name) for f in functions}
    kept = [f for f in model.functions if (f.domain, f.name) not in names]
    del model.functions[:]
    model.functions.extend(kept)
    for f in functions:
        f = _with_opset(f, opset)
        model.functions.append(f)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return model


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return ONNX_OPSET


def _with_opset(f: onnx.FunctionProto, opset: int) -> onnx.FunctionProto:
    # A function's default-domain opset must match the model's (onnx-findings.md).
    g = onnx.FunctionProto()
    g.CopyFrom(f)
    for o in g.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    return g
