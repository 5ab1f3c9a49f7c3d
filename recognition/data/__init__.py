"""Face-recognition data: ImageFolder, insightface RecordIO, verification .bin, LFW pairs, collate.

Samples are (image float (3, S, S) in [0, 1], label int); with on_error="skip" an unreadable sample is
None (its file is logged by logger "recognition.data") and `collate_skip_none` drops it from the batch.
"""

from lh2face.landmark_sidecar import LandmarkSidecar, SidecarError, load_sidecar

from .image_folder import IMAGE_EXTENSIONS, ImageFolderDataset, ImageListDataset
from .lfw import LFWPairs, lfw_image_path, read_lfw_pairs
from .recordio import (
    IRHeader,
    RecordIODataset,
    RecordIOError,
    RecordIOReader,
    pack_payload,
    read_record,
    unpack_payload,
    write_record,
    write_recordio,
)
from .transforms import CollatedBatch, RandomHorizontalFlip, collate_skip_none, decode_rgb, to_tensor
from .verification_bin import (
    UnsafePickleError,
    VerificationSet,
    load_verification_bin,
    restricted_loads,
    write_verification_bin,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ImageListDataset",
    "LandmarkSidecar",
    "SidecarError",
    "load_sidecar",
    "LFWPairs",
    "lfw_image_path",
    "read_lfw_pairs",
    "IRHeader",
    "RecordIODataset",
    "RecordIOError",
    "RecordIOReader",
    "pack_payload",
    "unpack_payload",
    "read_record",
    "write_record",
    "write_recordio",
    "CollatedBatch",
    "RandomHorizontalFlip",
    "collate_skip_none",
    "decode_rgb",
    "to_tensor",
    "UnsafePickleError",
    "VerificationSet",
    "load_verification_bin",
    "restricted_loads",
    "write_verification_bin",
]
