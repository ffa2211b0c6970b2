"""check_inference_mode: refuse ops exported in training mode, which are not functions of one sample.

    BatchNormalization, training_mode = 1:  y = γ·(x − mean_batch)/√(var_batch + ε) + β
    Dropout, training_mode = true:          y = x · mask/(1 − ratio),  mask random per run

A model exported with ``torch.onnx.export(..., training=TrainingMode.TRAINING)`` keeps both. The
first normalizes with the statistics of whatever batch it is fed (the verification's padded
batches, each timestep's spikes), the second is random: neither is the affine map or the
identity that the compiler would make of them (fold_batchnorm would fold the running statistics,
canonicalize would drop the Dropout), so the SNN would silently compute another function. Refused,
naming the node; the fix is an export in eval mode. A Dropout whose training_mode input is not a
constant is refused too (it may be true at run time).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .graph_utils import PassRefusal, node_label, scalar_value

EVAL_EXPORT = ("export the model in eval mode (model.eval(); torch.onnx.export(..., "
               "training=torch.onnx.TrainingMode.EVAL))")


def check_inference_mode(graph: gs.Graph, ctx) -> gs.Graph:
    for node in graph.nodes:
        if node.op == "BatchNormalization" and int(node.attrs.get("training_mode", 0)):
            raise PassRefusal(f"{node_label(node)} has training_mode=1: it normalizes with each batch's own "
                              f"statistics, not an affine map of one sample; {EVAL_EXPORT}")
        if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2].name:
            training = scalar_value(node.inputs[2])
            if training is None or training:
                state = "true" if training else "not a constant"
                raise PassRefusal(f"{node_label(node)}: its training_mode input is {state} (random masks); "
                                  f"{EVAL_EXPORT}")
    return graph
