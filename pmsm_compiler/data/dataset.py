"""The Dataset every loader returns, and the checks every loader applies to what it read.

``x`` is either

* ``uint8`` images, NHWC ``[N, H, W, 3]``, RGB, 0..255 (raw pixels; normalize with
  :func:`~pmsm_compiler.data.normalize` or :func:`~pmsm_compiler.data.iterate_batches`), or
* ``float32`` tensors, NCHW ``[N, 3, H, W]``, already preprocessed (passed through as they are).

Labels ``y`` are ``int64 [N]`` or ``None``. Every failure a user can cause raises
:class:`~pmsm_compiler.errors.InputError` with a one-line message that names the offending path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, one_line

@dataclass
class Dataset:
    """Images plus optional labels.

    ``x``: uint8 NHWC ``[N, H, W, 3]`` raw RGB pixels, or float32 NCHW ``[N, 3, H, W]`` already
    preprocessed. ``y``: int64 ``[N]`` or ``None``. ``classes``: class names indexed by label, or
    ``None`` when unknown. ``name``: a short human-readable description of the source.
    """

    x: np.ndarray
    y: np.ndarray | None = None
    classes: list[str] | None = None
    name: str = "dataset"
    meta: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def preprocessed(self) -> bool:
        """True when ``x`` is float32 NCHW (already normalized), False for uint8 NHWC pixels."""
        return self.x.dtype == np.float32

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image as the network sees it (NCHW)."""
        if self.preprocessed:
            return tuple(int(d) for d in self.x.shape[1:])  # type: ignore[return-value]
        n, h, w, c = self.x.shape
        return (int(c), int(h), int(w))

    def subset(self, n: int) -> "Dataset":
        """The first ``n`` samples (all of them when ``n`` is larger)."""
        if n < 0:
            raise _err(f"subset size must be >= 0, got {n}")
        return Dataset(
            self.x[:n],
            None if self.y is None else self.y[:n],
            self.classes,
            self.name if n >= len(self) else f"{self.name}[:{n}]",
            dict(self.meta),
        )


    def evenly_spaced(self, n: int | None) -> "Dataset":
        """``n`` samples spread evenly over the set, first and last included (all of them when
        ``n`` is None or not smaller): a quick check on a set sorted by class (CIFAR's test set)
        must not take its first ``n``."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise _err(f"subset size must be >= 1, got {n}")
        idx = np.linspace(0, len(self) - 1, n).round().astype(int)
        return Dataset(self.x[idx], None if self.y is None else self.y[idx], self.classes,
                       f"{self.name} ({n} evenly spaced)", dict(self.meta))


def _err(message: str) -> InputError:
    return InputError(one_line(message))


def _short(exc: BaseException) -> str:
    text = one_line(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _validate_images(x, where: str) -> np.ndarray:
    """Check ``x`` is uint8 NHWC [N,H,W,3] or floating NCHW [N,3,H,W]; return it (float32)."""
    if not isinstance(x, np.ndarray):
        raise _err(f"{where}: images must be a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise _err(
            f"{where}: images must be 4-D (uint8 NHWC [N,H,W,3] or float32 NCHW [N,3,H,W]), "
            f"got shape {tuple(x.shape)} ({x.dtype})"
        )
    if x.shape[0] == 0:
        raise _err(f"{where}: no images (shape {tuple(x.shape)})")
    if x.dtype == np.uint8:
        if x.shape[3] != 3:
            hint = " (looks like NCHW; uint8 images must be NHWC)" if x.shape[1] == 3 else ""
            raise _err(
                f"{where}: uint8 images must be NHWC [N,H,W,3], got shape {tuple(x.shape)}{hint}"
            )
        return x
    if np.issubdtype(x.dtype, np.floating):
        if x.shape[1] != 3:
            hint = (
                " (looks like NHWC; float arrays must be preprocessed NCHW)"
                if x.shape[3] == 3 else ""
            )
            raise _err(
                f"{where}: float images must be NCHW [N,3,H,W], got shape {tuple(x.shape)}{hint}"
            )
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise _err(f"{where}: float images contain NaN or infinity")
        return x
    raise _err(
        f"{where}: images must be uint8 (NHWC pixels) or float32 (NCHW preprocessed), "
        f"got dtype {x.dtype}"
    )


def _validate_labels(y, n: int, where: str, num_classes: int | None = None) -> np.ndarray:
    """Check labels are non-negative integers of length ``n``; return int64 [n]."""
    if not isinstance(y, np.ndarray):
        try:
            y = np.asarray(y)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is bad input
            raise _err(f"{where}: labels are not an array ({_short(exc)})") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise _err(f"{where}: labels must be 1-D [N], got shape {tuple(y.shape)}")
    if y.dtype.kind not in "iu":
        raise _err(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.shape[0] != n:
        raise _err(f"{where}: {y.shape[0]} labels for {n} images")
    y = y.astype(np.int64)
    if n and int(y.min()) < 0:
        raise _err(f"{where}: labels must be >= 0, found {int(y.min())}")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise _err(f"{where}: label {int(y.max())} out of range for {num_classes} classes")
    return y


def _existing_file(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise _err(f"{what} not found: {p}")
    if not p.is_file():
        raise _err(f"{what} is not a file: {p}")
    return p


def _existing_dir(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise _err(f"{what} not found: {p}")
    if not p.is_dir():
        raise _err(f"{what} is not a directory: {p}")
    return p
