"""``lightning-margin data SUBCOMMAND ...``: the data tools, one registered subcommand each.

``lightning-margin data pack recordio ...`` and ``lightning-margin data pack bin ...`` build insightface files. A new
tool (aligning photos, writing pair lists) is one :func:`register_data_command` call naming where its ``main`` lives;
it is imported only when run, so ``lightning-margin data --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module

__all__ = ["DATA_COMMANDS", "main", "register_data_command"]

#: ``{subcommand: ("module:function", one-line help)}``; the function takes the remaining arguments, returns a status.
DATA_COMMANDS: dict[str, tuple[str, str]] = {}


def register_data_command(name: str, target: str, description: str) -> None:
    """Add ``lightning-margin data NAME``, run by ``target`` (``"package.module:function"``, imported when used).

    Example:
        >>> sorted(DATA_COMMANDS)
        ['align', 'pack']
    """
    module, separator, function = target.partition(":")
    if not name.isidentifier() or not separator or not module or not function:
        raise ValueError(
            f"a data command needs an identifier name and a 'module:function' target, got {name!r}, {target!r}"
        )
    if name in DATA_COMMANDS and DATA_COMMANDS[name][0] != target:
        raise ValueError(f"a data command named {name!r} is already registered ({DATA_COMMANDS[name][0]})")
    DATA_COMMANDS[name] = (target, description)


register_data_command(
    "pack", "lightning_margin.data.pack:main", "pack images into insightface RecordIO (.rec/.idx) and .bin files"
)
register_data_command(
    "align", "lightning_margin.align.folder:main", "detect and align the faces of a photo folder (ArcFace 112x112)"
)


def _command(target: str) -> Callable[[list[str]], int]:
    module, _, function = target.partition(":")
    return getattr(import_module(module), function)


def _usage() -> str:
    lines = ["usage: lightning-margin data SUBCOMMAND [ARGUMENTS] (each has --help)", "", "subcommands:"]
    lines += [f"  {name:<10} {description}" for name, (_, description) in DATA_COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-margin data``: run the subcommand named first; returns its exit status.

    Example:
        >>> main(["--help"])  # doctest: +ELLIPSIS
        usage: lightning-margin data SUBCOMMAND [ARGUMENTS] (each has --help)
        ...
          pack       pack images into insightface RecordIO (.rec/.idx) and .bin files
          align      detect and align the faces of a photo folder (ArcFace 112x112)
        0
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] not in DATA_COMMANDS:
        print(f"{_usage()}\nlightning-margin data: unknown subcommand {args[0]!r}", file=sys.stderr)
        return 2
    return int(_command(DATA_COMMANDS[args[0]][0])(args[1:]) or 0)
