"""Atomic file writes: a temporary file in the destination's folder, then a rename over the destination."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


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
