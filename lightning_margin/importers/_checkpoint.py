"""Reading other projects' checkpoints without running their code, and checking that they fit a model.

Their checkpoints are pickles, and unpickling calls whatever functions the file names. :func:`read_checkpoint` opens
them with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain containers only, plus inert
stand-ins for the few other types a Lightning checkpoint keeps in its hyper-parameters (Lightning's
``AttributeDict`` is read as a plain ``OrderedDict``, ``argparse.Namespace`` as a plain attribute holder, paths as
strings, numpy scalars as numpy scalars). A file that names anything else is refused before any of it is built, with
:class:`UnsafeCheckpointError` naming the file and what it names.

:func:`load_checked` loads a state dict into a model and, when the keys or shapes do not fit, raises
:class:`CheckpointMismatchError` listing the missing, unexpected and mis-shaped keys (in the file's own names) and
the architecture the shapes point to, instead of PyTorch's message in our names.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointMismatchError",
    "KeyMismatch",
    "UnsafeCheckpointError",
    "key_mismatch",
    "load_checked",
    "read_checkpoint",
]


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle would construct or call something other than plain data; nothing in it was run."""


class CheckpointMismatchError(ValueError):
    """A state dict that does not fit the architecture: missing, unexpected or mis-shaped keys."""


class _Namespace:
    """What an ``argparse.Namespace`` in a checkpoint becomes: an object holding the attributes, nothing else."""

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{key}={value!r}' for key, value in self.__dict__.items())})"


def _path_text(*parts: str) -> str:
    """What a pickled ``pathlib`` path becomes: its text (a path is rebuilt from its parts; no file is touched)."""
    return str(PurePath(*parts))


# Names a Lightning checkpoint's hyper-parameters may hold, as the pickle spells them, and their inert stand-ins.
_ATTRIBUTE_DICTS = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
)
_PATHS = tuple(
    f"{module}.{name}"
    for module in ("pathlib", "pathlib._local")
    for name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")
)


def _stand_ins() -> list[Any]:
    import numpy as np

    numpy_types: list[Any] = [np.dtype, *(type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGUSO")]
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    return [
        *((OrderedDict, name) for name in _ATTRIBUTE_DICTS),
        (_Namespace, "argparse.Namespace"),
        *((_path_text, name) for name in _PATHS),
        *numpy_types,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
    ]


def _named_globals(path: Path) -> list[str]:
    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)))
    except Exception:  # a legacy (non-zip) file: the error message names the first one
        return []


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The content of a PyTorch checkpoint file, read without running any code it names.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle names a function or class other than plain data (see the module
            docstring); the error names the file and what the pickle asked for, and nothing in the file was run.
        ValueError: the file is not a PyTorch checkpoint (truncated, another format).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "weights.pth"
        >>> torch.save({"fc.weight": torch.ones(2, 3)}, path)
        >>> read_checkpoint(path)["fc.weight"].shape
        torch.Size([2, 3])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_stand_ins()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        stand_ins = {entry[1] for entry in _stand_ins() if isinstance(entry, tuple)}
        named = [name for name in _named_globals(path) if name not in stand_ins and not name.startswith("torch.")]
        raise UnsafeCheckpointError(
            f"{path}: refused to load: its pickle {_refusal(named, error)}. Only tensors, numbers, strings and plain "
            "containers are read from other projects' checkpoints, and nothing in this file was run. If you trust "
            "the file, load it in your own code and torch.save() its state_dict()."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None


def _refusal(named: Sequence[str], error: Exception) -> str:
    """What the pickle asked for, from the globals it names or the safe unpickler's message."""
    found = named or re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found:
        return f"names {', '.join(found)}, which loading would construct or call"
    operand = re.search(r"Unsupported operand (\d+)", str(error))
    if operand:
        return f"uses a pickle instruction the safe unpickler does not run (opcode {operand[1]})"
    return "was refused by the safe unpickler"


class KeyMismatch(NamedTuple):
    """How a state dict differs from the one a model expects (keys sorted; shapes as tuples)."""

    missing: list[str]
    unexpected: list[str]
    mis_shaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, given shape, expected shape)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mis_shaped)


