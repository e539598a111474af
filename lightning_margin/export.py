"""``lightning-margin export``: turn a training checkpoint into a FaceEmbedder folder (safetensors + config), and ONNX.

``lightning-margin export runs/arcface/last.ckpt out/arcface`` writes ``model.safetensors``, ``config.json`` and a
``README.md`` card; ``--onnx`` adds ``model.onnx``, whose input is the preprocessed batch ``images`` ``[B, 3, H, W]``
and whose output ``embeddings`` ``[B, embedding_size]`` is L2-normalised (no flip augmentation: run the mirror image
through it too and add the embeddings if you want it).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_margin._atomic import atomic_path
from lightning_margin.artifacts import load_embedder
from lightning_margin.embedder import FaceEmbedder

__all__ = ["ONNX_NAME", "export", "export_onnx", "main", "record_config_file", "save_export"]

#: File name of the ONNX model inside an exported folder.
ONNX_NAME = "model.onnx"


class _NormalizedEmbedder(nn.Module):
    """The graph ONNX gets: preprocessed images -> L2-normalised embeddings."""

    def __init__(self, embedder: FaceEmbedder) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.embedder(images), dim=1)


def export_onnx(embedder: FaceEmbedder, path: str | os.PathLike[str], opset_version: int = 17) -> Path:
    """Export an embedder to ONNX: input ``images`` ``[batch, 3, H, W]`` (preprocessed), output ``embeddings``.

    The output is the L2-normalised embedding, i.e. ``embedder.embed(images, flip=False, preprocessed=True)``;
    the batch axis is dynamic. Uses torch's TorchScript-based exporter (``dynamo=False``), which needs only the
    ``onnx`` package (the dynamo exporter also needs ``onnxscript``).

    Example:
        >>> import tempfile
        >>> embedder = FaceEmbedder("test_resnet", embedding_size=8, neck="fc_bn", input_size=32)
        >>> export_onnx(embedder, f"{tempfile.mkdtemp()}/model.onnx").name
        'model.onnx'
    """
    path = Path(path)
    was_training = embedder.training
    embedder.eval()
    size = embedder.input_size
    example = torch.zeros(2, 3, size, size, device=embedder._device())
    try:
        with warnings.catch_warnings(), atomic_path(path) as temporary:
            # The TorchScript exporter announces its deprecation on every call; the choice is documented above.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                _NormalizedEmbedder(embedder),
                (example,),
                str(temporary),
                input_names=["images"],
                output_names=["embeddings"],
                dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                opset_version=opset_version,
                dynamo=False,
            )
    finally:
        embedder.train(was_training)
    return path


def record_config_file(embedder: FaceEmbedder, config_file: str | os.PathLike[str]) -> None:
    """Record a training config file's text in the embedder's config (``training.config_file``), shown in its card."""
    training = embedder.config.get("training") or {}
    training["config_file"] = Path(config_file).read_text(encoding="utf-8")
    embedder.config["training"] = training


def save_export(embedder: FaceEmbedder, folder: str | os.PathLike[str], *, onnx: bool = False) -> Path:
    """Write an embedder's export files to ``folder``: ``save_pretrained``'s files and, with ``onnx``, ``model.onnx``.

    Example:
        >>> import tempfile
        >>> embedder = FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=32)
        >>> sorted(path.name for path in save_export(embedder, f"{tempfile.mkdtemp()}/out").iterdir())
        ['README.md', 'config.json', 'model.safetensors']
    """
    folder = Path(folder)
    embedder.save_pretrained(folder)
    if onnx:
        export_onnx(embedder, folder / ONNX_NAME)
    return folder


def export(
    source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    onnx: bool = False,
    config_file: str | os.PathLike[str] | None = None,
) -> FaceEmbedder:
    """Write the FaceEmbedder of a checkpoint (or an exported folder) to ``output_dir``.

    Args:
        source: A Lightning checkpoint of :class:`~lightning_margin.MarginModule` (opened with
            ``weights_only=True``), an exported folder or a Hub id (:func:`~lightning_margin.artifacts.load_embedder`).
        output_dir: Receives ``model.safetensors``, ``config.json``, ``README.md`` (kept if it exists) and, with
            ``onnx``, ``model.onnx``.
        onnx: Also export ONNX (:func:`export_onnx`).
        config_file: The training config file (e.g. the LightningCLI YAML); its text is recorded in ``config.json``
            under ``training.config_file`` and shown in the card.

    Returns:
        The embedder that was written.
    """
    embedder = load_embedder(source)
    if config_file is not None:
        record_config_file(embedder, config_file)
    save_export(embedder, output_dir, onnx=onnx)
    return embedder


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-margin export``."""
    parser = argparse.ArgumentParser(
        prog="lightning-margin export",
        description="Export a MarginModule checkpoint as a FaceEmbedder folder (safetensors, config.json, card).",
    )
    parser.add_argument("source", help="a Lightning checkpoint (.ckpt) or an exported folder")
    parser.add_argument("output_dir", help="the folder to write")
    parser.add_argument("--onnx", action="store_true", help=f"also write {ONNX_NAME}")
    parser.add_argument("--config", dest="config_file", help="the training config file, recorded in the card")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    embedder = export(args.source, args.output_dir, onnx=args.onnx, config_file=args.config_file)
    files = sorted(path.name for path in Path(args.output_dir).iterdir() if path.is_file())
    print(
        f"exported {embedder.config['backbone']} ({embedder.config['loss']}) to {args.output_dir}: {', '.join(files)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
