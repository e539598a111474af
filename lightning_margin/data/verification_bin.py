"""insightface verification ``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...), read safely.

A ``.bin`` is a pickle of ``(images, issame)``: ``images`` a list of encoded images (JPEG/PNG bytes), ``issame`` a
list of bools, one per pair; images ``2 * i`` and ``2 * i + 1`` form pair ``i``. Files written by Python 2 hold
``str`` instead of ``bytes``; they load as bytes with ``encoding="bytes"``, as insightface loads them.

Unpickling an arbitrary file can run arbitrary code (a ``__reduce__`` payload names a callable, which the unpickler
looks up with ``find_class`` and calls). :func:`read_bin` uses an unpickler whose ``find_class`` refuses every
global: the legitimate content is only tuples, lists, bytes/str and bools, none of which need a global, so no
callable can ever be reached. The exceptions are how Python 3 writes ``bytes`` at pickle protocols 0-2:
``_codecs.encode`` resolves to a stand-in that only turns a ``str`` into latin-1 bytes, and ``bytes`` (used for an
empty image) to one that only returns ``b""``.

A corrupt file must not make the unpickler reserve memory: CPython's unpickler allocates what a length field or memo
index asks for before reading (a flipped bit in a ``LONG_BINPUT`` index zeroes a multi-gigabyte memo table). So the
opcodes are first walked with :func:`pickletools.genops`, building nothing, and every length, frame and memo index
must fit the file before the real unpickler runs.

Files whose lists were stored as numpy arrays (or whose bools are ``numpy.bool_``) are refused too, with a message
saying so: numpy's pickles reconstruct through globals (``numpy.core.multiarray._reconstruct``, ``numpy.dtype``)
that cannot be admitted without trusting the file. Convert such a file once, where you trust it, with
``write_bin(path, [bytes(x) for x in images], [bool(x) for x in issame])``.
"""

from __future__ import annotations

import functools
import io
import pickle
import pickletools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lightning_margin.data.transforms import decode_and_transform

__all__ = ["UnsafePickleError", "VerificationBinDataset", "read_bin", "write_bin"]


class UnsafePickleError(pickle.UnpicklingError):
    """A ``.bin`` pickle that references a global (class or function): refused, never executed."""


def _latin1_encode(text: Any, encoding: Any = "latin1", *, source: str) -> bytes:
    """Stand-in for ``_codecs.encode``, admitted only as Python 3 uses it to pickle ``bytes`` at protocols 0-2.

    Python 3 stores ``bytes`` in protocol 0-2 pickles as ``_codecs.encode(text, "latin1")``. This shim performs
    exactly that and nothing else: any other argument type or codec (``zlib``, ``bz2``, ...) is refused.
    """
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(
            f"{source}: refusing _codecs.encode({type(text).__name__}, {_describe(encoding)}) in a verification .bin"
        )
    return text.encode("latin1")


def _empty_bytes(*args: Any, source: str) -> bytes:
    """Stand-in for ``bytes``, admitted only as Python 3 pickles ``b""`` at protocols 0-2: ``bytes()``, no argument.

    ``bytes(n)`` would allocate ``n`` zero bytes for a count the file chooses, so any argument is refused.
    """
    if args:
        raise UnsafePickleError(f"{source}: refusing bytes() with arguments in a verification .bin")
    return b""


_ADMITTED_GLOBALS = {
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,  # the name Python 3 writes at protocols 0-2 (fix_imports)
    ("builtins", "bytes"): _empty_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only build built-in containers and scalars: every global lookup is refused."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # encoding="bytes": Python 2 ``str`` (the images in old .bin files) becomes ``bytes``, as insightface loads.
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        admitted = _ADMITTED_GLOBALS.get((module, name))
        if admitted is not None:
            return functools.partial(admitted, source=self._source)
        hint = (
            " (numpy objects: convert the file once where you trust it, see lightning_margin.data.verification_bin)"
            if module.split(".")[0] == "numpy"
            else ""
        )
        raise UnsafePickleError(
            f"{self._source}: refusing to load global '{module}.{name}': a verification .bin holds only lists of "
            f"bytes and bools, so this file was not made by insightface's tools and could run code{hint}"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refusing a persistent id in the pickle")


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_pickle_bounds(data: bytes, source: str) -> None:
    """Walk the pickle's opcodes, building nothing; raise ``ValueError`` (naming the byte) where a count does not fit.

    :func:`pickletools.genops` reads each counted argument with a bounded read and fails when fewer bytes remain than
    announced. On top of that: a memo index must be below the number of opcodes before it (picklers number memo
    entries 0, 1, 2, ...; the unpickler grows its memo table to twice the index), and a protocol-4 frame must fit the
    rest of the file.
    """
    stream = io.BytesIO(data)
    start = opcodes = 0
    try:
        for opcode, argument, _ in pickletools.genops(stream):
            opcodes += 1
            if opcode.name in _MEMO_PUTS and int(argument) >= opcodes:
                raise ValueError(f"memo index {argument} after only {opcodes - 1} opcodes")
            if opcode.name == "FRAME" and argument > len(data) - stream.tell():
                raise ValueError(f"a frame of {argument} bytes with {len(data) - stream.tell()} bytes left")
            start = stream.tell()
    except Exception as error:  # genops raises ValueError; anything else from a malformed walk means the same
        reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        raise ValueError(f"{source}: not a readable verification .bin pickle: byte {start}: {reason}") from None


def _describe(value: Any) -> str:
    """A short description of an unpickled value for an error message.

    Never the ``repr`` of a large value: a hostile file can hold an int past Python's 4300-digit ``str`` limit (its
    ``repr`` raises), a list nested 100,000 deep (``RecursionError``) or megabytes of text.
    """
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"an int of {value.bit_length()} bits"
    if isinstance(value, (str, bytes, bytearray)):
        return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} long)"
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__


