"""The training side: everything that needs PyTorch and exists to train and export PQA / QCFS networks.

- ``activations``: PQA, QCFS, the float clip and ``swap_relu`` (the quantized activations trained here)
- ``trainer``: the training loop of ``pmsm-train`` (paper Table 4 defaults, checkpoint/resume, DDP)
- ``spike_cost``: differentiable spike costs, to train networks that fire less
- ``export``: a trained model → ONNX with one ``pmsm::PQA`` / ``pmsm::QCFS`` node per activation
- ``verify_export``: the exported model against PyTorch eager, quantizer by quantizer
- ``zoo``: ResNet-20, VGG-16, ViT-S and tiny variants

The compiler and the runtime import none of this (tests/test_packaging.py): ``pip install .`` without
torch compiles and runs models. The trained models this side produced ship in ``pmsm_compiler.models``.
"""
