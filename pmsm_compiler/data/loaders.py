"""Data loading for the compiler and runtime: numpy only, no torch. One module per format; this
one picks the loader for a path (:func:`load_dataset`) and holds the bundled sample.

Every loader returns a :class:`~pmsm_compiler.data.dataset.Dataset` (uint8 NHWC pixels or float32
NCHW preprocessed tensors, int64 labels or None). Every failure a user can cause (missing file,
corrupted file, wrong keys, shapes or dtypes, empty folder, a pickle that is not CIFAR) raises
:class:`~pmsm_compiler.errors.InputError` with a one-line message that names the offending path.

Supported sources (see :func:`load_dataset`):

* ``None`` / ``"bundled"``: the 1,000 lossless CIFAR-10 test images shipped in the package;
* ``.npz`` with keys ``x`` and ``y`` (or ``x_test`` / ``y_test``), optional ``classes``, and
  ``.npy`` holding one image array, labels optionally from a second ``.npy`` (``npz``);
* the official CIFAR-10 / CIFAR-100 "python version" folders (``cifar-10-batches-py/``,
  ``cifar-100-python/``) -- these are **pickle** files (``cifar``);
* an ImageNet-style image folder ``root/<class>/<image>``, which needs Pillow (``image_folder``).

Normalization and batching: ``normalization``.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from ..errors import InputError
from .cifar import CIFAR10_CLASSES, cifar_layout, load_cifar10_pickle, load_cifar100_pickle
from .dataset import Dataset, _err, _short, _validate_labels
from .image_folder import load_image_folder
from .npz import load_npy, load_npz

#: File name of the bundled sample inside the ``pmsm_compiler.data`` package: the original
#: (lossless) CIFAR-10 test images 0-999 in canonical order, keys ``x``, ``y``, ``source``.
BUNDLED_SAMPLE = "cifar10_test_1000.npz"


def load_bundled_sample() -> Dataset:
    """The 1,000 original (lossless) CIFAR-10 test images 0-999 shipped with the package.

    uint8 NHWC ``[1000, 32, 32, 3]`` with their labels, in canonical CIFAR-10 test order (so the
    classes are not exactly balanced: 86..112 images per class).
    """
    resource = importlib.resources.files("pmsm_compiler.data").joinpath(BUNDLED_SAMPLE)
    try:
        with importlib.resources.as_file(resource) as path:
            ds = load_npz(path)
    except InputError as exc:
        raise _err(f"bundled sample is missing or damaged ({exc}); reinstall pmsm-compiler") from None
    except (OSError, FileNotFoundError) as exc:
        raise _err(f"bundled sample {BUNDLED_SAMPLE} is missing ({_short(exc)}); reinstall pmsm-compiler") from None
    ds.classes = list(CIFAR10_CLASSES)
    ds.name = "cifar10-test-1000 (bundled)"
    _validate_labels(ds.y, len(ds), "bundled sample", len(CIFAR10_CLASSES))
    return ds


def load_dataset(
    path=None,
    split: str = "test",
    *,
    labels_path=None,
    size: int | None = None,
    cifar100_label: str = "fine",
) -> Dataset:
    """Load a dataset from whatever ``path`` is.

    * ``None`` or ``"bundled"``: the bundled 1,000-image CIFAR-10 test sample;
    * a ``.npz`` file: :func:`load_npz`;
    * a ``.npy`` file: :func:`load_npy` (``labels_path`` optional);
    * a folder that is or contains ``cifar-10-batches-py`` / ``cifar-100-python``: the official
      CIFAR pickles (trusted files only), ``split`` ``"test"`` (default) or ``"train"``;
    * any other folder: an image folder ``root/<class>/<image>`` (``size`` optional).

    Every failure raises :class:`InputError` with a one-line message naming the path.
    """
    if split not in ("train", "test"):
        raise _err(f"split must be 'train' or 'test', got {split!r}")
    if path is None or (isinstance(path, str) and path == "bundled"):
        return load_bundled_sample()
    if not isinstance(path, (str, os.PathLike)):
        raise _err(f"data path must be a string or path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise _err(f"data path not found: {p}")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".npz":
            return load_npz(p)
        if suffix == ".npy":
            return load_npy(p, labels_path)
        raise _err(
            f"unsupported data file {p} (expected .npz, .npy, a CIFAR python folder "
            "or an image folder)"
        )
    if not p.is_dir():
        raise _err(f"data path is neither a file nor a folder: {p}")
    train = split == "train"
    layout = cifar_layout(p)
    if layout == "cifar10":
        return load_cifar10_pickle(p, train=train)
    if layout == "cifar100":
        return load_cifar100_pickle(p, train=train, label=cifar100_label)
    return load_image_folder(p, size=size)