def key_mismatch(expected: Mapping[str, Sequence[int]], given: Mapping[str, Sequence[int]]) -> KeyMismatch:
    """Missing, unexpected and mis-shaped keys of a state dict's shapes ``given`` against ``expected``.

    Example:
        >>> key_mismatch({"a": (2,), "b": (3, 4)}, {"b": (4, 3), "c": ()})
        KeyMismatch(missing=['a'], unexpected=['c'], mis_shaped=[('b', (4, 3), (3, 4))])
    """
    missing = sorted(set(expected) - set(given), key=_natural)
    unexpected = sorted(set(given) - set(expected), key=_natural)
    mis_shaped = [
        (key, tuple(given[key]), tuple(expected[key]))
        for key in sorted(set(expected) & set(given), key=_natural)
        if tuple(given[key]) != tuple(expected[key])
    ]
    return KeyMismatch(missing, unexpected, mis_shaped)


def _natural(key: str) -> list[Any]:
    """Sort key that orders ``body.8`` before ``body.10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split(".")]


def _listing(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown}, ... ({len(items) - limit} more)" if len(items) > limit else shown


def _modules(keys: Sequence[str]) -> list[str]:
    """Keys grouped by the module holding them: ``a.bn.weight, a.bn.bias`` -> ``a.bn.*``; a lone key stays whole."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.rpartition(".")[0], []).append(key)
    return [members[0] if len(members) == 1 else f"{prefix}.*" for prefix, members in groups.items()]


def load_checked(
    model: nn.Module,
    weights: Mapping[str, Tensor],
    *,
    file: str,
    arch: str,
    source_key: Callable[[str], str] = lambda key: key,
    guess: str | None = None,
) -> None:
    """Fill ``model`` from a file's ``weights``: each of the model's keys is read from ``weights[source_key(key)]``.

    Every model key must be found with its shape and every file key must be used (strict loading), so a file of
    another architecture never half-loads. Only BatchNorm's ``num_batches_tracked`` counters may be absent (they
    are bookkeeping, and files converted from other frameworks lack them): they start at 0.

    Args:
        model: The model to fill.
        weights: The file's tensors under the file's own key names.
        file: The file they came from (named in the error).
        arch: The architecture they are read as (named in the error).
        source_key: Our key -> the file's key for it.
        guess: The architecture the file's shapes point to, if known.

    Raises:
        CheckpointMismatchError: listing, in the file's key names, the missing and unexpected keys (grouped by
            module: ``layer1.2.bn1.*``) and the mis-shaped ones, at most 8 of each with their counts, and, if
            ``guess`` differs from ``arch``, the architecture to try.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> load_checked(layer, {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}, file="w.pth",
        ...              arch="fc", source_key=lambda key: f"fc.{key}")
        >>> layer.weight.sum().item()
        6.0
    """
    expected = model.state_dict()
    names = {key: source_key(key) for key in expected}
    # A BatchNorm's batch counter is bookkeeping, not a weight; files converted from other frameworks lack it.
    weights = dict(weights)
    for key, name in names.items():
        if key.endswith("num_batches_tracked") and name not in weights:
            weights[name] = torch.zeros_like(expected[key])
    mismatch = key_mismatch(
        {names[key]: tuple(value.shape) for key, value in expected.items()},
        {key: tuple(value.shape) for key, value in weights.items()},
    )
    if mismatch:
        parts = []
        if mismatch.missing:
            parts.append(f"{len(mismatch.missing)} missing keys: {_listing(_modules(mismatch.missing))}")
        if mismatch.unexpected:
            parts.append(f"{len(mismatch.unexpected)} unexpected keys: {_listing(_modules(mismatch.unexpected))}")
        if mismatch.mis_shaped:
            shapes = [f"{key} {list(got)} (expected {list(want)})" for key, got, want in mismatch.mis_shaped]
            parts.append(f"{len(mismatch.mis_shaped)} mis-shaped keys: {_listing(shapes)}")
        hint = f"; its shapes look like {guess!r}: try --arch {guess}" if guess and guess != arch else ""
        raise CheckpointMismatchError(f"{file} does not fit arch {arch!r}: {'; '.join(parts)}{hint}")
    model.load_state_dict({key: weights[names[key]] for key in expected}, strict=True)
