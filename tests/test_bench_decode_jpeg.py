"""bench/decode_jpeg_npz.py: jpeg.npz (byte streams + offsets) back to the train.npz / test.npz that
pmsm-train reads, pixel for pixel what Pillow decodes; bad input is a one-line error."""

from __future__ import annotations

import io

import numpy as np
import pytest

from bench_scripts import load_bench_script

Image = pytest.importorskip("PIL.Image")


def _script():
    return load_bench_script("decode_jpeg_npz")


def _jpeg_npz(path, n_train=5, n_test=3):
    rng = np.random.default_rng(0)
    arrays, decoded = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        streams, offsets, pixels = [], [0], []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
            data = np.frombuffer(buf.getvalue(), dtype=np.uint8)
            streams.append(data)
            offsets.append(offsets[-1] + len(data))
            pixels.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
        y = rng.integers(0, 10, n).astype(np.uint8)
        arrays.update({f"{split}_jpeg": np.concatenate(streams), f"{split}_offsets": np.asarray(offsets, np.int64),
                       f"{split}_y": y})
        decoded[split] = (np.stack(pixels), y)
    np.savez(path, **arrays)
    return decoded


def test_decodes_every_image_as_pillow_does(tmp_path, capsys):
    expected = _jpeg_npz(tmp_path / "jpeg.npz")
    assert _script().main([str(tmp_path / "jpeg.npz"), str(tmp_path / "out")]) == 0
    for split, (x, y) in expected.items():
        got = np.load(tmp_path / "out" / f"{split}.npz")
        assert got["x"].dtype == np.uint8 and got["x"].shape == (len(y), 32, 32, 3)
        np.testing.assert_array_equal(got["x"], x)
        np.testing.assert_array_equal(got["y"], y)
    # --check against the folder it wrote: identical
    assert _script().main([str(tmp_path / "jpeg.npz"), str(tmp_path / "again"), "--check",
                           str(tmp_path / "out")]) == 0
    assert "identical" in capsys.readouterr().out


def test_check_reports_a_difference_and_writes_nothing(tmp_path, capsys):
    expected = _jpeg_npz(tmp_path / "jpeg.npz")
    x, y = expected["test"]
    (tmp_path / "ref").mkdir()
    np.savez(tmp_path / "ref" / "test.npz", x=255 - x, y=y)
    assert _script().main([str(tmp_path / "jpeg.npz"), str(tmp_path / "out"), "--check", str(tmp_path / "ref")]) == 1
    assert "differ" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_not_a_jpeg_npz_is_a_one_line_error(tmp_path, capsys):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    assert _script().main([str(tmp_path / "other.npz"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a CIFAR jpeg.npz" in err[0]
    assert not (tmp_path / "out").exists()
