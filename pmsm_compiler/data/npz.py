"""NumPy's files: ``.npz`` archives (keys ``x`` and ``y``) and single ``.npy`` arrays.

Both are read with ``allow_pickle=False``, and every array's header is checked against the bytes
that hold it before anything is allocated: a header that declares more data than the file holds,
or an archive member that expands absurdly (a zip bomb), is refused with a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .dataset import Dataset, _err, _existing_file, _short, _validate_images, _validate_labels

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
