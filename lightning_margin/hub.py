"""Verified Hub downloads: every file checked against the hash the Hub lists for it, at one commit.

``huggingface_hub``'s ``hf_hub_download`` checks the number of bytes it receives, not their hash; this module adds
the hash check (through ``HfApi.verify_repo_checksums``) and removes a bad file from the cache so nothing loads it.
:meth:`~lightning_margin.FaceEmbedder.from_pretrained` and :func:`~lightning_margin.artifacts.load_embedder` download
through it. :func:`push_folder` is the way up: an upload whose failure says what reached the Hub.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

__all__ = ["CorruptDownloadError", "UploadError", "VerifiedFiles", "download_verified", "push_folder"]


class CorruptDownloadError(OSError):
    """A file downloaded from the Hub does not hash to what the Hub lists for it; it was removed from the cache."""


@dataclass(frozen=True)
class VerifiedFiles:
    """Files of a Hub repository downloaded at one commit, each checked against the hash the Hub lists for it.

    Attributes:
        repo_id: The repository.
        commit: The commit every file was downloaded at (the revision asked for, resolved once).
        paths: ``{filename: path in the huggingface_hub cache}``; files the commit does not hold are left out.
    """

    repo_id: str
    commit: str
    paths: dict[str, Path]


def download_verified(
    repo_id: str,
    filenames: Sequence[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    endpoint: str | None = None,
) -> VerifiedFiles:
    """Download files of a Hub repository at one commit and check each against the hash the Hub lists for it.

    ``hf_hub_download`` compares the number of bytes it receives with the size the Hub announced, but never their
    hash: the same number of wrong bytes (a damaged or tampered CDN object, a broken mirror or proxy) lands in the
    cache and is loaded. So this resolves ``revision`` to a commit (one ``model_info`` call, which also keeps all
    files from the same commit), downloads each file at that commit with ``hf_hub_download`` (cached files are not
    downloaded again), then compares every one with the commit's tree through ``HfApi.verify_repo_checksums``: the
    sha256 of the content for LFS/Xet files, the git blob sha1 for regular files. A file that does not match is
    removed from the cache (snapshot entry and blob), so nothing loads it later and the next call downloads it again.

    Args:
        repo_id: ``ORG/NAME`` on the Hub.
        filenames: Paths inside the repository.
        revision: Branch, tag or commit (default ``main``).
        cache_dir: The huggingface_hub cache (default ``HF_HUB_CACHE``).
        token: As for ``hf_hub_download``.
        force_download: Download even files that are in the cache.
        endpoint: The Hub (default ``HF_ENDPOINT``).

    Returns:
        The :class:`VerifiedFiles`.

    Raises:
        CorruptDownloadError: if a file does not match the Hub's hash; the message names each file, the hash
            expected and the hash received.

    Example:
        >>> files = download_verified("ORG/arcface-r50", ["config.json", "model.safetensors"])  # doctest: +SKIP
        >>> files.paths["model.safetensors"]  # doctest: +SKIP
        PosixPath('.../models--ORG--arcface-r50/snapshots/<commit>/model.safetensors')
    """
    api = HfApi(endpoint=endpoint, token=token)
    commit = api.model_info(repo_id, revision=revision).sha
    if commit is None:
        raise OSError(f"{repo_id}: the Hub did not say which commit {revision or 'main'} is")
    paths: dict[str, Path] = {}
    for filename in dict.fromkeys(filenames):
        try:
            path = hf_hub_download(
                repo_id,
                filename,
                revision=commit,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                endpoint=endpoint,
            )
        except EntryNotFoundError:
            continue
        paths[filename] = Path(path)
    if not paths:
        return VerifiedFiles(repo_id, commit, paths)
    verification = api.verify_repo_checksums(repo_id, revision=commit, cache_dir=cache_dir, token=token)
    # Only the files asked for: other files of the snapshot are someone else's to check.
    mismatches = [mismatch for mismatch in verification.mismatches if mismatch["path"] in paths]
    if mismatches:
        for mismatch in mismatches:
            _remove_from_cache(paths[mismatch["path"]])
        details = "\n".join(
            f"  {mismatch['path']}: {mismatch['algorithm']} expected {mismatch['expected']}, "
            f"received {mismatch['actual']}"
            for mismatch in mismatches
        )
        raise CorruptDownloadError(
            f"{repo_id}@{commit}: downloaded content does not match the hash the Hub lists for it:\n{details}\n"
            f"The file(s) were removed from the cache ({verification.verified_path}); the next download fetches them "
            "again. If this persists, the server, a mirror (HF_ENDPOINT) or a proxy serves wrong content."
        )
    return VerifiedFiles(repo_id, commit, paths)


def _remove_from_cache(pointer: Path) -> None:
    """Delete a cached file: its snapshot entry and the blob it links to (named by the hash the Hub announced)."""
    blob = Path(os.path.realpath(pointer))
    pointer.unlink(missing_ok=True)
    if blob != pointer:
        blob.unlink(missing_ok=True)


class UploadError(RuntimeError):
    """The upload of a folder to the Hub failed; the message says what reached the Hub and how to finish.

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


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    commit_message: str,
    private: bool | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    temporary: bool = False,
) -> str:
    """Upload a written folder to the Hub model repository ``repo_id`` (created if missing); the commit URL.

    ``create_repo(exist_ok=True)`` then ``upload_folder``, so running it again after a failure finishes the job
    (``huggingface_hub`` skips the files the Hub already holds). The folder is never changed.

    Args:
        folder: The folder to upload.
        repo_id: ``ORG/NAME``.
        private: Create the repository private (``None``: the Hub's default).
        commit_message: The Hub commit message.
        endpoint: The Hub (default ``HF_ENDPOINT``).
        token: The Hub token (default ``HF_TOKEN`` or the ``hf auth login`` one).
        temporary: The folder is a temporary one (the error then says it is kept).

    Raises:
        UploadError: naming the cause (down to the Hub's answer) and which files the Hub's ``main`` holds with this
            content and which it does not.
    """
    folder = Path(folder)
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
    chain = _error_chain(error)
    if any(isinstance(current, HfHubHTTPError) for current in chain):
        return False
    return any(isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)) for current in chain)


def _upload_error(api: Any, repo_id: str, folder: Path, error: Exception, temporary: bool) -> UploadError:
    """The :class:`UploadError` for a failed upload, from what the Hub's ``main`` holds now."""
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
    return UploadError(message, repo_id=repo_id, folder=folder, uploaded=uploaded, not_uploaded=not_uploaded)
