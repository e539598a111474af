"""``lightning-margin publish``: export a trained model, evaluate it, write its model card and push it to the Hub.

``lightning-margin publish runs/arcface/last.ckpt --repo-id ORG/arcface-r18`` exports the FaceEmbedder, evaluates it
on the verification sets the training configured (or ``--pairs``), writes the card with those numbers and
``metrics.json``, and uploads the folder with ``huggingface_hub`` (``HF_ENDPOINT`` selects a Hub mirror, ``HF_TOKEN``
or ``hf auth login`` the credentials). ``--output-dir zoo/arcface --no-push`` only writes the folder.

The folder is written completely (into a sibling folder, renamed into place) before any network call, and the upload
never changes it. If the upload fails, :class:`PublishError` says which files the Hub holds with this content and which
it does not, and running the same command again finishes the job: the repository is created only if missing, and
``huggingface_hub`` skips the files the Hub already has.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_margin.embedder import CONFIG_NAME, WEIGHTS_NAME, FaceEmbedder
from lightning_margin.evaluation import format_table, write_metrics_json
from lightning_margin.export import ONNX_NAME, export_onnx, load_any
from lightning_margin.model_card import DEFAULT_TOLERANCE, build_model_card
from lightning_margin.verify import evaluate_embedder, parse_pairs

__all__ = ["EXPORT_FILES", "METRICS_NAME", "PublishError", "PublishResult", "configured_sets", "main", "publish"]

#: File name of the metrics JSON written next to the card.
METRICS_NAME = "metrics.json"
#: Every file publish writes; an existing ``output_dir`` it replaces may hold nothing else.
EXPORT_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md", METRICS_NAME, ONNX_NAME)
# Exit status of `lightning-margin publish` when the upload fails (argparse uses 2 for bad usage).
EXIT_UPLOAD_FAILED = 1


@dataclass
class PublishResult:
    """What :func:`publish` produced: the folder (``None`` once a temporary one is removed), metrics, commit URL."""

    folder: Path | None
    results: dict[str, dict[str, Any]]
    commit_url: str | None


class PublishError(RuntimeError):
    """The upload of a written export failed; the message says what reached the Hub and how to finish.

    Attributes:
        repo_id: The repository.
        folder: The export, complete and unchanged (a temporary one is kept).
        uploaded: Files of the export that the Hub's ``main`` holds with the same content (``None``: unknown, the
            Hub could not be asked).
        not_uploaded: Files of the export that ``main`` does not hold, or holds with other content (``None``:
            unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        repo_id: str,
        folder: Path,
        uploaded: list[str] | None,
        not_uploaded: list[str] | None,
    ) -> None:
        super().__init__(message)
        self.repo_id, self.folder, self.uploaded, self.not_uploaded = repo_id, folder, uploaded, not_uploaded


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
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> PublishResult:
    """Export, evaluate, write the model card and (optionally) push to the Hub repository ``repo_id``.

    The folder is complete before the first request to the Hub, and an existing ``output_dir`` is replaced as a whole
    (a new folder renamed into place), so it never holds a half-written or stale export. A failed upload leaves it as
    it is and raises :class:`PublishError`; calling again with the same arguments finishes the upload.

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
        PublishError: if the upload fails (the export is written and intact).
        ValueError: if ``repo_id`` is not ``ORG/NAME``, no verification set is known, or ``output_dir`` holds files
            publish does not write.
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"`repo_id` must be ORG/NAME, got {repo_id!r}")
    if output_dir is not None:
        # Absolute, so that "." or "out/" name a folder with a parent to stage the new export in.
        output_dir = Path(os.path.abspath(output_dir))
        _check_output_dir(output_dir)  # before the evaluation, which takes a while
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

    def write(folder: Path) -> None:
        embedder.save_pretrained(folder)
        card.save(folder / "README.md")  # replaces save_pretrained's card, which has no results
        write_metrics_json(folder / METRICS_NAME, results)
        if onnx:
            export_onnx(embedder, folder / ONNX_NAME)

    if output_dir is None:
        folder = Path(tempfile.mkdtemp(prefix="lightning-margin-publish-"))
        try:
            write(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    else:
        folder = Path(output_dir)
        _replace_folder(folder, write)
    if not push:
        return PublishResult(folder, results, None)
    summary = ", ".join(f"{name} accuracy {metrics['accuracy']:.4f}" for name, metrics in results.items())
    commit_url = _push(
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


def _replace_folder(target: Path, write: Callable[[Path], None]) -> None:
    """Write a folder with ``write`` into a sibling folder, then rename it to ``target`` (replacing an old export).

    Whoever reads ``target`` (an upload included) finds the previous export or the new one, each complete (or, for
    the instant between two renames, no folder); a failure while writing leaves the previous export in place.
    """
    _check_output_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Hidden siblings on the same file system, so that the renames below are atomic.
    tag = uuid.uuid4().hex[:8]
    staging = target.with_name(f".{target.name}.partial-{tag}")
    staging.mkdir()
    try:
        write(staging)
        if target.exists():
            previous = target.with_name(f".{target.name}.previous-{tag}")
            target.rename(previous)
            try:
                staging.rename(target)
            except BaseException:
                previous.rename(target)
                raise
            previous.unlink() if previous.is_symlink() else shutil.rmtree(previous)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


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


def _push(
    folder: Path,
    repo_id: str,
    *,
    private: bool | None,
    commit_message: str,
    endpoint: str | None,
    token: str | bool | None,
    temporary: bool,
) -> str:
    """``create_repo(exist_ok=True)`` + ``upload_folder``; on failure a :class:`PublishError` naming what arrived."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=commit_message
        )
    except Exception as error:
        raise _upload_error(api, repo_id, folder, error, temporary) from error
    return str(commit)


