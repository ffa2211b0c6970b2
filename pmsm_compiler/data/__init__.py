"""Datasets for compiling and running: loaders (numpy only, no torch) and a bundled sample.

``cifar10_test_1000.npz`` in this package holds the original (lossless) CIFAR-10 test images
0-999: ``x`` uint8 [1000, 32, 32, 3] NHWC RGB, ``y`` uint8 labels, ``source`` (provenance).
"""

from .loaders import (
    BUNDLED_SAMPLE,
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGE_EXTENSIONS,
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
