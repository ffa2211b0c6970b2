"""Tiny models for tests: a PQA / QCFS ResNet pair exported to ONNX, for the tools that compare the
two (pmsm-demo, bench/reproduce_paper.py): random weights (seed 0), every λ = 4; and a chain of
Conv → pmsm::PQA blocks of any depth and width built without torch (``chain_model``)."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions


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


def chain_model(blocks: int, channels: int = 8, side: int = 8, seed: int = 0) -> onnx.ModelProto:
    """x [N, 3, side, side] → (Conv 3x3 → pmsm::PQA) × blocks → GlobalAveragePool → Flatten → Gemm(10)."""
    rng = np.random.default_rng(seed)
    nodes, inits, src, cin = [], [], "x", 3
    for b in range(blocks):
        w = (rng.standard_normal((channels, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{b}"), numpy_helper.from_array(np.float32(2 + b % 3), f"lam{b}")]
        nodes += [helper.make_node("Conv", [src, f"w{b}"], [f"c{b}"], name=f"conv{b}", pads=[1, 1, 1, 1]),
                  helper.make_node("PQA", [f"c{b}", f"lam{b}"], [f"q{b}"], name=f"act{b}", domain="pmsm", L=8,
                                   alpha=-0.25, beta=1.0)]
        src, cin = f"q{b}", channels
    inits.append(numpy_helper.from_array(rng.standard_normal((10, channels)).astype(np.float32), "fc.w"))
    nodes += [helper.make_node("GlobalAveragePool", [src], ["p"], name="gap"),
              helper.make_node("Flatten", ["p"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "fc.w"], ["y"], name="fc", transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, side, side])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(nodes, "chain", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    return model
