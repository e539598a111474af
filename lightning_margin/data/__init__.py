"""Face data for lightning-margin: readers, writers, preprocessing and the ``FaceDataModule``.

Readers yield RGB ``uint8`` tensors ``[3, H, W]`` (or ``transform`` of them); training sets yield ``(image, label)``
and expose ``num_classes``, verification sets yield ``(image1, image2, issame)``.

* LFW deep-funneled: :class:`LFWPeople` (training), :class:`LFWPairs` (verification), list parsers.
* One folder per identity: :class:`FaceImageFolder` (cached listing).
* insightface RecordIO: :class:`RecordIODataset`, :func:`write_recordio` (no MXNet needed).
* insightface verification ``.bin``: :func:`read_bin` (restricted unpickler), :func:`write_bin`,
  :class:`VerificationBinDataset`.
* In memory: :class:`SyntheticFaces`, :class:`SyntheticPairs`.
* :class:`FaceTransform`: centre crop, resize, flip, normalise to ``[-1, 1]``.
* :class:`FaceDataModule`: one training source, named verification sets, configured by strings such as
  ``"lfw:dev_train"``; data found under ``data_root`` or ``$LIGHTNING_MARGIN_DATA``.
* :mod:`~lightning_margin.data.pack` (``lightning-margin data pack``) and :func:`download_lfw`.
"""

from lightning_margin.data.corrupt import (
    CorruptImagesSkippedWarning,
    SkipCorruptDataset,
    SkipCounter,
    SkipReportingDataLoader,
    collate_skipping_none,
)
from lightning_margin.data.datamodule import FaceDataModule
from lightning_margin.data.decode import (
    CorruptImageError,
    center_crop_box,
    decode_image,
    read_file_bytes,
    read_image_file,
)
from lightning_margin.data.download import LFW_LIST_MD5, download_lfw, md5sum
from lightning_margin.data.image_folder import FaceImageFolder, scan_image_folder
from lightning_margin.data.lfw import (
    LFW_SPLITS,
    LFWPairs,
    LFWPeople,
    PairEntry,
    PersonEntry,
    lfw_image_path,
    read_pairs_list,
    read_people_list,
)
from lightning_margin.data.memory import InMemoryDataset
from lightning_margin.data.pack import pack_image_folder, pack_pairs_bin, read_pair_list
from lightning_margin.data.recordio import (
    RECORDIO_MAGIC,
    RecordIODataset,
    RecordIOError,
    RecordIOHeader,
    RecordIOSummary,
    frame_record,
    pack_record,
    read_framed_record,
    read_recordio_index,
    unpack_record,
    write_recordio,
)
from lightning_margin.data.sampler import (
    DeferSigtermInWorkers,
    ResumableDataLoader,
    ResumableRandomSampler,
    sample_seed,
)
from lightning_margin.data.sources import DATA_ENV, build_training_set, build_verification_set, parse_source
from lightning_margin.data.synthetic import SyntheticFaces, SyntheticPairs, synthetic_face
from lightning_margin.data.transforms import (
    LFW_CROP_SIZE,
    FaceTransform,
    center_crop,
    decode_and_transform,
    horizontal_flip,
    normalize,
    normalize_batch,
    preprocess_face,
    random_shift,
    resize,
)
from lightning_margin.data.verification_bin import UnsafePickleError, VerificationBinDataset, read_bin, write_bin

__all__ = [
    "DATA_ENV",
    "LFW_CROP_SIZE",
    "LFW_LIST_MD5",
    "LFW_SPLITS",
    "RECORDIO_MAGIC",
    "CorruptImageError",
    "CorruptImagesSkippedWarning",
    "DeferSigtermInWorkers",
    "FaceDataModule",
    "FaceImageFolder",
    "FaceTransform",
    "InMemoryDataset",
    "LFWPairs",
    "LFWPeople",
    "PairEntry",
    "PersonEntry",
    "RecordIODataset",
    "RecordIOError",
    "RecordIOHeader",
    "RecordIOSummary",
    "ResumableDataLoader",
    "ResumableRandomSampler",
    "SkipCorruptDataset",
    "SkipCounter",
    "SkipReportingDataLoader",
    "SyntheticFaces",
    "SyntheticPairs",
    "UnsafePickleError",
    "VerificationBinDataset",
    "build_training_set",
    "build_verification_set",
    "center_crop",
    "center_crop_box",
    "collate_skipping_none",
    "decode_and_transform",
    "decode_image",
    "download_lfw",
    "frame_record",
    "horizontal_flip",
    "lfw_image_path",
    "md5sum",
    "normalize",
    "normalize_batch",
    "pack_image_folder",
    "pack_pairs_bin",
    "pack_record",
    "parse_source",
    "preprocess_face",
    "random_shift",
    "read_bin",
    "read_file_bytes",
    "read_framed_record",
    "read_image_file",
    "read_pair_list",
    "read_pairs_list",
    "read_people_list",
    "read_recordio_index",
    "resize",
    "sample_seed",
    "scan_image_folder",
    "synthetic_face",
    "unpack_record",
    "write_bin",
    "write_recordio",
]
