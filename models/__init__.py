"""The shipped, trained ONNX models (``*.onnx`` with a model card ``*.json`` next to each).

The zoo that builds the PyTorch models is ``pmsm_compiler.training.zoo``; ``build_model`` is still
importable from here (deprecated), without importing torch until it is called.
"""

from __future__ import annotations

import warnings
from importlib import resources


def shipped_model_path(filename: str):
    """Path of an ONNX model shipped inside this package (e.g. ``resnet20_pqa_cifar10.onnx``)."""
    path = resources.files(__name__) / filename
    if not path.is_file():
        raise FileNotFoundError(f"no shipped model {filename!r} in pmsm_compiler.models")
    return path


def training_stages(card: dict) -> list[int]:
    """Epochs of each training stage behind a model card, earliest first: for a fine-tune, the
    stages it started from (``pretraining``, nested), then its own run."""
    stages, stage = [card["training"]["epochs_done"]], card.get("pretraining")
    while stage:
        stages.append(stage["epochs_done"])
        stage = stage.get("pretraining")
    return stages[::-1]


def __getattr__(name):
    # the zoo moved to pmsm_compiler.training.zoo; users' `from pmsm_compiler.models import build_model` still works
    if name in ("build_model", "ZOO"):
        warnings.warn(f"pmsm_compiler.models.{name} moved to pmsm_compiler.training.zoo.{name}",
                      DeprecationWarning, stacklevel=2)
        from pmsm_compiler.training import zoo

        # cached, so that `from ... import` (which looks the name up twice) warns once
        globals()[name] = value = getattr(zoo, name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
