"""A tiny PQA / QCFS ResNet pair, exported to ONNX, for tests of the tools that compare the two
(pmsm-demo, bench/reproduce_paper.py): random weights (seed 0), every λ = 4."""

from __future__ import annotations

import os


def export_tiny_pair(directory) -> dict[str, str]:
    """{"pqa": path, "qcfs": path} of the two models written under ``directory``."""
    import torch

    from pmsm_compiler.training.activations import quantized_activations
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.zoo import build_model

    paths = {}
    for act in ("pqa", "qcfs"):
        torch.manual_seed(0)
        net = build_model("resnet_tiny", act=act)
        for _, q in quantized_activations(net):
            q.lam.data.fill_(4.0)
        paths[act] = os.path.join(str(directory), f"{act}.onnx")
        export_onnx(net.eval(), paths[act])
    return paths
