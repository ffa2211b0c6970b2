"""Tests for pmsm_compiler.data: bundled sample, normalization, every loader, bad inputs."""

from __future__ import annotations

import importlib.resources
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pmsm_compiler.data import (
    BUNDLED_SAMPLE,
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    Dataset,
    get_normalization,
    iterate_batches,
    load_bundled_sample,
    load_cifar10_pickle,
    load_cifar100_pickle,
    load_dataset,
    load_image_folder,
    load_npy,
    load_npz,
    normalize,
)
from pmsm_compiler.errors import InputError

RNG = np.random.default_rng(0)


def assert_one_line_error(excinfo, *fragments: str) -> str:
    msg = str(excinfo.value)
    assert msg, "empty error message"
    assert "\n" not in msg and "\r" not in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------
# Bundled sample
# ------------------------------------------------------------------------------------------


def test_bundled_sample_contents():
    ds = load_bundled_sample()
    assert isinstance(ds, Dataset)
    assert ds.x.shape == (1000, 32, 32, 3) and ds.x.dtype == np.uint8
    assert ds.y.shape == (1000,) and ds.y.dtype == np.int64
    assert len(ds) == 1000
    assert ds.classes == CIFAR10_CLASSES and len(ds.classes) == 10
    # Canonical CIFAR-10 test order: not balanced in the first 1,000 images.
    assert np.bincount(ds.y, minlength=10).tolist() == [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
    assert ds.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # cat, ship, ship, airplane, frog...
    assert 0 < ds.x.mean() < 255 and ds.x.min() == 0 and ds.x.max() == 255
    assert not ds.preprocessed and ds.image_shape == (3, 32, 32)


def test_bundled_sample_file_small_and_documented():
    res = importlib.resources.files("pmsm_compiler.data").joinpath(BUNDLED_SAMPLE)
    with importlib.resources.as_file(res) as p:
        assert p.stat().st_size < 4 * 1024 * 1024
        with np.load(p, allow_pickle=False) as z:
            assert set(z.files) == {"x", "y", "source"}
            assert z["x"].dtype == np.uint8 and z["y"].dtype == np.uint8
            src = str(z["source"])
            assert "CIFAR-10" in src and "0-999" in src and "lossless" in src


def test_load_dataset_default_is_bundled():
    for arg in (None, "bundled"):
        ds = load_dataset(arg)
        assert ds.x.shape == (1000, 32, 32, 3)


def test_public_names_unchanged_and_one_module_per_format():
    """The loaders are split by format (npz, cifar, image_folder; loaders dispatches); the package's
    public names are the ones it has always had."""
    import pmsm_compiler.data as d

    assert sorted(d.__all__) == sorted([
        "BUNDLED_SAMPLE", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD",
        "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "Dataset", "get_normalization",
        "iterate_batches", "load_bundled_sample", "load_cifar10_pickle", "load_cifar100_pickle", "load_dataset",
        "load_image_folder", "load_npy", "load_npz", "normalize"])
    assert all(hasattr(d, name) for name in d.__all__)
    modules = {name: getattr(d, name).__module__ for name in d.__all__ if callable(getattr(d, name))}
    assert modules == {
        "Dataset": "pmsm_compiler.data.dataset",
        "load_npz": "pmsm_compiler.data.npz", "load_npy": "pmsm_compiler.data.npz",
        "load_cifar10_pickle": "pmsm_compiler.data.cifar", "load_cifar100_pickle": "pmsm_compiler.data.cifar",
        "load_image_folder": "pmsm_compiler.data.image_folder",
        "load_dataset": "pmsm_compiler.data.loaders", "load_bundled_sample": "pmsm_compiler.data.loaders",
        "get_normalization": "pmsm_compiler.data.normalization", "normalize": "pmsm_compiler.data.normalization",
        "iterate_batches": "pmsm_compiler.data.normalization"}


def test_no_torch_or_pillow_import_at_module_level(tmp_path):
    code = (
        "import sys, pmsm_compiler.data as d; d.load_bundled_sample(); "
        "bad = [m for m in ('torch', 'PIL') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


# ------------------------------------------------------------------------------------------
# Normalization
# ------------------------------------------------------------------------------------------


def test_normalization_constants():
    assert CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
    assert CIFAR10_STD == (0.2470, 0.2435, 0.2616)
    assert CIFAR100_MEAN == (0.5071, 0.4865, 0.4409)
    assert CIFAR100_STD == (0.2673, 0.2564, 0.2762)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)
    assert NORMALIZATIONS == {
        "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
        "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
        "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    }
    assert get_normalization("CIFAR-10") == (CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(InputError) as ei:
        get_normalization("mnist")
    assert_one_line_error(ei, "mnist", "cifar10")


def test_normalize_values_and_layout():
    x = np.zeros((2, 4, 5, 3), np.uint8)
    x[0] = 255
    x[1, 1, 2] = (10, 20, 30)
    out = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    assert out.shape == (2, 3, 4, 5) and out.dtype == np.float32 and out.flags.c_contiguous
    m = np.asarray(CIFAR10_MEAN, np.float32)
    s = np.asarray(CIFAR10_STD, np.float32)
    for c in range(3):
        assert out[0, c, 0, 0] == (np.float32(1.0) - m[c]) / s[c]
        assert out[1, c, 0, 0] == (np.float32(0.0) - m[c]) / s[c]
        v = np.float32(np.float32((10, 20, 30)[c]) / np.float32(255.0))
        assert out[1, c, 1, 2] == (v - m[c]) / s[c]
    np.testing.assert_allclose(out[0, :, 0, 0], (1 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD), rtol=1e-6)


def test_normalize_fixed_op_order_all_pixel_values():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    out = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    m = np.asarray(CIFAR10_MEAN, np.float32)
    s = np.asarray(CIFAR10_STD, np.float32)
    ref = ((x.astype(np.float32) / np.float32(255.0)) - m) / s  # the documented order, float32
    np.testing.assert_array_equal(out, ref.transpose(0, 3, 1, 2))
    # Single image [H,W,C] -> [C,H,W]
    np.testing.assert_array_equal(normalize(x[0], CIFAR10_MEAN, CIFAR10_STD), out[0])


def test_normalize_matches_torch_bitwise():
    torch = pytest.importorskip("torch")
    x = RNG.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    for mean, std in NORMALIZATIONS.values():
        ours = normalize(x, mean, std)
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255.0).sub(m).div(s)
        np.testing.assert_array_equal(ours, t.numpy())


@pytest.mark.parametrize(
    "x, mean, std, frag",
    [
        (np.zeros((1, 4, 4, 3), np.float32), CIFAR10_MEAN, CIFAR10_STD, "uint8"),
        (np.zeros((1, 4, 4, 1), np.uint8), CIFAR10_MEAN, CIFAR10_STD, "channels"),
        (np.zeros((4, 4), np.uint8), CIFAR10_MEAN, CIFAR10_STD, "shape"),
        (np.zeros((1, 4, 4, 3), np.uint8), CIFAR10_MEAN, (1.0, 0.0, 1.0), "std"),
    ],
)
def test_normalize_bad_input(x, mean, std, frag):
    with pytest.raises(InputError) as ei:
        normalize(x, mean, std)
    assert_one_line_error(ei, frag)


# ------------------------------------------------------------------------------------------
# iterate_batches
# ------------------------------------------------------------------------------------------


def test_iterate_batches_uint8_and_float():
    x = RNG.integers(0, 256, size=(10, 4, 4, 3), dtype=np.uint8)
    y = np.arange(10, dtype=np.int64)
    ds = Dataset(x, y, None, "t")
    batches = list(iterate_batches(ds, 4, CIFAR10_MEAN, CIFAR10_STD))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    full = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), full)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    assert all(b[0].dtype == np.float32 for b in batches)

    f = full.copy()
    fds = Dataset(f, None, None, "f")
    out = list(iterate_batches(fds, 3, None, None))
    assert [b[1] for b in out] == [None] * 4
    np.testing.assert_array_equal(np.concatenate([b[0] for b in out]), f)


