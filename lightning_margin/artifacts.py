"""The artifact layer: from a checkpoint, an exported folder or a Hub id to a :class:`FaceEmbedder` and its card.

``lightning-margin export``, ``verify`` and ``publish`` (and any later command) load models through here:

* :func:`fetch_artifact`: the local path of a model source (a Hub id is downloaded, every file checked against the
  Hub's hash, all at one commit);
* :func:`load_embedder`: the embedder of a model source;
* :func:`load_card_results`: the results its model card records.

The other pieces of the layer live beside it: verified downloads and :func:`~lightning_margin.hub.push_folder` in
:mod:`lightning_margin.hub`, atomic file and folder writes in :mod:`lightning_margin._atomic`.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning_margin.embedder import FaceEmbedder
from lightning_margin.embedder_hub import CONFIG_NAME, WEIGHTS_NAME
from lightning_margin.hub import download_verified
from lightning_margin.model_card import CardSet, load_model_card, parse_model_card

__all__ = ["CARD_NAME", "CHECKPOINT_SUFFIXES", "fetch_artifact", "load_card_results", "load_embedder"]

#: The model card of an exported folder or Hub repository.
CARD_NAME = "README.md"
#: File suffixes taken for Lightning checkpoints of :class:`~lightning_margin.MarginModule`.
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")


def fetch_artifact(source: str | os.PathLike[str], revision: str | None = None) -> Path:
    """The local path of a model source: a checkpoint file, an exported folder, or a Hub id's verified snapshot.

    Args:
        source: A Lightning checkpoint (``.ckpt``), a folder written by ``save_pretrained`` /
            ``lightning-margin export``, or a Hub repository id ``ORG/NAME``.
        revision: Hub revision (branch, tag or commit) for Hub ids.

    Returns:
        The checkpoint file or the folder (for a Hub id, the ``huggingface_hub`` cache's snapshot folder of the
        commit, holding the config, the weights and the card, each checked against the Hub's hash).

    Raises:
        FileNotFoundError: no such file or folder, a folder without ``config.json``, or a Hub repository without
            the config or the weights.
        ValueError: a file that is not a checkpoint.
        CorruptDownloadError: for a Hub id, if a file does not hash to what the Hub lists for it.

    Example:
        >>> fetch_artifact("no/such.ckpt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: no/such.ckpt: no such checkpoint file or exported folder, and not a Hub id ...
    """
    name = str(source)
    path = Path(source)
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"{path}: a model file must be a Lightning checkpoint (.ckpt); or give a folder or Hub id")
        return path
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; not an exported FaceEmbedder folder")
        return path
    if name.count("/") != 1 or name.startswith((".", "/")) or name.endswith(CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(
            f"{name}: no such checkpoint file or exported folder, and not a Hub id of the form ORG/NAME"
        )
    # One resolution and one hash check for the weights, the config and the card, all from the same commit; the
    # embedder then loads from that verified snapshot folder (a local folder: no second round of requests).
    files = download_verified(name, [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME], revision=revision)
    missing = [filename for filename in (CONFIG_NAME, WEIGHTS_NAME) if filename not in files.paths]
    if missing:
        raise FileNotFoundError(f"{name}@{files.commit}: the repository has no {' or '.join(missing)}")
    return files.paths[CONFIG_NAME].parent


def load_embedder(source: str | os.PathLike[str], revision: str | None = None) -> FaceEmbedder:
    """The :class:`FaceEmbedder` of a checkpoint, an exported folder or a Hub id (see :func:`fetch_artifact`).

    A checkpoint is opened with ``weights_only=True`` (:meth:`FaceEmbedder.from_checkpoint`); folders and Hub
    snapshots are read from safetensors only.

    Example:
        >>> import tempfile
        >>> folder = f"{tempfile.mkdtemp()}/tiny"
        >>> FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=32).save_pretrained(folder)
        >>> load_embedder(folder).embedding_size
        8
    """
    path = fetch_artifact(source, revision)
    return FaceEmbedder.from_checkpoint(path) if path.is_file() else FaceEmbedder.from_pretrained(path)


def load_card_results(source: str | os.PathLike[str], revision: str | None = None) -> dict[str, CardSet] | None:
    """The evaluation results a model source's card records, ``{set name: CardSet}``; ``None`` without any.

    A checkpoint has no card; a folder or Hub id without ``README.md``, or whose card lists no results, gives
    ``None``. Pass the path :func:`fetch_artifact` returned to read the card of the same Hub commit as the weights.
    """
    path = fetch_artifact(source, revision)
    card = path / CARD_NAME
    if path.is_file() or not card.is_file():
        return None
    return parse_model_card(load_model_card(card)) or None
