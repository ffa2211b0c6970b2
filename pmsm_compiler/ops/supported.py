"""The standard ONNX ops the compiler handles, by how the passes treat them: one table, from which the
loader's allowlist (``loading.DEFAULT_ALLOWED_OPS``) is derived, so that the loader admits exactly
what some pass knows what to do with.

Classes (``passes.absorb_threshold_scale.classify`` decides per node, from these and its operands):

- weighted: linear in the data with a constant weight, W·x (Conv, Gemm, MatMul with the constant
  either operand, x·W or W·x; Mul and Div by a constant too): the threshold scale θ folds into W,
  and spikes drive its synapses;
- transparent: the scale passes through, f(c·x) = c·f(x) for c > 0: every input in one scale
  (``TRANSPARENT_ALL``), or the first input only, the others shapes, axes or indices
  (``TRANSPARENT_FIRST``);
- affine on real values, a·x + b (``AFFINE_REAL``: BatchNormalization, fed real values);
- metadata: reads only the shape of its input (``METADATA_OPS``), constant over time;
- wrapped: non-linear in spike traffic, made a temporal wrapper by ``wrap_nonlinear``
  (``ops.temporal``: positively homogeneous ``HOMOGENEOUS_OPS``, the rest ``GENERAL_OPS``);
- quantizer: the parts of a quantized activation that ``recognize_pqa`` matches
  (x/s → +½ → Floor → Clip → ·s, or QuantizeLinear → Clip → DequantizeLinear);
- real: computed on constants, shapes or masks, never on spike traffic (``REAL_OPS``).
"""

from __future__ import annotations

from .temporal import GENERAL_OPS, HOMOGENEOUS_OPS, MASK_OPS

WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul"})
#: every input in one scale: x + y, concat(x, y), …
TRANSPARENT_ALL = frozenset({"Add", "Sub", "Concat", "Sum", "Mean"})
#: the scale passes through the first input; the others are shapes, axes or indices
TRANSPARENT_FIRST = frozenset({"AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Squeeze",
                               "Unsqueeze", "Slice", "Split", "ReduceSum", "ReduceMean", "Identity", "Pad",
                               "DepthToSpace", "SpaceToDepth", "Tile", "Expand", "Gather", "Neg", "Resize"}
                              | HOMOGENEOUS_OPS)
#: read only the shape of their input, never its values: their outputs do not change over time
METADATA_OPS = frozenset({"Shape", "Size"})
#: affine in the first input with parameters that read real values (BN(x) = a·x + b): linear under rate
#: coding, but not scale-transparent (the bias), so folded mode feeds it real values
AFFINE_REAL = frozenset({"BatchNormalization"})
#: Where(cond, x, y): picks between inputs 1 and 2
SELECT_OPS = frozenset({"Where"})
QUANTIZER_OPS = frozenset({"Mul", "Div", "Add", "Floor", "Clip", "QuantizeLinear", "DequantizeLinear"})
#: on constants, shapes and masks (Dropout: identity at inference, ``check_inference_mode``)
REAL_OPS = frozenset({"Constant", "ConstantOfShape", "Cast", "CastLike", "Round", "Dropout"} | MASK_OPS)
WRAPPED_OPS = frozenset(HOMOGENEOUS_OPS | GENERAL_OPS)

#: every standard-domain op the compiler accepts
SUPPORTED_OPS = frozenset(WEIGHTED_OPS | TRANSPARENT_ALL | TRANSPARENT_FIRST | METADATA_OPS | AFFINE_REAL | SELECT_OPS
                          | QUANTIZER_OPS | REAL_OPS | WRAPPED_OPS)
