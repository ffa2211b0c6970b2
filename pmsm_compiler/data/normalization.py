"""Normalization of uint8 pixels into the float32 NCHW tensors a network takes, and batching.

Normalization contract (so numpy and PyTorch preprocessing give bit-identical float32):

    x = x_uint8.astype(float32) / float32(255.0)
    x = x - float32(mean[c])
    x = x / float32(std[c])

in exactly that order, each step rounded to float32; ``mean`` and ``std`` are first rounded to
float32. The PyTorch equivalent is
``torch.from_numpy(x).float().div(255.0).sub(mean_f32).div(std_f32).permute(0, 3, 1, 2)``,
which is also what ``torchvision.transforms.ToTensor()`` followed by ``Normalize(mean, std)``
computes.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from .dataset import Dataset, _err

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: name -> (mean, std), per RGB channel, for images scaled to [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


def get_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` for a name in :data:`NORMALIZATIONS` (case-insensitive)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in NORMALIZATIONS:
        raise _err(
            f"unknown normalization {name!r}; choose one of {', '.join(sorted(NORMALIZATIONS))}"
        )
    return NORMALIZATIONS[key]


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC ``[N,H,W,C]`` -> float32 NCHW ``[N,C,H,W]``, ``(x / 255 - mean) / std``.

    Fixed op order, each step in float32 (mean and std are first rounded to float32)::

        x.astype(float32) / float32(255.0)   then   - mean   then   / std

    A PyTorch pipeline that does ``.float().div(255.0).sub(mean).div(std)`` with float32 mean/std
    (torchvision ``ToTensor()`` + ``Normalize``) produces bit-identical values. A single 3-D image
    ``[H,W,C]`` is accepted and returns ``[C,H,W]``.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise _err(f"normalize expects uint8 NHWC images, got {got}")
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise _err(f"normalize expects uint8 NHWC [N,H,W,C], got shape {tuple(x.shape)}")
    c = x.shape[3]
    m = np.asarray(mean, dtype=np.float32).reshape(-1)
    s = np.asarray(std, dtype=np.float32).reshape(-1)
    if m.shape[0] != c or s.shape[0] != c:
        raise _err(
            f"normalize: mean/std have {m.shape[0]}/{s.shape[0]} values for {c} channels"
        )
    if not np.all(np.isfinite(s)) or np.any(s == 0):
        raise _err("normalize: std must be finite and non-zero")
    out = x.astype(np.float32) / np.float32(255.0)
    out = out - m
    out = out / s
    out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    return out[0] if single else out


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    raw: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield ``(x, y)`` batches in order: ``x`` float32 NCHW, ``y`` int64 or ``None``.

    uint8 images are normalized with :func:`normalize` (``mean`` and ``std`` required); float32
    images are already preprocessed and pass through unchanged (``mean``/``std`` ignored). With
    ``raw``, uint8 images are yielded as uint8 NCHW, not normalized (for a model whose input is
    uint8 pixels). The last batch may be smaller.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise _err(f"batch size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    x = dataset.x
    pixels = x.dtype == np.uint8
    if raw and not pixels:
        raise _err(f"{dataset.name}: raw batches need uint8 images, got {x.dtype}")
    if pixels and not raw and (mean is None or std is None):
        raise _err(f"{dataset.name}: uint8 images need a mean and std to normalize")
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        if raw:
            xb = np.ascontiguousarray(xb.transpose(0, 3, 1, 2))
        else:
            xb = normalize(xb, mean, std) if pixels else np.ascontiguousarray(xb, dtype=np.float32)
        yb = None if dataset.y is None else dataset.y[start:start + batch_size]
        yield xb, yb
