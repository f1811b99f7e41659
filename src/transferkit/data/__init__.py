"""Where images come from and how they become uint8 arrays.

``resolve_data`` lists the images (folder, CSV, lists, arrays, built-in names) without reading
pixels; ``decode_images`` reads each image once, converts it to RGB, resizes it and caches the
result on disk.

Examples
--------
>>> from transferkit.data import resolve_data, decode_images
>>> images = resolve_data("elpv:train")  # doctest: +SKIP
>>> decoded = decode_images(images, 224)  # doctest: +SKIP
>>> labels = images.subset(decoded.indices).labels  # doctest: +SKIP
"""

from transferkit.data.builtin import BUILTIN_DATASETS, elpv_defective, load_elpv
from transferkit.data.decode import ALPHA_BACKGROUND, DecodedImages, decode_images, default_cache_dir, read_image, release_pages
from transferkit.data.duplicates import (
    content_digests, describe_conflicts, duplicate_groups, label_conflicts, pixel_groups, thumbnail_pixels, train_test_overlap,
)
from transferkit.data.near_copies import NearCopy, near_copies, near_copy_pairs, thumbnails
from transferkit.data.export import export_image_folders
from transferkit.data.pixels import as_unlabelled, is_decoded, load_pixels
from transferkit.data.sources import (
    IMAGE_EXTENSIONS,
    ImageSet,
    SkippedFile,
    check_classes,
    find_images,
    register_dataset,
    resolve_data,
    stratified_indices,
    stratified_sample,
)

__all__ = [
    "ALPHA_BACKGROUND",
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "DecodedImages",
    "NearCopy",
    "ImageSet",
    "SkippedFile",
    "as_unlabelled",
    "check_classes",
    "content_digests",
    "decode_images",
    "default_cache_dir",
    "describe_conflicts",
    "duplicate_groups",
    "elpv_defective",
    "export_image_folders",
    "find_images",
    "is_decoded",
    "label_conflicts",
    "load_pixels",
    "load_elpv",
    "near_copies",
    "near_copy_pairs",
    "pixel_groups",
    "read_image",
    "register_dataset",
    "release_pages",
    "resolve_data",
    "stratified_indices",
    "stratified_sample",
    "thumbnail_pixels",
    "thumbnails",
    "train_test_overlap",
]
