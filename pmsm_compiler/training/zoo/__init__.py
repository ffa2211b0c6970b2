"""Model zoo (PyTorch): ResNet-20, VGG-16, ViT-S, a CIFAR ViT and tiny variants, each with a quantized activation.

>>> from pmsm_compiler.training.zoo import build_model
>>> net = build_model("resnet20", num_classes=10, act="pqa")     # doctest: +SKIP
"""

from __future__ import annotations

import importlib

# name -> (module, factory function); the modules import torch, so each is imported when first built
ZOO = {
    "resnet20": ("resnet", "resnet20"),
    "resnet_tiny": ("resnet", "resnet_tiny"),
    "vgg16": ("vgg", "vgg16"),
    "vgg_tiny": ("vgg", "vgg_tiny"),
    "vit_s": ("vit", "vit_small"),
    "vit_cifar": ("vit", "vit_cifar"),
    "vit_tiny": ("vit", "vit_tiny"),
}


def build_model(name: str, num_classes: int = 10, act="pqa", **kwargs):
    """A zoo model with the given activation ("pqa", "qcfs", "relu" or an ActivationSpec)."""
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; the zoo has: {', '.join(sorted(ZOO))}")
    module_name, factory = ZOO[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, factory)(num_classes=num_classes, act=act, **kwargs)
