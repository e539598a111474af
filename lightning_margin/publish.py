"""``lightning-margin publish``: export a trained model, evaluate it, write its model card and push it to the Hub.

``lightning-margin publish runs/arcface/last.ckpt --repo-id ORG/arcface-r18`` exports the FaceEmbedder, evaluates it
on the verification sets the training configured (or ``--pairs``), writes the card with those numbers and
``metrics.json``, and uploads the folder with ``huggingface_hub`` (``HF_ENDPOINT`` selects a Hub mirror, ``HF_TOKEN``
or ``hf auth login`` the credentials). ``--output-dir zoo/arcface --no-push`` only writes the folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_margin.embedder import FaceEmbedder
from lightning_margin.evaluation import format_table, write_metrics_json
from lightning_margin.export import ONNX_NAME, export_onnx, load_any
from lightning_margin.model_card import DEFAULT_TOLERANCE, build_model_card
from lightning_margin.verify import evaluate_embedder, parse_pairs

__all__ = ["METRICS_NAME", "PublishResult", "configured_sets", "main", "publish"]

#: File name of the metrics JSON written next to the card.
METRICS_NAME = "metrics.json"


@dataclass
class PublishResult:
    """What :func:`publish` produced: the folder (``None`` once a temporary one is removed), metrics, commit URL."""

    folder: Path | None
    results: dict[str, dict[str, Any]]
    commit_url: str | None


def configured_sets(embedder: FaceEmbedder) -> dict[str, str]:
    """The verification sets of the embedder's training data module (``training.data.val_sets``), if recorded."""
    data = (embedder.config.get("training") or {}).get("data") or {}
    sets = data.get("val_sets") or {}
    if not sets and data.get("train") == "lfw:dev_train":
        sets = {"lfw_dev_test": "lfw:dev_test"}  # the data module's default for View 1 training
    return {str(name): str(source) for name, source in sets.items()}


def publish(
    source: str | os.PathLike[str],
    repo_id: str,
    *,
    sets: Mapping[str, str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    push: bool = True,
    flip: bool = True,
    far: Sequence[float] = (1e-3,),
    num_folds: int = 10,
    onnx: bool = False,
    private: bool | None = None,
    license: str = "apache-2.0",
    commit_message: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> PublishResult:
    """Export, evaluate, write the model card and (optionally) push to the Hub repository ``repo_id``.

    Args:
        source: A Lightning checkpoint of :class:`~lightning_margin.MarginModule` or an exported folder.
        repo_id: ``ORG/NAME`` on the Hub (created if missing).
        sets: ``{name: source}`` verification sets; default: the sets the training configured.
        data_root: Folder holding ``lfw/`` (default ``$LIGHTNING_MARGIN_DATA``).
        output_dir: Where to write the folder (kept); default a temporary folder, removed afterwards.
        push: Upload the folder (``create_repo(exist_ok=True)`` then ``upload_folder``).
        flip: Flip test-time augmentation in the evaluation.
        far: False accept rates for TAR@FAR.
        num_folds: Folds of the k-fold accuracy.
        onnx: Also write and upload ``model.onnx``.
        private: Create the repository private (``None``: the Hub's default).
        license: The card's license.
        commit_message: Default: "Publish <loss> face embedder (<metrics>)".
        config_file: The training config file, recorded in ``config.json`` and the card.
        batch_size: Pairs per evaluation batch.
        num_workers: Data loader workers.
        progress: Show progress bars.

    Returns:
        A :class:`PublishResult`.
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"`repo_id` must be ORG/NAME, got {repo_id!r}")
    embedder = load_any(source)
    if config_file is not None:
        training = embedder.config.get("training") or {}
        training["config_file"] = Path(config_file).read_text(encoding="utf-8")
        embedder.config["training"] = training
    sets = dict(sets) if sets else configured_sets(embedder)
    if not sets:
        raise ValueError(f"{source}: the training configured no verification sets; name them (--pairs)")
    results = {
        name: evaluate_embedder(
            embedder,
            spec,
            data_root=data_root,
            flip=flip,
            far=far,
            num_folds=num_folds,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        )
        for name, spec in sets.items()
    }
    card = build_model_card(
        embedder.config,
        results,
        sets,
        repo_id=repo_id,
        flip=flip,
        num_folds=num_folds,
        license=license,
        tolerance=DEFAULT_TOLERANCE,
    )
    temporary = tempfile.TemporaryDirectory(prefix="lightning-margin-publish-") if output_dir is None else None
    folder = Path(temporary.name if temporary is not None else output_dir)  # type: ignore[arg-type]
    try:
        embedder.save_pretrained(folder)
        card.save(folder / "README.md")  # replaces save_pretrained's card, which has no results
        write_metrics_json(folder / METRICS_NAME, results)
        if onnx:
            export_onnx(embedder, folder / ONNX_NAME)
        commit_url = None
        if push:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            summary = ", ".join(f"{name} accuracy {metrics['accuracy']:.4f}" for name, metrics in results.items())
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                repo_type="model",
                commit_message=commit_message or f"Publish {embedder.config.get('loss')} face embedder ({summary})",
            )
            commit_url = str(commit)
    finally:
        if temporary is not None:
            temporary.cleanup()
    return PublishResult(None if temporary is not None else folder, results, commit_url)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-margin publish``."""
    parser = argparse.ArgumentParser(
        prog="lightning-margin publish",
        description="Export a checkpoint, evaluate it, write the model card with the numbers and push it to the Hub.",
    )
    parser.add_argument("source", help="a Lightning checkpoint (.ckpt) or an exported folder")
    parser.add_argument("--repo-id", required=True, help="the Hub repository, ORG/NAME")
    parser.add_argument(
        "--pairs",
        nargs="+",
        action="extend",
        metavar="SET",
        help="verification sets (lfw:dev_test, bin:PATH, synthetic[:N], NAME=SOURCE); default: the training's",
    )
    parser.add_argument("--data-root", help="folder holding lfw/ (default: $LIGHTNING_MARGIN_DATA)")
    parser.add_argument("--output-dir", help="write the folder here and keep it (default: a temporary folder)")
    parser.add_argument("--no-push", action="store_true", help="write the folder only (needs --output-dir)")
    parser.add_argument("--no-flip", action="store_true", help="evaluate without flip test-time augmentation")
    parser.add_argument("--far", type=float, nargs="+", default=[1e-3], help="false accept rates (default 0.001)")
    parser.add_argument("--onnx", action="store_true", help=f"also write and upload {ONNX_NAME}")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--license", default="apache-2.0", help="the card's license (default apache-2.0)")
    parser.add_argument("--config", dest="config_file", help="the training config file, recorded in the card")
    parser.add_argument("--commit-message", help="the Hub commit message")
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per evaluation batch (default 64)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.no_push and not args.output_dir:
        parser.error("--no-push needs --output-dir (otherwise nothing is kept)")
    result = publish(
        args.source,
        args.repo_id,
        sets=parse_pairs(args.pairs) if args.pairs else None,
        data_root=args.data_root,
        output_dir=args.output_dir,
        push=not args.no_push,
        flip=not args.no_flip,
        far=args.far,
        onnx=args.onnx,
        private=True if args.private else None,
        license=args.license,
        commit_message=args.commit_message,
        config_file=args.config_file,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    print(format_table(result.results, name_header="verification set"))
    if result.folder is not None:
        print(f"written to {result.folder}")
    if result.commit_url is not None:
        print(f"pushed to {args.repo_id}: {result.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
