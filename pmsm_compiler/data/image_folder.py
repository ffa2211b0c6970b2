"""ImageNet-style image folders, ``root/<class>/<image>``, decoded with Pillow (optional)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import Dataset, _err, _existing_dir, _short

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif",
)


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
