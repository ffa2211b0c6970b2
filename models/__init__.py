"""Model zoo (PyTorch, imported lazily so that this package needs no torch) and the shipped,
trained ONNX models (``*.onnx`` with a model card ``*.json`` next to each).

>>> from pmsm_compiler.models import build_model
>>> net = build_model("resnet20", num_classes=10, act="pqa")     # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from importlib import resources

# name -> (module, factory function)
ZOO = {
    "resnet20": ("resnet", "resnet20"),
    "resnet_tiny": ("resnet", "resnet_tiny"),
    "vgg16": ("vgg", "vgg16"),
    "vgg_tiny": ("vgg", "vgg_tiny"),
    "vit_s": ("vit", "vit_small"),
    "vit_tiny": ("vit", "vit_tiny"),
}


def build_model(name: str, num_classes: int = 10, act="pqa", **kwargs):
    """A zoo model with the given activation ("pqa", "qcfs", "relu" or an ActivationSpec)."""
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; the zoo has: {', '.join(sorted(ZOO))}")
    module_name, factory = ZOO[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, factory)(num_classes=num_classes, act=act, **kwargs)


def shipped_model_path(filename: str):
    """Path of an ONNX model shipped inside this package (e.g. ``resnet20_pqa_cifar10.onnx``)."""
    path = resources.files(__name__) / filename
    if not path.is_file():
        raise FileNotFoundError(f"no shipped model {filename!r} in pmsm_compiler.models")
    return path
