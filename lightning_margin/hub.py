"""Verified Hub downloads: every file checked against the hash the Hub lists for it, at one commit.

``huggingface_hub``'s ``hf_hub_download`` checks the number of bytes it receives, not their hash; this module adds
the hash check (through ``HfApi.verify_repo_checksums``) and removes a bad file from the cache so nothing loads it.
:meth:`~lightning_margin.FaceEmbedder.from_pretrained` and ``lightning-margin verify`` download through it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

__all__ = ["CorruptDownloadError", "VerifiedFiles", "download_verified"]


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
