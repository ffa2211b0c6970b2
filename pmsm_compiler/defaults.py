"""The paper's PQA defaults (PMSM, Table 4), defined once for the activations, the training
configuration, the CLI flags and the entropy analysis. Torch- and onnx-free, so that a tool's
``--help`` can show them without importing either.

- ``PQA_LEVELS`` L = 8: positive quantization levels; the step is s = λ/L.
- ``PQA_LAMBDA`` λ0 = 8: the initial clipping range λ (learned per layer in training).
- ``PQA_ALPHA`` α = −0.25, ``PQA_BETA`` β = 1: the bounds as fractions of λ, so levels
  αL..βL = −2..8 (αL and βL must be integers).
- ``LAMBDA_MIN`` = 1e-4: the smallest λ training keeps (projected after every optimizer step): a
  step can carry a small λ through zero (its gradient grows as 1/λ), and no neuron has θ = λ/L ≤ 0.
  Far below any trained λ that carries information (the shipped models' smallest is 0.007).
- ``DISTILL_WEIGHT`` w = 0.5 and ``DISTILL_TEMPERATURE`` τ = 4: knowledge distillation's share of
  the loss and softmax temperature (Hinton et al. 2015's usual choices), for ``pmsm-train
  --distill-from``.
- ``COMPACT_CHECKPOINT``: the checkpoint ``pmsm-train --compact-checkpoint`` writes beside the full
  one, small enough to commit (float16 weights, no optimizer state); ``COMPACT_RESUME_RAMP_STEPS`` =
  100: after resuming from it the optimizer starts empty and its learning rate ramps up linearly
  over this many steps, because Adam's first bias-corrected updates are about lr·sign(g) per
  weight, far larger than those of the run it continues.
- ``FLOAT16_MIN_ELEMENTS`` = 1024: the float initializers ``pmsm-export --weights-float16`` stores
  as float16 have at least this many elements (weight matrices, kernels, embeddings; not λ, not
  the biases of narrow layers).
"""

PQA_LEVELS = 8
PQA_LAMBDA = 8.0
PQA_ALPHA = -0.25
PQA_BETA = 1.0
PQA_DEFAULTS = dict(levels=PQA_LEVELS, lam=PQA_LAMBDA, alpha=PQA_ALPHA, beta=PQA_BETA)
LAMBDA_MIN = 1e-4

DISTILL_WEIGHT = 0.5
DISTILL_TEMPERATURE = 4.0

COMPACT_CHECKPOINT = "checkpoint.compact.pt"
COMPACT_RESUME_RAMP_STEPS = 100

FLOAT16_MIN_ELEMENTS = 1024
