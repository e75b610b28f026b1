"""Data: training pipelines (identity folders, RecordIO), verification `.bin` files, augmentation, synthetic faces.

Example:
    >>> import tempfile
    >>> from ghostface_keras.data import image_folder_dataset, load_bin, synthetic_faces
    >>> faces = synthetic_faces(tempfile.mkdtemp(), num_identities=8, images_per_identity=4)   # faces/<identity>/
    >>> dataset = image_folder_dataset(faces, batch_size=8, augment="brightness", seed=0)
    >>> dataset.class_names[:3], dataset.num_classes
    (['000000', '000001', '000002'], 8)
    >>> images, issame = load_bin("lfw.bin")                                                  # doctest: +SKIP
    >>> shard = image_folder_dataset(faces, batch_size=8, seed=0, num_shards=4, shard_index=1)
    >>> shard.global_batch_size, next(iter(shard))[0].shape      # this process's quarter of each batch
    (8, TensorShape([2, 112, 112, 3]))
    >>> build_augmentation("color", seed=0).op_names
    ['flip', 'brightness', 'contrast', 'saturation', 'clip']
"""

from ghostface_keras.data.augment import AugmentConfig, Augmentation, build_augmentation
from ghostface_keras.data.bins import load_bin, read_bin_entries, save_bin
from ghostface_keras.data.decode import decode_image_bytes
from ghostface_keras.data.folders import FolderIndex, image_folder_dataset, natural_sort_key, scan_image_folder
from ghostface_keras.data.pipeline import ImageSource, build_dataset
from ghostface_keras.data.recordio import RecordIOReader, recordio_dataset, recordio_source
from ghostface_keras.data.sampling import class_balanced_dataset, partial_class_dataset
from ghostface_keras.data.synthetic import render_synthetic_faces, synthetic_faces

__all__ = [
    "AugmentConfig",
    "Augmentation",
    "FolderIndex",
    "ImageSource",
    "RecordIOReader",
    "build_augmentation",
    "build_dataset",
    "class_balanced_dataset",
    "decode_image_bytes",
    "image_folder_dataset",
    "load_bin",
    "natural_sort_key",
    "partial_class_dataset",
    "read_bin_entries",
    "recordio_dataset",
    "recordio_source",
    "render_synthetic_faces",
    "save_bin",
    "scan_image_folder",
    "synthetic_faces",
]
