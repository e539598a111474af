"""Atomic writes: a file or a folder is written under a temporary name beside it, then renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

__all__ = ["atomic_path", "write_folder"]

T = TypeVar("T")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed onto ``path`` only when the block succeeds.

    Readers see the old file or the whole new one, never a half-written file, even if the process is killed
    mid-write: the rename (``os.replace``) is atomic on POSIX and Windows when both are in the same folder, and the
    content is flushed to disk (``fsync``) before it. On an exception the temporary file is removed and ``path`` is
    left as it was. The folder is created if needed.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_path(folder / "config.json") as temporary:
        ...     _ = temporary.write_text("{}")
        >>> (folder / "config.json").read_text(), sorted(p.name for p in folder.iterdir())
        ('{}', ['config.json'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        # mkstemp makes the file private (0600); give the result the permissions of any newly created file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_folder(
    target: str | os.PathLike[str],
    write: Callable[[Path], T],
    *,
    merge: bool = False,
    last: str | None = None,
    keep: Collection[str] = (),
) -> T:
    """Write a folder with ``write(staging)`` into a hidden sibling, then move it into place: never half a folder.

    Args:
        target: The folder.
        write: Fills the (empty) staging folder; its return value is returned.
        merge: ``False``: the new folder replaces ``target`` as a whole (renamed into place; the previous folder is
            removed only after), so a reader finds the previous folder or the new one, each complete. ``True``: each
            new file is moved into ``target`` with an atomic ``os.replace`` and files of ``target`` that ``write``
            did not produce are kept; each file is then old or new, never half-written.
        last: With ``merge``, the file moved in last (e.g. the ``config.json`` that makes the folder loadable).
        keep: With ``merge``, files that ``target`` keeps when it holds them already (e.g. a hand-edited card).

    A failure in ``write`` leaves ``target`` as it was and removes the staging folder.

    Example:
        >>> folder = Path(tempfile.mkdtemp()) / "export"
        >>> write_folder(folder, lambda staging: (staging / "a.txt").write_text("new"))
        3
        >>> sorted(path.name for path in folder.parent.iterdir()), (folder / "a.txt").read_text()
        (['export'], 'new')
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if merge:
        target.mkdir(exist_ok=True)
    # A hidden sibling on the same file system, so that the renames below are atomic.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        result = write(staging)
        if merge:
            for path in sorted(staging.iterdir(), key=lambda path: path.name == last):
                if path.name in keep and (target / path.name).exists():
                    continue
                os.replace(path, target / path.name)
        elif target.exists():
            previous = staging.with_name(staging.name.replace(".partial-", ".previous-"))
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
        shutil.rmtree(staging, ignore_errors=True)
    return result
