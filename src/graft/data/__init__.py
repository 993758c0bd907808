"""Data: one model (`Labelled` samples in `DataSplits`), one `stratified_split`, and readers that
only parse (image folders, CIFAR-10, scikit-learn's digits, text tables and folders).

Importing this package does not import torch; `graft.data.pipeline` and `graft.data.memory` do.
"""

from graft.data.image_sets import load_image_data
from graft.data.images import IMAGE_EXTENSIONS, load_cifar10, load_digits_images, load_rgb, scan_image_folder
from graft.data.splits import (
    DataSplits,
    Labelled,
    SkippedFile,
    check_val_fraction,
    stratified_split,
    stratified_subset,
)
from graft.data.tables import TABLE_SUFFIXES, TextTable, find_table, split_columns
from graft.data.text import (
    TEXT_FILE_SUFFIX,
    is_split_folder,
    is_text_data,
    load_text_data,
    read_text_column,
    read_text_data,
)
from graft.errors import DataError, UnreadableImage

__all__ = [
    "IMAGE_EXTENSIONS",
    "TABLE_SUFFIXES",
    "TEXT_FILE_SUFFIX",
    "DataError",
    "DataSplits",
    "Labelled",
    "SkippedFile",
    "TextTable",
    "UnreadableImage",
    "check_val_fraction",
    "find_table",
    "is_split_folder",
    "is_text_data",
    "load_cifar10",
    "load_digits_images",
    "load_image_data",
    "load_rgb",
    "load_text_data",
    "read_text_column",
    "read_text_data",
    "scan_image_folder",
    "split_columns",
    "stratified_split",
    "stratified_subset",
]
