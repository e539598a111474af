"""``lightning-margin data pack``: build an insightface RecordIO set from an image folder, a verification .bin from a
pair list.

Images are stored byte for byte as found (no re-encoding), so reading the result back gives exactly the input images
and labels; by default each image is decoded once first, so a corrupt file is reported while packing, not in the
middle of a training run.

Pair lists for ``.bin`` files come in two formats:

* ``lfw``: an LFW pairs file (``pairs.txt``, ``pairsDevTest.txt``, ...), images under ``IMAGE_ROOT/Name/Name_NNNN.jpg``;
* ``simple``: one pair per line, ``PATH1 PATH2 LABEL`` separated by tabs (or spaces when there is no tab), paths
  relative to ``IMAGE_ROOT``, ``LABEL`` one of ``1/0``, ``true/false``, ``same/different``; blank lines and lines
  starting with ``#`` are ignored.

``auto`` (the default) picks ``lfw`` when the first line is one or two integers.

Example::

    lightning-margin data pack recordio casia_aligned/ casia/train.rec
    lightning-margin data pack bin lfw/pairsDevTest.txt lfw/lfw-deepfunneled lfw_dev_test.bin
    lightning-margin data pack bin my_pairs.txt my_photos/ my_pairs.bin --format simple
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from lightning_margin.data.decode import CorruptImageError, decode_image
from lightning_margin.data.image_folder import FaceImageFolder
from lightning_margin.data.lfw import lfw_image_path, read_pairs_list
from lightning_margin.data.recordio import RecordIOSummary, write_recordio
from lightning_margin.data.text_lines import read_text_lines
from lightning_margin.data.verification_bin import write_bin

__all__ = ["PAIR_LIST_FORMATS", "main", "pack_image_folder", "pack_pairs_bin", "read_pair_list"]

#: Accepted ``list_format`` values of :func:`pack_pairs_bin`.
PAIR_LIST_FORMATS = ("auto", "lfw", "simple")
_TRUE = {"1", "true", "same", "yes"}
_FALSE = {"0", "false", "different", "diff", "no"}


def pack_image_folder(
    image_folder: str | Path,
    output: str | Path,
    min_images_per_identity: int = 1,
    verify: bool = True,
    skip_corrupt: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[RecordIOSummary, int]:
    """Pack ``image_folder/<identity>/<image>`` into an insightface RecordIO set (``.rec``, ``.idx``, ``property``).

    Labels are the identities' indices in sorted folder-name order (as :class:`FaceImageFolder` assigns them).

    Args:
        image_folder: One sub-folder per identity.
        output: The ``.rec`` file to write.
        min_images_per_identity: Leave out identities with fewer images.
        verify: Decode every image before packing it.
        skip_corrupt: With ``verify``, leave out undecodable images (counted) instead of stopping at the first.
        cache_dir: The image folder listing cache.
        progress: Show a progress bar.

    Returns:
        What was written, and the number of images skipped.

    Raises:
        CorruptImageError: on an undecodable image (with ``verify`` and without ``skip_corrupt``).

    Example:
        >>> summary, skipped = pack_image_folder("casia_aligned", "casia/train.rec")  # doctest: +SKIP
    """
    folder = FaceImageFolder(image_folder, min_images_per_identity=min_images_per_identity, cache_dir=cache_dir)
    skipped = 0

    def samples() -> Iterator[tuple[bytes, int]]:
        nonlocal skipped
        for relative, label in tqdm(folder.samples, desc="packing", unit="img", disable=not progress):
            path = folder.root / relative
            data = path.read_bytes()
            if verify:
                try:
                    decode_image(data, str(path))
                except CorruptImageError as error:
                    if not skip_corrupt:
                        raise
                    skipped += 1
                    tqdm.write(f"skipping {error}")
                    continue
            yield data, label

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    summary = write_recordio(output, samples())
    return summary, skipped


def _detect_format(path: Path, lines: list[tuple[int, str]]) -> str:
    for _, line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            fields = line.split()
            numeric = all(field.isascii() and field.isdigit() for field in fields)
            return "lfw" if 1 <= len(fields) <= 2 and numeric else "simple"
    raise ValueError(f"{path}: the pair list is empty")


def read_pair_list(
    pairs_file: str | Path, image_root: str | Path, list_format: str = "auto"
) -> list[tuple[Path, Path, bool, str]]:
    """Read a pair list (formats in the module docstring) into ``(image1, image2, issame, "file:line")`` tuples.

    Args:
        pairs_file: The list.
        image_root: The folder the list's images are relative to (for ``lfw``: the ``lfw-deepfunneled`` folder).
        list_format: ``"auto"``, ``"lfw"`` or ``"simple"``.

    Raises:
        ValueError: on an unknown format or a malformed line (file and line named).

    Example:
        >>> pairs = read_pair_list("lfw/pairsDevTest.txt", "lfw/lfw-deepfunneled")  # doctest: +SKIP
    """
    if list_format not in PAIR_LIST_FORMATS:
        raise ValueError(f"list_format must be one of {', '.join(PAIR_LIST_FORMATS)}, got {list_format!r}")
    path, root = Path(pairs_file), Path(image_root)
    lines = read_text_lines(path, what="pair list") if list_format != "lfw" else []
    if list_format == "auto":
        list_format = _detect_format(path, lines)
    if list_format == "lfw":
        return [
            (
                root / lfw_image_path(pair.name1, pair.number1),
                root / lfw_image_path(pair.name2, pair.number2),
                pair.issame,
                f"{path}:{pair.line}",
            )
            for pair in read_pairs_list(path)
        ]
    pairs = []
    for number, line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [field.strip() for field in line.split("\t")] if "\t" in line else line.split()
        if len(fields) != 3:
            raise ValueError(f"{path}:{number}: expected 'PATH1<TAB>PATH2<TAB>LABEL', got {line!r}")
        label = fields[2].lower()
        if label not in _TRUE | _FALSE:
            raise ValueError(
                f"{path}:{number}: label must be one of 1/0, true/false, same/different, got {fields[2]!r}"
            )
        pairs.append((root / fields[0], root / fields[1], label in _TRUE, f"{path}:{number}"))
    if not pairs:
        raise ValueError(f"{path}: the pair list holds no pairs")
    return pairs


def pack_pairs_bin(
    pairs_file: str | Path,
    image_root: str | Path,
    output: str | Path,
    list_format: str = "auto",
    verify: bool = True,
    progress: bool = True,
) -> int:
    """Build an insightface verification ``.bin`` from a pair list (images stored as found, two per pair).

    Args:
        pairs_file: The pair list (see :func:`read_pair_list`).
        image_root: The folder its image paths are relative to.
        output: The ``.bin`` file to write.
        list_format: ``"auto"``, ``"lfw"`` or ``"simple"``.
        verify: Decode every image first.
        progress: Show a progress bar.

    Returns:
        The number of pairs written.

    Raises:
        FileNotFoundError: if an image is missing (named with the list file and line).
        CorruptImageError: if an image cannot be decoded (with ``verify``).

    Example:
        >>> pack_pairs_bin("lfw/pairsDevTest.txt", "lfw/lfw-deepfunneled", "lfw_dev_test.bin")  # doctest: +SKIP
        1000
    """
    pairs = read_pair_list(pairs_file, image_root, list_format)
    images: list[bytes] = []
    issame: list[bool] = []
    cache: dict[Path, bytes] = {}
    for first, second, same, where in tqdm(pairs, desc="packing", unit="pair", disable=not progress):
        for path in (first, second):
            if path not in cache:
                try:
                    cache[path] = path.read_bytes()
                except FileNotFoundError:
                    raise FileNotFoundError(f"image not found: {path} (named on {where})") from None
                if verify:
                    decode_image(cache[path], f"{path} (named on {where})")
            images.append(cache[path])
        issame.append(same)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_bin(output, images, issame)
    return len(issame)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-margin data pack",
        description="Pack face images into insightface formats: RecordIO training sets and verification .bin files.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    recordio = commands.add_parser("recordio", help="an image folder (one sub-folder per identity) -> .rec/.idx")
    recordio.add_argument("image_folder", help="folder with one sub-folder per identity")
    recordio.add_argument("output", help="the .rec file to write (its .idx and property go beside it)")
    recordio.add_argument("--min-images-per-identity", type=int, default=1, help="leave out smaller identities")
    recordio.add_argument("--skip-corrupt", action="store_true", help="leave out undecodable images, count them")
    recordio.add_argument("--no-verify", action="store_true", help="do not decode images before packing")
    recordio.add_argument("--cache-dir", default=None, help="image folder listing cache (default ~/.cache/...)")
    binary = commands.add_parser("bin", help="a pair list -> verification .bin")
    binary.add_argument("pairs_file", help="LFW pairs file, or 'PATH1<TAB>PATH2<TAB>LABEL' lines")
    binary.add_argument("image_root", help="folder the list's images are relative to")
    binary.add_argument("output", help="the .bin file to write")
    binary.add_argument("--format", choices=PAIR_LIST_FORMATS, default="auto", help="pair list format")
    binary.add_argument("--no-verify", action="store_true", help="do not decode images before packing")
    for command in (recordio, binary):
        command.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-margin data pack`` (run by :mod:`lightning_margin.data.cli`); returns the status.

    Example:
        >>> main(["bin", "lfw/pairsDevTest.txt", "lfw/lfw-deepfunneled", "dev_test.bin"])  # doctest: +SKIP
        0
    """
    arguments = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if arguments.command == "recordio":
            summary, skipped = pack_image_folder(
                arguments.image_folder,
                arguments.output,
                min_images_per_identity=arguments.min_images_per_identity,
                verify=not arguments.no_verify,
                skip_corrupt=arguments.skip_corrupt,
                cache_dir=arguments.cache_dir,
                progress=not arguments.quiet,
            )
            note = f", skipped {skipped} unreadable" if skipped else ""
            print(f"wrote {arguments.output}: {summary.num_images} images, {summary.num_classes} identities{note}")
        else:
            count = pack_pairs_bin(
                arguments.pairs_file,
                arguments.image_root,
                arguments.output,
                list_format=arguments.format,
                verify=not arguments.no_verify,
                progress=not arguments.quiet,
            )
            print(f"wrote {arguments.output}: {count} pairs")
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
