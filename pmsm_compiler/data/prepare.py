"""Turn a loaded Dataset into what a model's input expects (normalized float32 NCHW)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .dataset import Dataset
from .normalization import get_normalization, normalize


def resolve_normalization(choice: str, info: dict | None):
    """(mean, std) for ``choice``: "auto" (the model's recorded normalization, else CIFAR-10),
    "none" (uint8 scaled to [0, 1] only), or a name in NORMALIZATIONS."""
    if choice == "auto":
        norm = (info or {}).get("normalization")
        if norm:
            return _recorded(norm)
        return get_normalization("cifar10")
    if choice == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return get_normalization(choice)


def raw_pixels(dataset: Dataset, input_dtype, input_name: str = "input") -> bool:
    """How ``dataset`` feeds a model input of ``input_dtype``: False for a float32 input (uint8
    images normalized, float32 data as is), True for a uint8 input (uint8 images raw, NCHW, not
    normalized: the model does its own scaling). InputError (one line) for any other input type,
    and for preprocessed float32 data into a uint8 input."""
    dtype = np.dtype(input_dtype)
    if dtype == np.float32:
        return False
    if dtype != np.uint8:
        raise InputError(f"the model's input '{input_name}' is {dtype}; data sets are fed to float32 inputs "
                         f"(normalized) or uint8 inputs (raw pixels)")
    if dataset.x.dtype != np.uint8:
        raise InputError(f"the model's input '{input_name}' takes raw uint8 pixels, but {dataset.name} holds "
                         f"preprocessed {dataset.x.dtype} tensors; give uint8 images")
    return True


def _recorded(norm):
    """(mean, std) from a model's metadata, which a crafted file can fill with anything."""
    try:
        mean = np.asarray(norm["mean"], dtype=np.float64).reshape(-1)
        std = np.asarray(norm["std"], dtype=np.float64).reshape(-1)
    except (TypeError, KeyError, IndexError, ValueError):
        raise InputError(f"the model's recorded normalization is malformed ({str(norm)[:80]}); give "
                         f"--normalization") from None
    if not (len(mean) == len(std) > 0 and np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise InputError(f"the model's recorded normalization needs equally many finite means and positive stds, "
                         f"got mean {mean.tolist()}, std {std.tolist()}; give --normalization")
    return tuple(mean.tolist()), tuple(std.tolist())


def model_inputs(dataset: Dataset, input_shape, mean, std, limit: int | None = None, input_dtype=np.float32,
                 input_name: str = "input"):
    """NCHW array of the model input's type and the labels, checked against the model's
    per-sample input shape: float32 (uint8 images normalized) or raw uint8 (``raw_pixels``)."""
    raw = raw_pixels(dataset, input_dtype, input_name)
    x = dataset.x if limit is None else dataset.x[:limit]
    y = None if dataset.y is None else (dataset.y if limit is None else dataset.y[:limit])
    if raw:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    else:
        if x.dtype == np.uint8:
            x = normalize(x, mean, std)
        x = np.ascontiguousarray(x, dtype=np.float32)
    expected = tuple(input_shape[1:]) if input_shape else None
    if expected and all(isinstance(d, int) for d in expected) and tuple(x.shape[1:]) != expected:
        raise InputError(f"{dataset.name}: samples have shape {tuple(x.shape[1:])}, the model expects {expected}")
    return x, y
