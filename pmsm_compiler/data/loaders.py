"""Data loading for the compiler and runtime: numpy only, no torch.

Every loader returns a :class:`Dataset` whose ``x`` is either

* ``uint8`` images, NHWC ``[N, H, W, 3]``, RGB, 0..255 (raw pixels; normalize with
  :func:`normalize` or :func:`iterate_batches`), or
* ``float32`` tensors, NCHW ``[N, 3, H, W]``, already preprocessed (passed through as they are).

Labels ``y`` are ``int64 [N]`` or ``None``.

Every failure a user can cause (missing file, corrupted file, wrong keys, shapes or dtypes, empty
folder, a pickle that is not CIFAR) raises :class:`~pmsm_compiler.errors.InputError` with a
one-line message that names the offending path.

Supported sources (see :func:`load_dataset`):

* ``None`` / ``"bundled"``: the 1,000 lossless CIFAR-10 test images shipped in the package;
* ``.npz`` with keys ``x`` and ``y`` (or ``x_test`` / ``y_test``), optional ``classes``;
* ``.npy`` holding one image array, labels optionally from a second ``.npy``;
* the official CIFAR-10 / CIFAR-100 "python version" folders (``cifar-10-batches-py/``,
  ``cifar-100-python/``) -- these are **pickle** files, see :func:`load_cifar10_pickle`;
* an ImageNet-style image folder ``root/<class>/<image>`` (needs Pillow).

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

import importlib.resources
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import InputError, one_line

__all__ = [
    "Dataset",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "CIFAR10_CLASSES",
    "BUNDLED_SAMPLE",
    "IMAGE_EXTENSIONS",
    "get_normalization",
    "normalize",
    "load_bundled_sample",
    "load_npz",
    "load_npy",
    "load_cifar10_pickle",
    "load_cifar100_pickle",
    "load_image_folder",
    "load_dataset",
    "iterate_batches",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

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

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

#: File name of the bundled sample inside the ``pmsm_compiler.data`` package: the original
#: (lossless) CIFAR-10 test images 0-999 in canonical order, keys ``x``, ``y``, ``source``.
BUNDLED_SAMPLE = "cifar10_test_1000.npz"

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif",
)

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


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


def get_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` for a name in :data:`NORMALIZATIONS` (case-insensitive)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in NORMALIZATIONS:
        raise _err(
            f"unknown normalization {name!r}; choose one of {', '.join(sorted(NORMALIZATIONS))}"
        )
    return NORMALIZATIONS[key]


# --------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Bundled sample, .npz, .npy
# --------------------------------------------------------------------------------------------


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


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")

#: An .npz member over NPZ_CHECKED_BYTES that expands more than NPZ_MAX_EXPANSION times from its
#: compressed size is refused as a zip bomb: image data compresses a few times at most, and a
#: repeated or constant array (e.g. 1,000 images tiled 1,400 times: 4 GiB in a 3 MiB LZMA
#: member) would have every tool run millions of copies.
NPZ_MAX_EXPANSION = 100
NPZ_CHECKED_BYTES = 64 * 2**20


def _npy_header(f, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the .npy stream ``f``, read without its data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        elif hasattr(fmt, "_read_array_header"):  # 3.0: a utf-8 header, no public reader
            shape, _, dtype = fmt._read_array_header(f, version)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # noqa: BLE001 - ValueError, EOFError, SyntaxError from a crafted header
        raise _err(f"{where}: not a valid .npy array ({_short(exc)})") from None
    return tuple(int(d) for d in shape), dtype, f.tell()


def _declared_bytes(shape, dtype) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * dtype.itemsize


def _check_npz_member(zf, member: str, archive: Path) -> None:
    """Refuse, before anything is allocated, an .npz member whose .npy header declares more
    data than the member holds (impossible), or that expands absurdly (a zip bomb)."""
    where = f"{archive} [{member}]"
    info = zf.getinfo(member)
    archive_size = archive.stat().st_size
    if info.compress_size > archive_size:
        raise _err(f"{where}: declares {info.compress_size:,} compressed bytes in a {archive_size:,}-byte file")
    with zf.open(info) as f:
        shape, dtype, header = _npy_header(f, where)
    declared = _declared_bytes(shape, dtype)
    if header + declared > info.file_size:
        raise _err(f"{where}: the .npy header declares shape {list(shape)} {dtype} ({declared:,} bytes), but the "
                   f"member holds {max(0, info.file_size - header):,} bytes of data")
    if info.file_size > NPZ_CHECKED_BYTES and info.file_size > NPZ_MAX_EXPANSION * max(1, info.compress_size):
        ratio = info.file_size / max(1, info.compress_size)
        raise _err(f"{where}: {info.file_size:,} bytes ({list(shape)} {dtype}) from {info.compress_size:,} "
                   f"compressed bytes, a {ratio:.0f}x expansion (the limit is {NPZ_MAX_EXPANSION}x for members over "
                   f"{NPZ_CHECKED_BYTES // 2**20} MiB): a repeated or constant array (zip bomb), not a data set")


def _check_npy_file(p: Path, what: str) -> None:
    """Refuse an .npy file whose header declares more data than the file holds, before reading."""
    try:
        with open(p, "rb") as f:
            shape, dtype, header = _npy_header(f, f"{what} {p}")
    except OSError as exc:
        raise _err(f"cannot read {what} {p}: {_short(exc)}") from None
    declared = _declared_bytes(shape, dtype)
    size = p.stat().st_size
    if header + declared > size:
        raise _err(f"{what} {p}: the header declares shape {list(shape)} {dtype} ({declared:,} bytes), but the "
                   f"file holds {max(0, size - header):,} bytes of data")


def _magic(p: Path, what: str) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(6)
    except OSError as exc:
        raise _err(f"cannot read {what} {p}: {_short(exc)}") from None


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    head = _magic(p, ".npz file")
    if head.startswith(_NPY_MAGIC):
        raise _err(f"{p} holds a single array, not an .npz archive with keys 'x' and 'y'")
    if not head.startswith(_ZIP_MAGICS):
        raise _err(f"cannot read .npz file {p}: not an .npz (zip) archive")
    try:
        # our own handle: np.load(path) leaks its file when the zip directory is corrupt
        f = open(p, "rb")
    except OSError as exc:
        raise _err(f"cannot read .npz file {p}: {_short(exc)}") from None
    with f:
        return _read_npz_arrays(f, p)


def _read_npz_arrays(f, p: Path) -> dict[str, np.ndarray]:
    try:
        obj = np.load(f, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - BadZipFile, ValueError, OSError, EOFError, ...
        raise _err(f"cannot read .npz file {p}: {_short(exc)}") from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise _err(f"{p} holds a single array, not an .npz archive with keys 'x' and 'y'")
    try:
        with obj:
            keys = list(obj.files)
            wanted = [k for k in ("x", "y", "x_test", "y_test", "classes") if k in keys]
            names = set(obj.zip.namelist())
            for k in wanted:
                _check_npz_member(obj.zip, k if k in names else k + ".npy", p)  # numpy's lookup order
            arrays = {k: obj[k] for k in wanted}
            arrays["__keys__"] = np.array(keys)  # for error messages
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - zlib.error, BadZipFile, ValueError (object arrays)
        raise _err(f"cannot read .npz file {p}: {_short(exc)}") from None
    return arrays


def load_npz(path) -> Dataset:
    """Load an ``.npz`` archive: ``x`` (uint8 NHWC [N,H,W,3], or float32 NCHW preprocessed)
    and ``y`` (integer labels [N], optional); ``x_test`` / ``y_test`` are used when ``x`` is
    absent. An optional ``classes`` key (1-D strings) names the classes. Read with
    ``allow_pickle=False``.
    """
    p = _existing_file(path, ".npz file")
    arrays = _read_npz(p)
    keys = [str(k) for k in arrays.pop("__keys__").tolist()]
    if "x" in arrays:
        xk, yk = "x", "y"
    elif "x_test" in arrays:
        xk, yk = "x_test", "y_test"
    else:
        raise _err(f"{p}: no 'x' (or 'x_test') array; keys are {keys}")
    where = f"{p} [{xk}]"
    x = _validate_images(arrays[xk], where)
    classes = None
    if "classes" in arrays:
        c = arrays["classes"]
        if c.ndim != 1 or c.dtype.kind not in "US":
            raise _err(f"{p}: 'classes' must be a 1-D string array, got {c.dtype} {tuple(c.shape)}")
        classes = [v.decode() if isinstance(v, bytes) else str(v) for v in c.tolist()]
    y = None
    if yk in arrays:
        y = _validate_labels(arrays[yk], len(x), f"{p} [{yk}]", len(classes) if classes else None)
    return Dataset(x, y, classes, p.name)


def _read_npy(p: Path, what: str) -> np.ndarray:
    head = _magic(p, what)
    if head.startswith(_ZIP_MAGICS):
        raise _err(f"{p} is an .npz archive, not a single .npy array; name it .npz")
    if not head.startswith(_NPY_MAGIC):
        raise _err(f"cannot read {what} {p}: not a .npy file")
    _check_npy_file(p, what)
    try:
        obj = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise _err(f"cannot read {what} {p}: {_short(exc)}") from None
    if isinstance(obj, np.lib.npyio.NpzFile):
        obj.close()
        raise _err(f"{p} is an .npz archive, not a single .npy array; name it .npz")
    return obj


def load_npy(path, labels_path=None) -> Dataset:
    """Load images from an ``.npy`` array: uint8 NHWC ``[N,H,W,3]`` pixels, or float32 NCHW
    ``[N,3,H,W]`` tensors that are already preprocessed. Labels, if given, come from a second
    ``.npy`` holding integers ``[N]``. Read with ``allow_pickle=False``.
    """
    p = _existing_file(path, ".npy file")
    x = _validate_images(_read_npy(p, ".npy file"), str(p))
    y = None
    if labels_path is not None:
        lp = _existing_file(labels_path, "labels file")
        y = _validate_labels(_read_npy(lp, "labels file"), len(x), str(lp))
    return Dataset(x, y, None, p.name)


# --------------------------------------------------------------------------------------------
# CIFAR python (pickle) layout
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Image folder
# --------------------------------------------------------------------------------------------


def _resize_center_crop(img, size: int, resample):
    """Resize so the shorter side is ``size`` (aspect kept), then center-crop ``size x size``.

    Same arithmetic as torchvision ``Resize(size)`` + ``CenterCrop(size)`` on PIL images.
    """
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample)
    left = int(round((nw - size) / 2.0))
    top = int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def load_image_folder(root, size: int | None = None) -> Dataset:
    """Load an ImageNet-style folder ``root/<class>/<image>``.

    Classes are the sub-folder names, sorted; label ``i`` is ``classes[i]``. Images (by
    extension, see :data:`IMAGE_EXTENSIONS`; hidden files skipped) are decoded with Pillow and
    converted to RGB. With ``size``, each is resized so its shorter side is ``size`` (bilinear)
    and center-cropped to ``size x size``; without it, all images must already have the same size.
    Needs Pillow (``pip install pillow``).
    """
    r = _existing_dir(root, "image folder")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise _err(f"image size must be a positive integer, got {size!r}")
        size = int(size)
    try:
        from PIL import Image
    except ImportError:
        raise _err(
            f"loading the image folder {r} needs Pillow: pip install pillow "
            "(or pip install 'pmsm-compiler[images]')"
        ) from None

    try:
        class_dirs = sorted(
            e for e in os.listdir(r) if not e.startswith(".") and (r / e).is_dir()
        )
    except OSError as exc:
        raise _err(f"cannot list image folder {r}: {_short(exc)}") from None
    if not class_dirs:
        loose = [e for e in os.listdir(r) if e.lower().endswith(IMAGE_EXTENSIONS)]
        hint = " (images must be inside one sub-folder per class)" if loose else ""
        raise _err(f"image folder {r} has no class sub-folders{hint}")

    items: list[tuple[Path, int]] = []
    for label, cname in enumerate(class_dirs):
        cdir = r / cname
        try:
            names = sorted(
                e for e in os.listdir(cdir)
                if not e.startswith(".") and e.lower().endswith(IMAGE_EXTENSIONS)
                and (cdir / e).is_file()
            )
        except OSError as exc:
            raise _err(f"cannot list class folder {cdir}: {_short(exc)}") from None
        if not names:
            raise _err(f"class folder {cdir} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        items.extend((cdir / n, label) for n in names)

    resample = getattr(Image, "Resampling", Image).BILINEAR
    x = None
    first = None
    labels = np.empty(len(items), dtype=np.int64)
    for i, (p, label) in enumerate(items):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size is not None:
                    im = _resize_center_crop(im, size, resample)
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, OSError, bombs, ...
            raise _err(f"cannot decode image {p}: {_short(exc)}") from None
        if x is None:
            first = p
            x = np.empty((len(items),) + arr.shape, dtype=np.uint8)
        elif arr.shape != x.shape[1:]:
            raise _err(
                f"images in {r} differ in size: {first} is {x.shape[2]}x{x.shape[1]}, "
                f"{p} is {arr.shape[1]}x{arr.shape[0]}; pass a size to resize and center-crop"
            )
        x[i] = arr
        labels[i] = label
    return Dataset(x, labels, list(class_dirs), r.name or str(r))


# --------------------------------------------------------------------------------------------
# Dispatch and batching
# --------------------------------------------------------------------------------------------


def _is_cifar10_dir(p: Path) -> bool:
    return p.name == _CIFAR10_DIR or (p / "batches.meta").is_file() or (p / "test_batch").is_file()


def _is_cifar100_dir(p: Path) -> bool:
    return p.name == _CIFAR100_DIR or (
        (p / "meta").is_file() and ((p / "test").is_file() or (p / "train").is_file())
    )


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
    if (p / _CIFAR10_DIR).is_dir() or _is_cifar10_dir(p):
        return load_cifar10_pickle(p, train=train)
    if (p / _CIFAR100_DIR).is_dir() or _is_cifar100_dir(p):
        return load_cifar100_pickle(p, train=train, label=cifar100_label)
    return load_image_folder(p, size=size)


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