def _describe(error: BaseException) -> str:
    """One line: the error and what caused it, down to the Hub's answer (huggingface_hub wraps HTTP errors)."""
    from huggingface_hub.errors import HfHubHTTPError

    parts: list[str] = []
    for current in _error_chain(error):
        if isinstance(current, HfHubHTTPError):
            request = current.response.request
            answer = current.server_message or current.response.reason_phrase
            parts.append(f"HTTP {current.response.status_code} from {request.method} {request.url}: {answer}")
            break  # what follows is the transport's view of the same answer
        text = f"{type(current).__name__}: {current}"
        if not parts or str(current) not in parts[-1]:
            parts.append(text)
    return " <- ".join(" ".join(part.split()) for part in parts)


def _error_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_network_failure(error: BaseException) -> bool:
    """Whether the upload failed without an answer from the Hub (refused, reset, timed out, unknown host)."""
    from huggingface_hub.errors import HfHubHTTPError

    chain = _error_chain(error)
    if any(isinstance(current, HfHubHTTPError) for current in chain):
        return False
    return any(isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)) for current in chain)


def _upload_error(api: Any, repo_id: str, folder: Path, error: Exception, temporary: bool) -> PublishError:
    """The :class:`PublishError` for a failed upload, from what the Hub's ``main`` holds now."""
    from huggingface_hub.errors import RepositoryNotFoundError

    local = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    uploaded: list[str] | None = None
    not_uploaded: list[str] | None = None
    if _is_network_failure(error):
        # Asking now would only wait through huggingface_hub's retries (about 25 s) for the same failure.
        state = "The Hub did not answer, so which files arrived is not known."
    else:
        try:
            # huggingface_hub's comparison of a local folder with the Hub's tree (sha256 for LFS/Xet files, git sha1
            # for regular files): what we report is what the Hub holds, not what the client believes it sent.
            verification = api.verify_repo_checksums(repo_id, local_dir=folder)
        except RepositoryNotFoundError:
            uploaded, not_uploaded = [], local
            state = f"{repo_id} does not exist on the Hub: none of the files was uploaded."
        except Exception as query_error:
            state = f"Could not ask the Hub which files arrived: {_describe(query_error)}."
        else:
            different = {mismatch["path"] for mismatch in verification.mismatches} | set(verification.extra_paths)
            uploaded = [path for path in local if path not in different]
            not_uploaded = [path for path in local if path in different]
            state = (
                f"On the Hub ({repo_id}, {verification.revision}): uploaded "
                f"{', '.join(uploaded) or 'none of the files'}; not uploaded: {', '.join(not_uploaded) or 'none'}."
            )
    message = (
        f"Uploading {folder} to {repo_id} failed: {_describe(error)}\n{state}\n"
        f"The export is complete and {'kept' if temporary else 'left'} unchanged in {folder}. Run the same command "
        "again to finish: the files the Hub holds are skipped. (A Hub commit adds all its files or none; large files "
        "sent to the Hub's storage before a commit failed are not in the repository, and the next upload does not "
        "send them again.)"
    )
    return PublishError(message, repo_id=repo_id, folder=folder, uploaded=uploaded, not_uploaded=not_uploaded)


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
    try:
        result = _publish_from_args(args)
    except PublishError as error:
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
