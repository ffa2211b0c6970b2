"""CIFAR-10 / CIFAR-100 in the official "python version" layout (``cifar-10-batches-py/``,
``cifar-100-python/``): pickled dicts of uint8 rows.

Security: these are **pickle** files, and unpickling can execute arbitrary code: trusted files only
(e.g. downloaded from the official site and checksum-verified). Prefer ``.npz`` for anything you
exchange.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .dataset import Dataset, _err, _existing_dir, _short, _validate_labels

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"


def _unpickle(p: Path, what: str) -> dict:
    """Unpickle one CIFAR batch file. Pickle can run arbitrary code: trusted files only."""
    if not p.is_file():
        raise _err(f"{what}: missing file {p}")
    try:
        with open(p, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, ValueError, ...
        raise _err(f"{what}: {p} is not a readable CIFAR pickle ({_short(exc)})") from None
    if not isinstance(obj, dict):
        raise _err(f"{what}: {p} is not a CIFAR pickle (holds {type(obj).__name__}, not a dict)")
    return obj


def _get(d: dict, key: str):
    """Look up ``key`` as bytes (official files) or str (re-pickled files)."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _cifar_images(d: dict, p: Path, what: str) -> np.ndarray:
    data = _get(d, "data")
    if data is None:
        raise _err(f"{what}: {p} is not a CIFAR pickle (no 'data' entry)")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        got = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise _err(f"{what}: {p} 'data' must be a uint8 array, got {got}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] == 0:
        raise _err(f"{what}: {p} 'data' must be [N, 3072], got shape {tuple(data.shape)}")
    # Each row is the 32x32 red plane, then green, then blue (row-major CHW).
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _cifar_labels(d: dict, key: str, n: int, p: Path, what: str) -> np.ndarray:
    labels = _get(d, key)
    if labels is None:
        raise _err(f"{what}: {p} is not a CIFAR pickle (no '{key}' entry)")
    return _validate_labels(labels, n, f"{what}: {p} '{key}'")


def _names(meta: dict, key: str, p: Path, what: str) -> list[str]:
    names = _get(meta, key)
    if not isinstance(names, (list, tuple)) or not names:
        raise _err(f"{what}: {p} has no '{key}' list")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError as exc:
        raise _err(f"{what}: {p} '{key}' is not text ({_short(exc)})") from None


def _resolve_cifar_dir(root, dirname: str, marker: str, what: str) -> Path:
    r = _existing_dir(root, f"{what} folder")
    if r.name != dirname and (r / dirname).is_dir():
        return r / dirname
    if r.name == dirname or (r / marker).is_file():
        return r
    raise _err(f"{r}: neither a {dirname}/ folder nor its parent")


def load_cifar10_pickle(root, train: bool = False) -> Dataset:
    """Load CIFAR-10 from the official "python version" layout.

    ``root`` is the ``cifar-10-batches-py`` folder itself or its parent. The training split is
    ``data_batch_1`` .. ``data_batch_5`` (50,000 images), the test split ``test_batch`` (10,000);
    each is a pickled dict with ``b"data"`` (uint8 ``[N, 3072]``, row-major CHW: 1024 red, 1024
    green, 1024 blue) and ``b"labels"``; ``batches.meta`` holds ``b"label_names"`` (the standard
    names are used if it is absent).

    Security: CIFAR's official format is Python pickle, and unpickling can execute arbitrary
    code. Only point this at files you trust (e.g. downloaded from the official site and
    checksum-verified). Prefer ``.npz`` for anything you exchange.
    """
    what = "CIFAR-10"
    d = _resolve_cifar_dir(root, _CIFAR10_DIR, "batches.meta", what)
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    xs, ys = [], []
    for name in files:
        p = d / name
        batch = _unpickle(p, what)
        x = _cifar_images(batch, p, what)
        xs.append(x)
        ys.append(_cifar_labels(batch, "labels", len(x), p, what))
    classes = list(CIFAR10_CLASSES)
    meta_path = d / "batches.meta"
    if meta_path.exists():
        classes = _names(_unpickle(meta_path, what), "label_names", meta_path, what)
    x = np.ascontiguousarray(np.concatenate(xs))
    y = np.concatenate(ys)
    y = _validate_labels(y, len(x), f"{what}: {d}", len(classes))
    return Dataset(x, y, classes, f"cifar10-{'train' if train else 'test'}")


def load_cifar100_pickle(root, train: bool = False, label: str = "fine") -> Dataset:
    """Load CIFAR-100 from the official "python version" layout.

    ``root`` is the ``cifar-100-python`` folder itself or its parent; it holds ``train``
    (50,000 images), ``test`` (10,000) and ``meta``. Each split is a pickled dict with
    ``b"data"`` (uint8 ``[N, 3072]``, row-major CHW), ``b"fine_labels"`` (100 classes) and
    ``b"coarse_labels"`` (20 superclasses); ``label`` picks ``"fine"`` or ``"coarse"``.
    ``meta`` holds ``b"fine_label_names"`` / ``b"coarse_label_names"`` (classes are ``None``
    if it is absent).

    Security: CIFAR's official format is Python pickle, and unpickling can execute arbitrary
    code. Only point this at files you trust.
    """
    what = "CIFAR-100"
    if label not in ("fine", "coarse"):
        raise _err(f"CIFAR-100 label must be 'fine' or 'coarse', got {label!r}")
    d = _resolve_cifar_dir(root, _CIFAR100_DIR, "meta", what)
    p = d / ("train" if train else "test")
    batch = _unpickle(p, what)
    x = np.ascontiguousarray(_cifar_images(batch, p, what))
    y = _cifar_labels(batch, f"{label}_labels", len(x), p, what)
    classes = None
    meta_path = d / "meta"
    if meta_path.exists():
        classes = _names(_unpickle(meta_path, what), f"{label}_label_names", meta_path, what)
        y = _validate_labels(y, len(x), f"{what}: {p}", len(classes))
    return Dataset(x, y, classes, f"cifar100-{'train' if train else 'test'}-{label}")


def _is_cifar10_dir(p: Path) -> bool:
    return p.name == _CIFAR10_DIR or (p / "batches.meta").is_file() or (p / "test_batch").is_file()


def _is_cifar100_dir(p: Path) -> bool:
    return p.name == _CIFAR100_DIR or (
        (p / "meta").is_file() and ((p / "test").is_file() or (p / "train").is_file())
    )


def cifar_layout(p: Path) -> str | None:
    """"cifar10" or "cifar100" when folder ``p`` is, or contains, that pickle layout; else None."""
    if (p / _CIFAR10_DIR).is_dir() or _is_cifar10_dir(p):
        return "cifar10"
    if (p / _CIFAR100_DIR).is_dir() or _is_cifar100_dir(p):
        return "cifar100"
    return None
