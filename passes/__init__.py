"""Compiler passes: each a function ``pass(graph, ctx) -> graph`` over an onnx-graphsurgeon graph.

Order (``PIPELINE``): check_inference_mode → canonicalize → fold_weight_quantization → recognize_pqa →
drop_implied_clamps → fold_batchnorm → pqa_to_aif → absorb_threshold_scale → wrap_nonlinear → count_spikes.
In ``exact`` mode fold_batchnorm and absorb_threshold_scale do nothing, so the SNN keeps the ANN's arithmetic.
"""

from .absorb_threshold_scale import absorb_threshold_scale
from .canonicalize import canonicalize
from .check_inference_mode import check_inference_mode
from .count_spikes import COUNTERS_OUTPUT, COUNTS_OUTPUT, count_spikes
from .drop_implied_clamps import drop_implied_clamps
from .fold_batchnorm import fold_batchnorm as _fold_batchnorm
from .fold_weight_quantization import fold_weight_quantization
from .graph_utils import PassRefusal
from .manager import PassContext, PassManager, check_graph
from .pqa_to_aif import pqa_to_aif
from .recognize_pqa import recognize_pqa
from .wrap_nonlinear import TIME_INPUT, wrap_nonlinear


def fold_batchnorm(graph, ctx):
    if ctx.mode == "exact":
        return graph
    return _fold_batchnorm(graph, ctx)


fold_batchnorm.__doc__ = _fold_batchnorm.__doc__

# The front passes only evaluate constants (the model's semantics unchanged); the verification's
# reference is the ANN after them (compiler.compile_model).
FRONT = [check_inference_mode, canonicalize, fold_weight_quantization]
PIPELINE = FRONT + [recognize_pqa, drop_implied_clamps, fold_batchnorm, pqa_to_aif, absorb_threshold_scale,
                    wrap_nonlinear, count_spikes]

__all__ = ["FRONT", "PIPELINE", "PassContext", "PassManager", "PassRefusal", "check_graph", "check_inference_mode",
           "canonicalize", "fold_weight_quantization", "recognize_pqa", "drop_implied_clamps", "fold_batchnorm",
           "pqa_to_aif", "absorb_threshold_scale", "wrap_nonlinear", "count_spikes", "COUNTS_OUTPUT", "COUNTERS_OUTPUT",
           "TIME_INPUT"]
