"""Decode ../shared/data/cifar10/jpeg.npz (the JPEG byte streams) into the train.npz / test.npz that
pmsm-train reads, on a machine that has only the 55 MB JPEG form (a lent GPU machine: the
decoded arrays are over the size a call may carry).

jpeg.npz holds ``train_jpeg`` / ``test_jpeg`` (uint8 streams), ``train_offsets`` / ``test_offsets``
(int64, N+1; image i is ``stream[off[i]:off[i+1]]``) and ``train_y`` / ``test_y``. Decoding with
Pillow gives exactly the pixels of train.npz / test.npz (../shared/README.md);
``--check DIR`` compares against the decoded arrays in DIR where they exist.

    python bench/decode_jpeg_npz.py scratch/cifar10/jpeg.npz /tmp/cifar10 [--check ../shared/data/cifar10]
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np


def decode_split(stream: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    n = len(offsets) - 1
    out = None
    for i in range(n):
        with Image.open(io.BytesIO(stream[offsets[i]:offsets[i + 1]].tobytes())) as im:
            pixels = np.asarray(im.convert("RGB"))
        if out is None:
            out = np.empty((n,) + pixels.shape, dtype=np.uint8)
        out[i] = pixels
    return out if out is not None else np.empty((0, 32, 32, 3), dtype=np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jpeg_npz")
    ap.add_argument("out_dir")
    ap.add_argument("--check", default="", help="folder with train.npz / test.npz to compare against")
    args = ap.parse_args(argv)
    try:
        src = np.load(args.jpeg_npz)
        splits = {s: (src[f"{s}_jpeg"], src[f"{s}_offsets"], src[f"{s}_y"]) for s in ("train", "test")}
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {args.jpeg_npz} is not a CIFAR jpeg.npz ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    decoded = {}
    for split, (stream, offsets, y) in splits.items():
        if len(offsets) != len(y) + 1:
            print(f"error: {split}: {len(offsets)} offsets for {len(y)} labels", file=sys.stderr)
            return 2
        decoded[split] = (decode_split(stream, offsets), np.asarray(y, dtype=np.uint8))
    if args.check:
        for split, (x, y) in decoded.items():
            ref_path = os.path.join(args.check, f"{split}.npz")
            if os.path.exists(ref_path):
                ref = np.load(ref_path)
                if not (np.array_equal(ref["x"], x) and np.array_equal(ref["y"], y)):
                    print(f"error: {split}: decoded pixels differ from {ref_path}", file=sys.stderr)
                    return 1
                print(f"{split}: {len(x)} images, identical to {ref_path}")
    os.makedirs(args.out_dir, exist_ok=True)
    for split, (x, y) in decoded.items():
        final = os.path.join(args.out_dir, f"{split}.npz")
        tmp = final + ".tmp.npz"
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, final)
        print(f"{split}: {len(x)} images -> {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
