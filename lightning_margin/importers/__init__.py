"""Bring your own model: import face embedders trained with other projects as :class:`~lightning_margin.FaceEmbedder`.

One registry (:mod:`lightning_margin.importers.registry`) behind ``lightning-margin import SOURCE ...`` and
``FaceEmbedder.from_import(SOURCE, ...)``; each source registers one importer:

* ``insightface``: an arcface_torch ``backbone.pth`` (r18, r34, r50, r100, r200, mbf, mbf_large);
  :mod:`lightning_margin.importers.insightface`.
* ``adaface``: an AdaFace Lightning ``.ckpt`` (ir_18, ir_34, ir_50, ir_101, ir_se_50);
  :mod:`lightning_margin.importers.adaface`.
* ``dlib``: dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``), read from dlib's own
  serialisation without dlib; :mod:`lightning_margin.importers.dlib`.

Checkpoints are read without running any code they name (:func:`read_checkpoint`), and weights that do not fit the
architecture raise :class:`CheckpointMismatchError` in the file's own key names.

Example:
    >>> from lightning_margin.importers import list_importers
    >>> list_importers()  # doctest: +ELLIPSIS
    ['adaface', 'dlib', ...'insightface'...]
"""

# Importing the built-in importers registers them.
from lightning_margin.importers import adaface, dlib, insightface  # noqa: F401
from lightning_margin.importers._checkpoint import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    key_mismatch,
    load_checked,
    read_checkpoint,
)
from lightning_margin.importers.registry import (
    ImportedWeights,
    Importer,
    create_importer,
    imported_record,
    list_importers,
    register_importer,
)

__all__ = [
    "CheckpointMismatchError",
    "ImportedWeights",
    "Importer",
    "UnsafeCheckpointError",
    "create_importer",
    "imported_record",
    "key_mismatch",
    "list_importers",
    "load_checked",
    "read_checkpoint",
    "register_importer",
]
