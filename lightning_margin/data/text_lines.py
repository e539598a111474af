"""Line-numbered reading of the text list files (LFW lists, pair lists), with errors that name the file and line."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_text_lines"]

_UTF8_BOM = "\ufeff"


def read_text_lines(path: str | Path, what: str = "list file") -> list[tuple[int, str]]:
    """Every line of a UTF-8 text file as ``(line_number, text)``, numbered as an editor shows them.

    Lines are split on ``\\n`` only (``str.splitlines`` would also break at ``\\x0b``, ``\\x1c``, ``\\x85``,
    ``\\u2028``... and shift every later number), a trailing ``\\r`` is dropped, and each line is decoded on its own,
    so a non-UTF-8 byte is reported with its line. A UTF-8 byte-order mark (what some Windows editors write) is
    ignored.

    Args:
        path: The file.
        what: What the file is, for the message when it does not exist.

    Raises:
        FileNotFoundError: naming ``what`` and the path.
        ValueError: ``path:line: not UTF-8 text: byte 0x.. at column N``.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "pairs.txt"
        >>> _ = path.write_bytes(b"\\xef\\xbb\\xbfa\\tb\\t1\\r\\n\\x0bc\\n")
        >>> read_text_lines(path)
        [(1, 'a\\tb\\t1'), (2, '\\x0bc'), (3, '')]
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append((number, raw.decode("utf-8").removesuffix("\r")))
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path}:{number}: not UTF-8 text: byte 0x{raw[error.start]:02x} at column {error.start + 1}"
            ) from None
    lines[0] = (1, lines[0][1].removeprefix(_UTF8_BOM))
    return lines
