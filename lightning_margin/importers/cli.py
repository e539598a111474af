"""``lightning-margin import SOURCE ... OUTPUT_DIR``: write an embedder folder from a model trained elsewhere.

Each registered importer (:func:`~lightning_margin.importers.list_importers`) is a sub-command with its own
arguments, followed by ``OUTPUT_DIR``::

    lightning-margin import insightface backbone.pth out/r50 --arch auto
    lightning-margin import adaface adaface_ir50_ms1mv2.ckpt out/adaface-ir50 --arch ir_50

``OUTPUT_DIR`` is an ordinary :class:`~lightning_margin.FaceEmbedder` folder (``model.safetensors``,
``config.json``, ``README.md``) that ``from_pretrained``, ``verify``, ``export`` and ``publish`` take like any other.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_margin.embedder import FaceEmbedder
from lightning_margin.importers import CheckpointMismatchError, UnsafeCheckpointError
from lightning_margin.importers.registry import create_importer, list_importers

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-margin import`` parser: one sub-command per registered importer, then ``OUTPUT_DIR``."""
    parser = argparse.ArgumentParser(
        prog="lightning-margin import",
        description="Import a face embedder trained elsewhere as a FaceEmbedder folder (safetensors, config, card).",
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name in list_importers():
        importer = create_importer(name)
        sub = sources.add_parser(name, help=importer.description, description=importer.description)
        importer.add_arguments(sub)
        sub.add_argument("output_dir", metavar="OUTPUT_DIR", help="the embedder folder to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-margin import``; exit status 1 with the reason on a refused or unfit file."""
    arguments = vars(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))
    source, output_dir = arguments.pop("source"), arguments.pop("output_dir")
    try:
        embedder = FaceEmbedder.from_import(source, **arguments)
    except (FileNotFoundError, UnsafeCheckpointError, CheckpointMismatchError, ValueError) as error:
        print(f"lightning-margin import {source}: {error}", file=sys.stderr)
        return 1
    embedder.save_pretrained(output_dir)
    config = embedder.config
    record = (config.get("training") or {}).get("imported", {})
    side = config["input_size"]
    swap = " (embed() takes RGB images and swaps them)" if config["channel_order"] != "RGB" else ""
    print(
        f"imported {source} {record.get('arch')} from {record.get('file')} to {output_dir}: backbone "
        f"{config['backbone']}, {config['embedding_size']}-d; input {side}x{side} faces aligned with "
        f"{config.get('alignment')}, {config['channel_order']} channel order{swap}"
    )
    if record.get("license"):
        print(f"weights licence: {record['license']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