def read_bin(path: str | Path) -> tuple[list[bytes], list[bool]]:
    """Read an insightface verification ``.bin`` without executing anything from it.

    Args:
        path: The ``.bin`` file.

    Returns:
        ``(images, issame)``: encoded image bytes (``2 * len(issame)`` of them) and one bool per pair.

    Raises:
        UnsafePickleError: if the pickle references any global (a code-execution attempt, or numpy objects).
        ValueError: if the content is not ``(list of bytes, list of bools)`` with two images per pair, or is not a
            pickle at all; the message names the file.

    Example:
        >>> images, issame = read_bin("lfw.bin")  # doctest: +SKIP
        >>> len(images) == 2 * len(issame)  # doctest: +SKIP
        True
    """
    source = str(path)
    data = Path(path).read_bytes()
    _check_pickle_bounds(data, source)
    stream = io.BytesIO(data)
    try:
        content = _RestrictedUnpickler(stream, source).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # any other failure of a malformed pickle (opcodes, stack, memo, types): one message
        raise ValueError(
            f"{source}: not a readable verification .bin pickle: stopped at byte {stream.tell()} of {len(data)} "
            f"({type(error).__name__}: {error})"
        ) from error
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise ValueError(f"{source}: expected a pickled (images, issame) pair, got {type(content).__name__}")
    images, issame = content
    if not isinstance(images, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise ValueError(
            f"{source}: expected (list of images, list of bools), got ({type(images).__name__}, "
            f"{type(issame).__name__})"
        )
    for position, image in enumerate(images):
        if not isinstance(image, (bytes, bytearray)):
            raise ValueError(f"{source}: image {position} is {type(image).__name__}, expected encoded image bytes")
    for position, value in enumerate(issame):
        # Python 2 pickles of protocol 0/1 store bools as ints 0/1; anything else is not a label.
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise ValueError(f"{source}: issame[{position}] is {_describe(value)}, expected a bool")
    if len(images) != 2 * len(issame):
        raise ValueError(
            f"{source}: {len(images)} images for {len(issame)} pairs; a .bin needs exactly two images per pair"
        )
    # A bytearray (protocol 5) is copied to bytes once per object, not once per reference: a small file can repeat
    # one large object a million times.
    copies: dict[int, bytes] = {}
    result = []
    for image in images:
        if type(image) is not bytes:
            if id(image) not in copies:
                copies[id(image)] = bytes(image)
            image = copies[id(image)]
        result.append(image)
    return result, [bool(value) for value in issame]


def write_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write an insightface verification ``.bin``: images ``2i`` and ``2i + 1`` form pair ``i``.

    The file is what insightface's evaluation reads (``pickle.load(f, encoding="bytes")``) and what
    :func:`read_bin` reads back unchanged.

    Args:
        path: The ``.bin`` file to write.
        images: Encoded images (JPEG/PNG bytes), two per pair, stored as given.
        issame: For each pair, whether both images show the same person.

    Raises:
        ValueError: if the counts do not match or an element has the wrong type.

    Example:
        >>> write_bin("pairs.bin", [jpeg_a1, jpeg_a2, jpeg_a3, jpeg_b1], [True, False])  # doctest: +SKIP
    """
    if len(images) != 2 * len(issame):
        raise ValueError(f"write_bin needs two images per pair: got {len(images)} images for {len(issame)} pairs")
    for position, image in enumerate(images):
        if not isinstance(image, (bytes, bytearray)):
            raise ValueError(f"image {position} is {type(image).__name__}, expected encoded image bytes")
    for position, value in enumerate(issame):
        if not isinstance(value, bool):
            raise ValueError(f"issame[{position}] is {value!r} ({type(value).__name__}), expected a bool")
    with open(path, "wb") as file:
        pickle.dump(([bytes(image) for image in images], list(issame)), file, protocol=pickle.HIGHEST_PROTOCOL)


class VerificationBinDataset(Dataset):
    """Pairs from an insightface verification ``.bin`` (LFW, CFP-FP, AgeDB-30, ...), items like :class:`LFWPairs`.

    Items are ``(image1, image2, issame)``: decoded RGB ``uint8`` tensors ``[3, H, W]`` (or ``transform`` of them) and
    a ``bool``. The encoded images stay in memory (``lfw.bin`` is about 60 MB); decoding happens per item.

    Args:
        path: The ``.bin`` file (read with :func:`read_bin`: a hostile pickle is refused, never run).
        transform: Applied to each decoded image.

    Attributes:
        issame: One bool per pair.
        fold: ``None``: .bin files carry no official folds (insightface splits pairs into 10 consecutive folds).

    Example:
        >>> pairs = VerificationBinDataset("agedb_30.bin")  # doctest: +SKIP
        >>> image1, image2, issame = pairs[0]  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, transform: Callable[[Any], Any] | None = None) -> None:
        self.path = Path(path)
        self.transform = transform
        self.images, self.issame = read_bin(self.path)
        self.fold: list[int] | None = None

    def __len__(self) -> int:
        return len(self.issame)

    def __getitem__(self, index: int) -> tuple[Any, Any, bool]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"pair {index} out of range for {len(self)} pairs")
        index %= len(self)
        first, second = (
            decode_and_transform(self.images[position], f"{self.path} image {position} (pair {index})", self.transform)
            for position in (2 * index, 2 * index + 1)
        )
        return first, second, self.issame[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, pairs={len(self)})"
