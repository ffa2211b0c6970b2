"""Datasets for compiling and running: loaders (numpy only, no torch), one module per format
(``npz``, ``cifar``, ``image_folder``; ``loaders.load_dataset`` picks one for a path), the
``normalization`` of pixels into network inputs, and a bundled sample.

``cifar10_test_1000.npz`` in this package holds the original (lossless) CIFAR-10 test images
0-999: ``x`` uint8 [1000, 32, 32, 3] NHWC RGB, ``y`` uint8 labels, ``source`` (provenance).
"""

from .cifar import CIFAR10_CLASSES, load_cifar10_pickle, load_cifar100_pickle
from .dataset import Dataset
from .image_folder import IMAGE_EXTENSIONS, load_image_folder
from .loaders import BUNDLED_SAMPLE, load_bundled_sample, load_dataset
from .normalization import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    get_normalization,
    iterate_batches,
    normalize,
)
from .npz import load_npy, load_npz

__all__ = [
    "BUNDLED_SAMPLE",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "Dataset",
    "get_normalization",
    "iterate_batches",
    "load_bundled_sample",
    "load_cifar10_pickle",
    "load_cifar100_pickle",
    "load_dataset",
    "load_image_folder",
    "load_npy",
    "load_npz",
    "normalize",
]
