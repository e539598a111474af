"""``lightning-margin publish``: export a trained model, evaluate it, write its model card and push it to the Hub.

``lightning-margin publish runs/arcface/last.ckpt --repo-id ORG/arcface-r18`` exports the FaceEmbedder, evaluates it
on the verification sets the training configured (or ``--pairs``), writes the card with those numbers and
``metrics.json``, and uploads the folder with ``huggingface_hub`` (``HF_ENDPOINT`` selects a Hub mirror, ``HF_TOKEN``
or ``hf auth login`` the credentials). ``--output-dir zoo/arcface --no-push`` only writes the folder.

The folder is written completely (into a sibling folder, renamed into place) before any network call, and the upload
never changes it. If the upload fails, :class:`~lightning_margin.hub.UploadError` says which files the Hub holds
with this content and which it does not, and running the same command again finishes the job: the repository is
created only if missing, and ``huggingface_hub`` skips the files the Hub already has.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_margin._atomic import write_folder
from lightning_margin.artifacts import CARD_NAME, load_embedder
from lightning_margin.data.sources import default_verification_sets, parse_pairs
from lightning_margin.embedder import FaceEmbedder
from lightning_margin.embedder_hub import CONFIG_NAME, WEIGHTS_NAME
from lightning_margin.evaluation import evaluate_embedder, format_table, write_metrics_json
from lightning_margin.export import ONNX_NAME, record_config_file, save_export
from lightning_margin.hub import UploadError, push_folder
from lightning_margin.metrics.functional import DEFAULT_FAR
from lightning_margin.model_card import DEFAULT_TOLERANCE, build_model_card

__all__ = ["EXPORT_FILES", "METRICS_NAME", "PublishResult", "configured_sets", "main", "publish"]

#: File name of the metrics JSON written next to the card.
METRICS_NAME = "metrics.json"
#: Every file publish writes; an existing ``output_dir`` it replaces may hold nothing else.
EXPORT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, METRICS_NAME, ONNX_NAME)
# Exit status of `lightning-margin publish` when the upload fails (argparse uses 2 for bad usage).
EXIT_UPLOAD_FAILED = 1


@dataclass
class PublishResult:
    """What :func:`publish` produced: the folder (``None`` once a temporary one is removed), metrics, commit URL."""

    folder: Path | None
    results: dict[str, dict[str, Any]]
    commit_url: str | None


def configured_sets(embedder: FaceEmbedder) -> dict[str, str]:
    """The verification sets of the embedder's training data module (``training.data.val_sets``), if recorded.

    A data module configured without ``val_sets`` validated on its training source's default sets
    (:func:`~lightning_margin.data.sources.default_verification_sets`): those are returned.
    """
    data = (embedder.config.get("training") or {}).get("data") or {}
    sets = data.get("val_sets")
    if sets is None and data.get("train"):
        sets = default_verification_sets(str(data["train"]))  # what the data module validated on
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
    far: Sequence[float] = DEFAULT_FAR,
    num_folds: int = 10,
    onnx: bool = False,
    private: bool | None = None,
    license: str = "apache-2.0",
    commit_message: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> PublishResult:
    """Export, evaluate, write the model card and (optionally) push to the Hub repository ``repo_id``.

    The folder is complete before the first request to the Hub, and an existing ``output_dir`` is replaced as a whole
    (a new folder renamed into place), so it never holds a half-written or stale export. A failed upload leaves it as
    it is and raises :class:`~lightning_margin.hub.UploadError`; calling again with the same arguments finishes the
    upload.

    Args:
        source: A Lightning checkpoint of :class:`~lightning_margin.MarginModule` or an exported folder.
        repo_id: ``ORG/NAME`` on the Hub (created if missing).
        sets: ``{name: source}`` verification sets; default: the sets the training configured.
        data_root: Folder holding ``lfw/`` (default ``$LIGHTNING_MARGIN_DATA``).
        output_dir: Where to write the folder (kept); default a temporary folder, removed after a successful push
            (kept, and named in the error, after a failed one). An existing folder may only hold :data:`EXPORT_FILES`.
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
        endpoint: The Hub (default ``HF_ENDPOINT``).
        token: The Hub token (default ``HF_TOKEN`` or the ``hf auth login`` one).

    Returns:
        A :class:`PublishResult`.

    Raises:
        UploadError: if the upload fails (the export is written and intact).
        ValueError: if ``repo_id`` is not ``ORG/NAME``, no verification set is known, or ``output_dir`` holds files
            publish does not write.
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"`repo_id` must be ORG/NAME, got {repo_id!r}")
    if output_dir is not None:
        # Absolute, so that "." or "out/" name a folder with a parent to stage the new export in.
        output_dir = Path(os.path.abspath(output_dir))
        _check_output_dir(output_dir)  # before the evaluation, which takes a while
    embedder = load_embedder(source)
    if config_file is not None:
        record_config_file(embedder, config_file)
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

    def write(folder: Path) -> None:
        save_export(embedder, folder, onnx=onnx)
        card.save(folder / CARD_NAME)  # replaces save_pretrained's card, which has no results
        write_metrics_json(folder / METRICS_NAME, results)

    if output_dir is None:
        folder = Path(tempfile.mkdtemp(prefix="lightning-margin-publish-"))
        try:
            write(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    else:
        folder = Path(output_dir)
        _check_output_dir(folder)  # again: the folder may have changed during the evaluation
        write_folder(folder, write)
    if not push:
        return PublishResult(folder, results, None)
    summary = ", ".join(f"{name} accuracy {metrics['accuracy']:.4f}" for name, metrics in results.items())
    commit_url = push_folder(
        folder,
        repo_id,
        private=private,
        commit_message=commit_message or f"Publish {embedder.config.get('loss')} face embedder ({summary})",
        endpoint=endpoint,
        token=token,
        temporary=output_dir is None,
    )
    if output_dir is None:
        shutil.rmtree(folder, ignore_errors=True)
        return PublishResult(None, results, commit_url)
    return PublishResult(folder, results, commit_url)


def _check_output_dir(target: Path) -> None:
    """Refuse an ``output_dir`` holding anything but :data:`EXPORT_FILES`: publish replaces it as a whole."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"output_dir {target} exists and is not a folder")
    foreign = sorted(entry.name for entry in target.iterdir() if entry.name not in EXPORT_FILES)
    if foreign:
        raise ValueError(
            f"output_dir {target} holds files publish does not write ({', '.join(foreign)}); publish replaces the "
            f"whole folder, so give a new or empty folder, or one holding only {', '.join(EXPORT_FILES)}"
        )


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
    parser.add_argument(
        "--far", type=float, nargs="+", default=list(DEFAULT_FAR), help=f"false accept rates (default {DEFAULT_FAR})"
    )
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
    try:
        result = _publish_from_args(args)
    except UploadError as error:
        print(f"lightning-margin publish: {error}", file=sys.stderr)
        return EXIT_UPLOAD_FAILED
    print(format_table(result.results, name_header="verification set"))
    if result.folder is not None:
        print(f"written to {result.folder}")
    if result.commit_url is not None:
        print(f"pushed to {args.repo_id}: {result.commit_url}")
    return 0


def _publish_from_args(args: argparse.Namespace) -> PublishResult:
    return publish(
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


if __name__ == "__main__":
    sys.exit(main())
