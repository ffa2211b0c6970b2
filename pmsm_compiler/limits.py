"""Limits on what the tools accept, each defined once, with its reason.

- ``MIN_OPSET`` .. ``MAX_OPSET``: the default-domain (ai.onnx) opsets a model may import. The
  compiled SNN's neuron function bodies use ``CastLike`` (opset 15) and run at the model's own
  opset; 28 is the newest opset that both onnx 1.23 and onnxruntime 1.32 (the tested versions)
  implement (an older onnx lowers the ceiling to its own newest opset).
- ``MAX_TENSOR_BYTES``: the largest single tensor a model may declare (after shape inference,
  with a dynamic batch axis counted as 1) and the largest array of random verification inputs;
  2 GiB is also onnxruntime's limit for an embedded initializer and protobuf's for a whole file.
- ``MAX_TIMESTEPS``: the largest T of a run. The runtime keeps the spike count of every sample,
  layer and step of a batch (int64 [T, batch, layers]) and reports accuracy and spikes at every
  t <= T, so memory and the report grow linearly with T.
- ``DEFAULT_TIME_BATCH``, ``DEFAULT_TIME_BATCH_BYTES``, ``DEFAULT_TIME_PASS_BYTES``: when and how
  the runtime runs a T-step run layer by layer (``runtime/time_batched.py``): up to
  ``DEFAULT_TIME_BATCH`` steps per pass of the network (``pmsm-run --time-batch``; 1 runs step by
  step), where one step of the batch holds at most twice a core's L2 cache of its largest neuron
  layer's current (``DEFAULT_TIME_BATCH_BYTES`` where the cache's size cannot be read), and as many
  steps as keep a pass within ``DEFAULT_TIME_PASS_BYTES`` of it. ResNet-20, per step against one
  run of the ReLU network of the same batch (``bench/time_batch_sweep.py``), on the first 2-core
  VM (1 MiB of L2 per core), 16 steps a pass: batch 1 (64 KiB a step) 1.09 → 0.65, batch 4
  1.13 → 0.95, batch 16 (1 MiB) 1.18 → 1.13; batch 64 (4 MiB) 1.13 step by step, 1.18–1.22 in
  passes of 2–16. On the second (2 MiB of L2 per core; step by step → the fastest pass, which
  holds 16 MiB each time): batch 16 1.26 → 1.06 (16 steps), batch 32 1.22 → 1.09 (8), batch 64
  1.29 → 1.19 (4); batch 128 (8 MiB) 1.27 step by step, 1.34 in passes of 2. The shipped ViT, per
  step against one run of its ANN: batch 1 1.35 → 0.70.
"""

from __future__ import annotations

from pmsm_compiler.errors import InputError

MIN_OPSET = 15
MAX_OPSET = 28
MAX_TENSOR_BYTES = 2**31
MAX_TIMESTEPS = 10_000
DEFAULT_TIME_BATCH = 16
DEFAULT_TIME_BATCH_BYTES = 2 << 20
DEFAULT_TIME_PASS_BYTES = 16 << 20


def supported_opsets() -> tuple[int, int]:
    """(lowest, highest) default-domain opset accepted with the installed onnx."""
    import onnx

    return MIN_OPSET, min(MAX_OPSET, onnx.defs.onnx_opset_version())


def check_timesteps(timesteps: int, what: str = "timesteps") -> int:
    """``timesteps`` as an int in [1, MAX_TIMESTEPS]; InputError (one line) otherwise."""
    t = int(timesteps)
    if t < 1:
        raise InputError(f"{what} must be >= 1, got {t}")
    if t > MAX_TIMESTEPS:
        raise InputError(f"{what} {t} is over the limit of {MAX_TIMESTEPS:,}: a run keeps the spike counts of "
                         f"every sample, layer and step of a batch and reports every t <= T, so memory grows "
                         f"with T")
    return t


def parse_timesteps(text, what: str = "timesteps") -> list[int]:
    """A T ("8") or a comma list of them ("1,2,4,8") as sorted distinct ints, each checked by
    ``check_timesteps``; InputError (one line) otherwise."""
    try:
        ts = sorted({int(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        raise InputError(f"{what} must be an integer or a comma list of integers, got {text!r}") from None
    if not ts:
        raise InputError(f"{what} must list integers >= 1")
    for t in (ts[0], ts[-1]):
        check_timesteps(t, what)
    return ts


def format_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit, with the exact count."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"