@pytest.mark.parametrize("bs", [0, -1, 2.5, True, "4"])
def test_iterate_batches_bad_batch_size(bs):
    ds = Dataset(np.zeros((2, 4, 4, 3), np.uint8), None, None, "t")
    with pytest.raises(InputError) as ei:
        list(iterate_batches(ds, bs, CIFAR10_MEAN, CIFAR10_STD))
    assert_one_line_error(ei, "batch size")


def test_iterate_batches_uint8_needs_mean_std():
    ds = Dataset(np.zeros((2, 4, 4, 3), np.uint8), None, None, "t")
    with pytest.raises(InputError) as ei:
        list(iterate_batches(ds, 2, None, None))
    assert_one_line_error(ei, "mean")


# ------------------------------------------------------------------------------------------
# CIFAR pickles (synthetic, official format)
# ------------------------------------------------------------------------------------------


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_rows(n: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _check_chw_to_hwc(x: np.ndarray, rows: np.ndarray) -> None:
    assert x.shape == (rows.shape[0], 32, 32, 3) and x.dtype == np.uint8
    for i, h, w, c in [(0, 0, 0, 0), (0, 5, 7, 1), (rows.shape[0] - 1, 31, 30, 2), (0, 31, 0, 2)]:
        assert x[i, h, w, c] == rows[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(x.transpose(0, 3, 1, 2).reshape(rows.shape[0], -1), rows)


@pytest.fixture
def cifar10_root(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rows = {}
    labels = {}
    for i in range(1, 6):
        rows[i] = _cifar_rows(2)
        labels[i] = [(2 * i) % 10, (2 * i + 1) % 10]
        _dump(d / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": labels[i],
            b"data": rows[i],
            b"filenames": [b"a.png", b"b.png"],
        })
    rows["test"] = _cifar_rows(3)
    labels["test"] = [9, 0, 4]
    _dump(d / "test_batch", {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": labels["test"],
        b"data": rows["test"],
        b"filenames": [b"a.png", b"b.png", b"c.png"],
    })
    _dump(d / "batches.meta", {
        b"num_cases_per_batch": 10000,
        b"label_names": [n.encode() for n in CIFAR10_CLASSES],
        b"num_vis": 3072,
    })
    return tmp_path, rows, labels


def test_cifar10_pickle_test_and_train(cifar10_root):
    parent, rows, labels = cifar10_root
    for root in (parent, parent / "cifar-10-batches-py"):
        ds = load_cifar10_pickle(root, train=False)
        _check_chw_to_hwc(ds.x, rows["test"])
        assert ds.y.tolist() == labels["test"] and ds.y.dtype == np.int64
        assert ds.classes == CIFAR10_CLASSES
    tr = load_cifar10_pickle(parent, train=True)
    _check_chw_to_hwc(tr.x, np.concatenate([rows[i] for i in range(1, 6)]))
    assert tr.y.tolist() == sum((labels[i] for i in range(1, 6)), [])
    # dispatch
    assert load_dataset(parent).y.tolist() == labels["test"]
    assert len(load_dataset(parent, split="train")) == 10
    assert len(load_dataset(parent / "cifar-10-batches-py", split="test")) == 3


@pytest.fixture
def cifar100_root(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine_names = [f"fine{i}" for i in range(100)]
    coarse_names = [f"coarse{i}" for i in range(20)]
    data = {}
    for split, n in (("train", 4), ("test", 2)):
        rows = _cifar_rows(n)
        fine = [int(v) for v in RNG.integers(0, 100, n)]
        coarse = [int(v) for v in RNG.integers(0, 20, n)]
        _dump(d / split, {
            b"filenames": [b"x.png"] * n,
            b"batch_label": split.encode(),
            b"fine_labels": fine,
            b"coarse_labels": coarse,
            b"data": rows,
        })
        data[split] = (rows, fine, coarse)
    _dump(d / "meta", {
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    })
    return tmp_path, data, fine_names, coarse_names


def test_cifar100_pickle(cifar100_root):
    parent, data, fine_names, coarse_names = cifar100_root
    for root in (parent, parent / "cifar-100-python"):
        ds = load_cifar100_pickle(root, train=False)
        rows, fine, _ = data["test"]
        _check_chw_to_hwc(ds.x, rows)
        assert ds.y.tolist() == fine and ds.classes == fine_names
    tr = load_cifar100_pickle(parent, train=True, label="coarse")
    rows, _, coarse = data["train"]
    _check_chw_to_hwc(tr.x, rows)
    assert tr.y.tolist() == coarse and tr.classes == coarse_names
    assert load_dataset(parent).y.tolist() == data["test"][1]
    assert load_dataset(parent, split="train", cifar100_label="coarse").y.tolist() == coarse


# ------------------------------------------------------------------------------------------
# .npz / .npy
# ------------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    x = RNG.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0], np.uint8)
    p = tmp_path / "d.npz"
    np.savez_compressed(p, x=x, y=y)
    for ds in (load_npz(p), load_dataset(p), load_dataset(str(p))):
        np.testing.assert_array_equal(ds.x, x)
        assert ds.y.dtype == np.int64 and ds.y.tolist() == y.tolist()
        assert ds.classes is None and ds.name == "d.npz"
    # x_test / y_test fallback, no labels, classes key
    p2 = tmp_path / "t.npz"
    np.savez(p2, x_test=x, y_test=y, classes=np.array(["a", "b", "c"]))
    ds = load_npz(p2)
    np.testing.assert_array_equal(ds.x, x)
    assert ds.y.tolist() == y.tolist() and ds.classes == ["a", "b", "c"]
    p3 = tmp_path / "nolabels.npz"
    np.savez(p3, x=x)
    assert load_npz(p3).y is None


def test_npz_float_nchw_passthrough(tmp_path):
    f = RNG.standard_normal((4, 3, 5, 5)).astype(np.float32)
    p = tmp_path / "f.npz"
    np.savez(p, x=f, y=np.arange(4))
    ds = load_npz(p)
    assert ds.preprocessed and ds.image_shape == (3, 5, 5)
    np.testing.assert_array_equal(next(iterate_batches(ds, 10, CIFAR10_MEAN, CIFAR10_STD))[0], f)


def test_npy_round_trip(tmp_path):
    x = RNG.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    y = np.array([3, 1, 2, 0], np.int32)
    px, py = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(px, x)
    np.save(py, y)
    ds = load_npy(px, py)
    np.testing.assert_array_equal(ds.x, x)
    assert ds.y.tolist() == [3, 1, 2, 0] and ds.y.dtype == np.int64
    assert load_npy(px).y is None
    assert load_dataset(px, labels_path=py).y.tolist() == [3, 1, 2, 0]

    f = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)
    pf = tmp_path / "f.npy"
    np.save(pf, f)
    ds = load_dataset(pf)
    assert ds.x.dtype == np.float32 and ds.preprocessed
    np.testing.assert_array_equal(ds.x, f)
    # float64 is accepted and converted to float32
    np.save(pf, f.astype(np.float64))
    assert load_npy(pf).x.dtype == np.float32


# ------------------------------------------------------------------------------------------
# Image folder
# ------------------------------------------------------------------------------------------


def _png(path: Path, w: int, h: int, color, mode="RGB"):
    Image = pytest.importorskip("PIL.Image")
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = color
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_image_folder_two_classes(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "dog" / "b.png", 6, 4, (200, 10, 10))
    _png(root / "dog" / "a.png", 6, 4, (100, 10, 10))
    _png(root / "cat" / "z.png", 6, 4, (0, 255, 0))
    _png(root / "cat" / "gray.png", 6, 4, (128, 128, 128), mode="L")  # converted to RGB
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    for ds in (load_image_folder(root), load_dataset(root)):
        assert ds.classes == ["cat", "dog"]
        assert ds.x.shape == (4, 4, 6, 3) and ds.x.dtype == np.uint8
        assert ds.y.tolist() == [0, 0, 1, 1]
        # files sorted within each class: cat/gray, cat/z, dog/a, dog/b
        assert ds.x[0, 0, 0].tolist() == [128, 128, 128]
        assert ds.x[1, 0, 0].tolist() == [0, 255, 0]
        assert ds.x[2, 0, 0].tolist() == [100, 10, 10]
        assert ds.x[3, 0, 0].tolist() == [200, 10, 10]


def test_image_folder_resize_center_crop(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path / "imgs"
    _png(root / "a" / "wide.png", 40, 20, (10, 20, 30))
    # left half red, right half blue, 20x40 (tall): after resize to 8x16 and crop 8x8 both halves stay
    arr = np.zeros((40, 20, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:] = (0, 0, 255)
    (root / "b").mkdir()
    Image.fromarray(arr).save(root / "b" / "tall.png")
    with pytest.raises(InputError) as ei:
        load_image_folder(root)
    assert_one_line_error(ei, "differ in size", "size")
    ds = load_dataset(root, size=8)
    assert ds.x.shape == (2, 8, 8, 3)
    assert ds.x[0, 4, 4].tolist() == [10, 20, 30]
    assert ds.x[1, 4, 0].tolist() == [255, 0, 0] and ds.x[1, 4, 7].tolist() == [0, 0, 255]


# ------------------------------------------------------------------------------------------
# Bad input: every case is a one-line InputError naming the path
# ------------------------------------------------------------------------------------------


def _bad_cases(tmp: Path):
    """(name, callable, expected message fragments)."""
    cases = []

    def add(name, fn, *frags):
        cases.append((name, fn, frags))

    missing = tmp / "nope.npz"
    add("missing path", lambda: load_dataset(missing), "not found", str(missing))
    add("missing npz", lambda: load_npz(missing), "not found", "nope.npz")
    add("missing npy", lambda: load_npy(tmp / "nope.npy"), "nope.npy")
    add("bad split", lambda: load_dataset(None, split="val"), "split")

    garbage = tmp / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file\n" * 10)
    add("corrupted npz", lambda: load_dataset(garbage), "garbage.npz", "not an .npz")
    garbage_npy = tmp / "garbage.npy"
    garbage_npy.write_bytes(b"\x00" * 64)
    add("corrupted npy", lambda: load_dataset(garbage_npy), "garbage.npy", "not a .npy")
    trunc_npy = tmp / "trunc.npy"
    np.save(trunc_npy, np.zeros((4, 8, 8, 3), np.uint8))
    trunc_npy.write_bytes(trunc_npy.read_bytes()[:200])
    add("truncated npy", lambda: load_npy(trunc_npy), "trunc.npy")

    trunc = tmp / "trunc.npz"
    np.savez(tmp / "full.npz", x=np.zeros((2, 4, 4, 3), np.uint8))
    trunc.write_bytes((tmp / "full.npz").read_bytes()[:100])
    add("truncated npz", lambda: load_npz(trunc), "trunc.npz")

    nox = tmp / "nox.npz"
    np.savez(nox, images=np.zeros((2, 4, 4, 3), np.uint8))
    add("npz without x", lambda: load_npz(nox), "nox.npz", "'x'", "images")

    int32 = tmp / "int32.npz"
    np.savez(int32, x=np.zeros((2, 4, 4, 3), np.int32), y=np.zeros(2, np.int64))
    add("npz int32 images", lambda: load_npz(int32), "int32.npz", "dtype")

    nchw = tmp / "nchw.npz"
    np.savez(nchw, x=np.zeros((2, 3, 4, 4), np.uint8))
    add("npz uint8 NCHW", lambda: load_npz(nchw), "nchw.npz", "NHWC")

    nhwcf = tmp / "nhwcf.npy"
    np.save(nhwcf, np.zeros((2, 4, 4, 3), np.float32))
    add("npy float NHWC", lambda: load_npy(nhwcf), "nhwcf.npy", "NCHW")

    nanf = tmp / "nan.npy"
    np.save(nanf, np.full((1, 3, 2, 2), np.nan, np.float32))
    add("npy float NaN", lambda: load_npy(nanf), "nan.npy", "NaN")

    threed = tmp / "threed.npz"
    np.savez(threed, x=np.zeros((4, 4, 3), np.uint8))
    add("npz 3-D images", lambda: load_npz(threed), "threed.npz", "4-D")

    empty = tmp / "empty.npz"
    np.savez(empty, x=np.zeros((0, 4, 4, 3), np.uint8), y=np.zeros(0, np.int64))
    add("npz zero images", lambda: load_npz(empty), "empty.npz", "no images")

    mism = tmp / "mism.npz"
    np.savez(mism, x=np.zeros((3, 4, 4, 3), np.uint8), y=np.zeros(2, np.int64))
    add("npz label count", lambda: load_npz(mism), "mism.npz", "2 labels for 3 images")

    flab = tmp / "flab.npz"
    np.savez(flab, x=np.zeros((2, 4, 4, 3), np.uint8), y=np.zeros(2, np.float32))
    add("npz float labels", lambda: load_npz(flab), "flab.npz", "integers")

    neg = tmp / "neg.npz"
    np.savez(neg, x=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0, -1]))
    add("npz negative labels", lambda: load_npz(neg), "neg.npz", ">= 0")

    objnpz = tmp / "obj.npz"
    np.savez(objnpz, x=np.array([{"a": 1}, None], dtype=object))
    add("npz object array", lambda: load_npz(objnpz), "obj.npz")

    objnpy = tmp / "obj.npy"
    np.save(objnpy, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    add("npy object array", lambda: load_npy(objnpy), "obj.npy")

    npz_as_npy = tmp / "zip.npy"
    npz_as_npy.write_bytes((tmp / "full.npz").read_bytes())
    add("npz named .npy", lambda: load_dataset(npz_as_npy), "zip.npy", ".npz")

    npy_as_npz = tmp / "single.npz"
    np.save(tmp / "single.npy", np.zeros((2, 4, 4, 3), np.uint8))
    npy_as_npz.write_bytes((tmp / "single.npy").read_bytes())
    add("npy named .npz", lambda: load_npz(npy_as_npz), "single.npz")

    good_npy = tmp / "single.npy"
    add("missing labels file", lambda: load_npy(good_npy, tmp / "nolabels.npy"), "nolabels.npy")
    badlab = tmp / "badlab.npy"
    np.save(badlab, np.zeros((5,), np.int64))
    add("labels count npy", lambda: load_npy(good_npy, badlab), "badlab.npy", "5 labels for 2 images")

    txt = tmp / "data.txt"
    txt.write_text("hello")
    add("unsupported suffix", lambda: load_dataset(txt), "data.txt", "unsupported")

    # CIFAR-10 pickle problems
    c10 = tmp / "c10" / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    (c10 / "test_batch").write_bytes(b"\x80\x02garbage")
    add("corrupted pickle", lambda: load_dataset(tmp / "c10"), "test_batch", "CIFAR")

    c10b = tmp / "c10b" / "cifar-10-batches-py"
    c10b.mkdir(parents=True)
    _dump(c10b / "test_batch", [1, 2, 3])
    add("pickle not a dict", lambda: load_cifar10_pickle(tmp / "c10b"), "test_batch", "not a CIFAR pickle")

    c10c = tmp / "c10c" / "cifar-10-batches-py"
    c10c.mkdir(parents=True)
    _dump(c10c / "test_batch", {b"labels": [0]})
    add("pickle without data", lambda: load_cifar10_pickle(c10c), "test_batch", "data")

    c10d = tmp / "c10d" / "cifar-10-batches-py"
    c10d.mkdir(parents=True)
    _dump(c10d / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    add("pickle wrong data shape", lambda: load_cifar10_pickle(c10d), "test_batch", "3072")

    c10e = tmp / "c10e" / "cifar-10-batches-py"
    c10e.mkdir(parents=True)
    _dump(c10e / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    add("pickle label count", lambda: load_cifar10_pickle(c10e), "test_batch", "1 labels for 2 images")
    add("missing train batches", lambda: load_cifar10_pickle(c10e, train=True), "data_batch_1", "missing")

    c10f = tmp / "c10f" / "cifar-10-batches-py"
    c10f.mkdir(parents=True)
    _dump(c10f / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]})
    add("pickle label out of range", lambda: load_cifar10_pickle(c10f), "12", "10 classes")

    add("not a cifar dir", lambda: load_cifar10_pickle(tmp), "cifar-10-batches-py")

    c100 = tmp / "c100" / "cifar-100-python"
    c100.mkdir(parents=True)
    _dump(c100 / "test", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]})
    add("cifar100 missing coarse", lambda: load_cifar100_pickle(c100, label="coarse"), "coarse_labels")
    add("cifar100 bad label kind", lambda: load_cifar100_pickle(c100, label="medium"), "medium")
    add("cifar100 missing train", lambda: load_dataset(tmp / "c100", split="train"), "train")

    # Image folders
    emptydir = tmp / "emptydir"
    emptydir.mkdir()
    add("empty folder", lambda: load_dataset(emptydir), "emptydir", "no class sub-folders")

    loose = tmp / "loose"
    loose.mkdir()
    (loose / "a.png").write_bytes(b"x")
    add("loose images", lambda: load_image_folder(loose), "loose", "sub-folder per class")

    noimg = tmp / "noimg"
    (noimg / "cls").mkdir(parents=True)
    (noimg / "cls" / "readme.txt").write_text("x")
    add("class without images", lambda: load_dataset(noimg), "cls", "no images")

    badimg = tmp / "badimg"
    (badimg / "cls").mkdir(parents=True)
    (badimg / "cls" / "broken.png").write_bytes(b"not really a png")
    add("undecodable image", lambda: load_dataset(badimg), "broken.png", "cannot decode")

    add("bad image size", lambda: load_image_folder(badimg, size=0), "size")
    return cases


@pytest.fixture
def bad_cases(tmp_path):
    return _bad_cases(tmp_path)


def test_every_bad_input_is_a_one_line_input_error(bad_cases):
    failures = []
    for name, fn, frags in bad_cases:
        try:
            fn()
        except InputError as exc:
            msg = str(exc)
            if "\n" in msg or not msg:
                failures.append(f"{name}: not one line: {msg!r}")
            missing = [f for f in frags if f not in msg]
            if missing:
                failures.append(f"{name}: {missing} not in {msg!r}")
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{name}: raised {type(exc).__name__}: {exc}")
        else:
            failures.append(f"{name}: no error")
    assert not failures, "\n".join(failures)
    assert len(bad_cases) >= 35


def test_evenly_spaced_takes_first_last_and_between():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=3)
    ds = Dataset(x, np.arange(10) % 3, [str(i) for i in range(3)], "set")
    four = ds.evenly_spaced(4)
    assert four.x[:, 0, 0, 0].tolist() == [0, 3, 6, 9] and four.y.tolist() == [0, 0, 0, 0]
    assert four.name == "set (4 evenly spaced)"
    assert ds.evenly_spaced(None) is ds and ds.evenly_spaced(10) is ds
    with pytest.raises(InputError, match="must be >= 1"):
        ds.evenly_spaced(0)
