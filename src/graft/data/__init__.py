"""Data loading: images (files, folders, bundled sets)."""

from graft.data.images import (
    IMAGE_EXTENSIONS,
    ArraySamples,
    DataError,
    ImageSamples,
    ImageSplits,
    SkippedFile,
    UnreadableImage,
    load_cifar10,
    load_digits_images,
    load_image_splits,
    load_rgb,
    scan_image_folder,
    stratified_subset,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArraySamples",
    "DataError",
    "ImageSamples",
    "ImageSplits",
    "SkippedFile",
    "UnreadableImage",
    "load_cifar10",
    "load_digits_images",
    "load_image_splits",
    "load_rgb",
    "scan_image_folder",
    "stratified_subset",
]
