"""Turn a loaded Dataset into what a model's input expects (normalized float32 NCHW)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .loaders import Dataset, get_normalization, normalize


def resolve_normalization(choice: str, info: dict | None):
    """(mean, std) for ``choice``: "auto" (the model's recorded normalization, else CIFAR-10),
    "none" (uint8 scaled to [0, 1] only), or a name in NORMALIZATIONS."""
    if choice == "auto":
        norm = (info or {}).get("normalization")
        if norm:
            return tuple(norm["mean"]), tuple(norm["std"])
        return get_normalization("cifar10")
    if choice == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return get_normalization(choice)


def model_inputs(dataset: Dataset, input_shape, mean, std, limit: int | None = None):
    """float32 NCHW array and labels, checked against the model's per-sample input shape."""
    x = dataset.x if limit is None else dataset.x[:limit]
    y = None if dataset.y is None else (dataset.y if limit is None else dataset.y[:limit])
    if x.dtype == np.uint8:
        x = normalize(x, mean, std)
    x = np.ascontiguousarray(x, dtype=np.float32)
    expected = tuple(input_shape[1:]) if input_shape else None
    if expected and all(isinstance(d, int) for d in expected) and tuple(x.shape[1:]) != expected:
        raise InputError(f"{dataset.name}: samples have shape {tuple(x.shape[1:])}, the model expects {expected}")
    return x, y
