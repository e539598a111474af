"""``lightning-margin data align INPUT OUTPUT``: every face photo of a folder, aligned, in the same layout.

For each image under ``INPUT`` (a folder per identity, a flat folder, or deeper: the relative paths are kept), the
face is detected (or its landmarks read from ``--landmarks FILE``), aligned (``--alignment``, ArcFace's ``norm_crop``
by default, ``--size`` pixels) and written to the same relative path under ``OUTPUT``. ``OUTPUT`` also receives:

* ``landmarks.tsv`` (:mod:`lightning_margin.align.landmarks_file`): one line per aligned image, its path, the ten
  landmark coordinates, the detector's score and box; ``--landmarks`` reads the same format back;
* ``report.tsv``: the images that got no crop and why (``PATH<TAB>REASON``): no face found, cannot be decoded
  (zero-byte, truncated, corrupt, not an image), landmarks missing from ``--landmarks``, degenerate landmarks.

Rules:

* Nothing half-written: each crop and each of the two files is written under a temporary name and renamed into
  place. Progress is kept in ``OUTPUT/.landmarks.tsv.journal`` (a landmark line is appended before its crop is
  written), so an interrupted run loses nothing.
* Resumable: a rerun skips every image whose crop exists, and re-warps, without detection, an image whose landmarks
  the journal holds but whose crop was not written. Images that failed are tried again.
* An existing file of ``OUTPUT`` is never replaced unless ``--overwrite`` (which redoes every image). A rerun with a
  different alignment or size into the same folder is refused unless ``--overwrite``.
* Detection uses dlib's HOG detector, and its CNN detector for the images where HOG finds no face, before an image is
  reported (``--no-cnn-fallback`` turns that off). Of several faces, ``--select largest`` (default) keeps the largest,
  ``--select center`` the one nearest the image centre (LFW, whose crops are centred on the person named).
* ``--workers N`` runs N processes; a progress bar counts the images.

Example::

    lightning-margin data align photos/ photos_aligned/ --size 112
    lightning-margin data align $LIGHTNING_MARGIN_DATA/lfw/lfw-deepfunneled $LIGHTNING_MARGIN_DATA/lfw_aligned_112 \\
        --select center --workers 2
    lightning-margin data align ijb/loose_crop ijb_aligned --landmarks ijb/meta/ijbc_name_5pts_score.txt
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from lightning_margin._atomic import atomic_path
from lightning_margin._validation import check_choice, check_integer
from lightning_margin.align.alignment import AlignFunction, alignment_size, create_alignment, list_alignments
from lightning_margin.align.detect import FACE_SELECTIONS, DetectedFace, FaceDetector, list_detectors, select_face
from lightning_margin.align.landmarks_file import (
    LANDMARKS_FILE,
    LandmarksRecord,
    format_landmarks_line,
    read_landmarks_file,
    rounded,
    write_landmarks_file,
)
from lightning_margin.align.transform import tensor_to_pil
from lightning_margin.data.decode import CorruptImageError, read_image_file
from lightning_margin.data.image_folder import IMAGE_EXTENSIONS

__all__ = ["JOURNAL_FILE", "REPORT_FILE", "AlignSummary", "WorkerStartError", "align_folder", "list_images", "main"]

#: The failures of the last run (``PATH<TAB>REASON``), in ``OUTPUT``.
REPORT_FILE = "report.tsv"
#: Landmark lines of the crops written so far by an unfinished run, in ``OUTPUT``; merged into ``landmarks.tsv``.
JOURNAL_FILE = ".landmarks.tsv.journal"
#: JPEG quality of the crops written as ``.jpg``/``.jpeg`` (insightface's packed sets use 95).
JPEG_QUALITY = 95
NO_FACE = "no face found"


@dataclass
class AlignSummary:
    """What a run of :func:`align_folder` did.

    Attributes:
        aligned: Crops written by this run.
        done: Images skipped because their crop was there already (made by an earlier run).
        kept: Images skipped because ``OUTPUT`` held a file of that name that ``data align`` did not write (left
            alone; ``overwrite`` replaces it).
        failed: ``(path, reason)`` of the images without a crop, as in ``report.tsv``.
    """

    aligned: int = 0
    done: int = 0
    kept: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


class _Job(NamedTuple):
    path: str  # relative, '/'-separated
    source: str  # the input file
    face: DetectedFace | None  # known landmarks: no detection


class _Outcome(NamedTuple):
    path: str
    face: DetectedFace | None  # None: failed
    data: bytes | None  # the encoded crop
    reason: str | None


def list_images(folder: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None) -> list[str]:
    """Relative ``/``-separated paths of the images under ``folder``, sorted; hidden files and folders, and the
    folder ``exclude`` (an output inside the input), are left out. Images are files ending in
    :data:`~lightning_margin.data.image_folder.IMAGE_EXTENSIONS` (any case).

    Example:
        >>> list_images("photos")  # doctest: +SKIP
        ['Ann/1.jpg', 'Ann/2.png', 'Bob/1.jpg']
    """
    root = Path(folder)
    excluded = Path(exclude).resolve() if exclude is not None else None
    found = []
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(
            name
            for name in folders
            if not name.startswith(".") and (excluded is None or (Path(directory) / name).resolve() != excluded)
        )
        relative = Path(directory).relative_to(root)
        found.extend(
            (relative / name).as_posix()
            for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(found)


def _header(alignment: str, image_size: int) -> str:
    return f"data align: alignment={alignment} size={image_size}"


def _recorded_settings(path: Path) -> str | None:
    """The settings comment a landmarks file or journal written by ``data align`` starts with."""
    try:
        with open(path, encoding="utf-8") as file:
            first = file.readline().strip()
    except FileNotFoundError:
        return None
    return first[2:] if first.startswith("# data align:") else None


# ---- the per-image work (in worker processes, or in this one) --------------------------------------------------

_WORKER: dict[str, Any] = {}


class _Settings(NamedTuple):
    """What each worker builds its detector and alignment from (plain values: they go to spawned processes)."""

    detector: str | None  # None: every job brings its landmarks
    options: dict[str, Any]
    alignment: str
    image_size: int
    selection: str
    modules: tuple[str, ...]  # where the detector and alignment were registered (a user's module, say)


def _start_worker(settings: _Settings, threads: int | None) -> None:
    try:
        if threads is not None:
            # One process per core: torch's own threads would only compete with the other workers.
            torch.set_num_threads(threads)
        # A spawned worker starts with the built-in registrations only; importing the modules that registered the
        # caller's detector or alignment registers them here too.
        for module in settings.modules:
            import_module("__mp_main__" if module == "__main__" and "__mp_main__" in sys.modules else module)
        detector = FaceDetector(settings.detector, **settings.options) if settings.detector is not None else None
        _WORKER.update(
            detector=detector,
            align=create_alignment(settings.alignment, settings.image_size),
            selection=settings.selection,
            error=None,
        )
    except Exception as error:  # an initializer that raises would be restarted by the pool forever
        _WORKER["error"] = f"{type(error).__name__}: {error}"


def _settings(
    detector: str | None, options: dict[str, Any], alignment: str, image_size: int, selection: str
) -> _Settings:
    """The workers' settings; builds the detector and the alignment once here, so bad settings fail early."""
    align = create_alignment(alignment, image_size)
    modules = [align.__module__]
    if detector is not None:
        backend = FaceDetector(detector, **options).backend
        modules.append(getattr(backend, "__module__", type(backend).__module__))
    builtin = {"lightning_margin.align.alignment", "lightning_margin.align.dlib_backend"}
    extra = tuple(dict.fromkeys(module for module in modules if module not in builtin))
    return _Settings(detector, dict(options), alignment, image_size, selection, extra)


def _encode(crop: torch.Tensor, path: str) -> bytes:
    from PIL import Image

    suffix = Path(path).suffix.lower()
    image_format = Image.registered_extensions().get(suffix, "PNG")
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {}
    tensor_to_pil(crop).save(buffer, format=image_format, **options)
    return buffer.getvalue()


class WorkerStartError(RuntimeError):
    """A worker process could not build the detector or the alignment (e.g. one registered where it cannot import
    it); raised in the calling process."""


def _align_one(job: _Job) -> _Outcome:
    if _WORKER.get("error"):
        raise WorkerStartError(
            f"a data align worker could not start: {_WORKER['error']}. Register custom detectors and alignments at "
            "the top level of an importable module (worker processes import it), or use workers=1"
        )
    try:
        try:
            image = read_image_file(job.source, job.path)
        except CorruptImageError as error:
            return _Outcome(job.path, None, None, f"cannot decode: {error.reason}")
        except OSError as error:
            return _Outcome(job.path, None, None, f"cannot read: {error.strerror or error}")
        face = job.face
        if face is None:
            detector: FaceDetector = _WORKER["detector"]
            faces = detector(image)
            chosen = select_face(faces, _WORKER["selection"], (image.shape[2], image.shape[1]))
            if chosen is None:
                return _Outcome(job.path, None, None, NO_FACE)
            # The crop is made from the landmarks as landmarks.tsv keeps them, so the file can rebuild it exactly.
            face = rounded(chosen)
        align: AlignFunction = _WORKER["align"]
        try:
            crop = align(image, face)
        except ValueError as error:
            return _Outcome(job.path, None, None, f"cannot align: {error}")
        return _Outcome(job.path, face, _encode(crop, job.path), None)
    except Exception as error:  # one bad image never stops the run: it is reported with what went wrong
        return _Outcome(job.path, None, None, f"{type(error).__name__}: {error}")


def _worker_context() -> multiprocessing.context.BaseContext:
    """Never plain fork: a process forked after dlib's detector (or torch) ran keeps their thread pools' locks but not
    their threads, and its first detection waits forever. A fork server (started once per process, having only
    imported this module) forks clean workers quickly; spawn where there is none (Windows). Each worker loads the
    models itself."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _outcomes(jobs: list[_Job], workers: int, settings: _Settings, progress: bool) -> Iterator[_Outcome]:
    if not jobs:
        return
    with tqdm(total=len(jobs), desc="aligning", unit="img", disable=not progress) as bar:
        if workers == 1 or len(jobs) <= 1:
            _start_worker(settings, None)
            for job in jobs:
                yield _align_one(job)
                bar.update()
            return
        with _worker_context().Pool(workers, _start_worker, (settings, 1)) as pool:
            for outcome in pool.imap_unordered(_align_one, jobs, chunksize=4):
                yield outcome
                bar.update()


# ---- the run -----------------------------------------------------------------------------------------------------


def align_folder(
    input_folder: str | os.PathLike[str],
    output_folder: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    alignment: str = "arcface",
    landmarks: str | os.PathLike[str] | None = None,
    detector: str = "dlib",
    detector_options: dict[str, Any] | None = None,
    selection: str = "largest",
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> AlignSummary:
    """Align every image under ``input_folder`` into ``output_folder`` (see the module docstring for the rules).

    Args:
        input_folder: The photos: a folder per identity, a flat folder, or any tree.
        output_folder: Where the crops go, in the same layout, with ``landmarks.tsv`` and ``report.tsv``; it may not
            be ``input_folder``.
        image_size: Side of the crops (``None``: the alignment's default, 112 for ArcFace).
        alignment: A name from :func:`~lightning_margin.align.alignment.list_alignments`.
        landmarks: A landmarks file (``landmarks.tsv`` or an insightface list) giving each image's five points, paths
            relative to ``input_folder``: no detection; images it does not list are reported.
        detector: A name from :func:`~lightning_margin.align.detect.list_detectors` (unused with ``landmarks``).
        detector_options: The detector's options (``dlib``: ``upsample``, ``cnn_fallback``).
        selection: Which face to keep: ``"largest"`` or ``"center"`` (:func:`~lightning_margin.align.select_face`).
        workers: Processes.
        overwrite: Redo every image, replacing existing files.
        progress: Show a progress bar.

    Returns:
        An :class:`AlignSummary`.

    Raises:
        ValueError: for bad settings, an empty input, a malformed landmarks file, or an output folder made with other
            settings (without ``overwrite``).
        FileNotFoundError: if ``input_folder`` or ``landmarks`` does not exist.

    Example:
        >>> summary = align_folder("photos", "photos_aligned", workers=2)  # doctest: +SKIP
        >>> summary.aligned, summary.failed[:1]  # doctest: +SKIP
        (41, [('Bob/3.jpg', 'no face found')])
    """
    source, output = Path(input_folder).resolve(), Path(output_folder).resolve()
    if not source.is_dir():
        raise FileNotFoundError(f"input folder not found: {input_folder}")
    if output == source:
        raise ValueError(f"the output folder must differ from the input folder, got {output_folder} for both")
    check_choice("alignment", alignment, list_alignments())
    check_choice("selection", selection, FACE_SELECTIONS)
    workers = check_integer("workers", workers)
    size = alignment_size(alignment) if image_size is None else check_integer("image_size", image_size)
    create_alignment(alignment, size)  # an unsupported size fails here, before any image is read
    given = read_landmarks_file(landmarks) if landmarks is not None else None
    if given is None:
        check_choice("detector", detector, list_detectors())
    images = list_images(source, exclude=output)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {input_folder}")

    header = _header(alignment, size)
    landmarks_path, journal_path = output / LANDMARKS_FILE, output / JOURNAL_FILE
    records: dict[str, LandmarksRecord] = {}
    if overwrite:
        journal_path.unlink(missing_ok=True)
    else:
        for previous in (landmarks_path, journal_path):
            recorded = _recorded_settings(previous)
            if recorded is not None and recorded != header:
                raise ValueError(
                    f"{output_folder} holds crops made with {recorded.removeprefix('data align: ')}, not "
                    f"{header.removeprefix('data align: ')}: use another output folder, or --overwrite"
                )
        if landmarks_path.exists():
            records.update(read_landmarks_file(landmarks_path))
        if journal_path.exists():
            records.update(read_landmarks_file(journal_path, partial_last_line=True))

    summary = AlignSummary()
    jobs: list[_Job] = []
    for path in images:
        if not overwrite and (output / path).exists():
            if path in records:
                summary.done += 1
            else:
                summary.kept += 1
            continue
        if given is not None:
            if path not in given:
                summary.failed.append((path, f"not listed in {landmarks}"))
                continue
            face: DetectedFace | None = given[path].face
        else:
            # Landmarks found by an interrupted run whose crop was not written: warp again, no detection.
            face = records[path].face if path in records and not overwrite else None
        jobs.append(_Job(path, str(source / path), face))

    # Bad options or a missing backend fail here, before any file is written.
    needs_detector = given is None and any(job.face is None for job in jobs)
    settings = _settings(detector if needs_detector else None, detector_options or {}, alignment, size, selection)
    output.mkdir(parents=True, exist_ok=True)
    with open(journal_path, "a", encoding="utf-8") as journal:
        if journal.tell() == 0:
            journal.write(f"# {header}\n")
        for outcome in _outcomes(jobs, workers, settings, progress):
            if outcome.face is None or outcome.data is None:
                summary.failed.append((outcome.path, outcome.reason or "failed"))
                continue
            record = LandmarksRecord(outcome.path, outcome.face)
            # The line first: a crop on disk always has its landmarks somewhere (landmarks.tsv or the journal).
            journal.write(format_landmarks_line(record) + "\n")
            journal.flush()
            with atomic_path(output / outcome.path) as temporary:
                temporary.write_bytes(outcome.data)
            records[outcome.path] = record
            summary.aligned += 1

    write_landmarks_file(
        landmarks_path, [record for path, record in records.items() if (output / path).exists()], header
    )
    summary.failed.sort()
    with atomic_path(output / REPORT_FILE) as temporary:
        lines = ["# images without an aligned crop: path<TAB>reason"]
        lines += [f"{path}\t{reason}" for path, reason in summary.failed]
        temporary.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    journal_path.unlink(missing_ok=True)
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-margin data align",
        description="Detect, align and crop the face of every image of a folder, keeping its layout; writes "
        "landmarks.tsv and report.tsv beside the crops. Resumable; never overwrites without --overwrite.",
    )
    parser.add_argument("input", help="folder of photos (one sub-folder per identity, or flat)")
    parser.add_argument("output", help="folder for the aligned crops (same relative paths)")
    parser.add_argument("--size", type=int, default=None, help="crop side in pixels (default: the alignment's, 112)")
    parser.add_argument("--alignment", default="arcface", choices=list_alignments(), help="how faces are cropped")
    parser.add_argument(
        "--landmarks",
        default=None,
        help="landmarks file (landmarks.tsv, or insightface 'name x1 y1 ... x5 y5 [score]' lines): align from these "
        "points, no detection",
    )
    parser.add_argument("--detector", default="dlib", choices=list_detectors(), help="face detector backend")
    parser.add_argument("--upsample", type=int, default=1, help="dlib: times the image is doubled before detecting")
    parser.add_argument(
        "--no-cnn-fallback", action="store_true", help="dlib: do not run the CNN detector where HOG finds no face"
    )
    parser.add_argument(
        "--select",
        default="largest",
        choices=FACE_SELECTIONS,
        help="which face of several: largest, or nearest the centre (LFW)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes")
    parser.add_argument("--overwrite", action="store_true", help="redo every image, replacing existing files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-margin data align`` (run by :mod:`lightning_margin.data.cli`); returns the status:
    0 when the run finished (images without a face are reported, not errors), 1 for bad settings or input.

    Example:
        >>> main(["photos", "photos_aligned", "--size", "112", "--workers", "2"])  # doctest: +SKIP
        0
    """
    arguments = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    options: dict[str, Any] = {}
    if arguments.detector == "dlib":
        options = {"upsample": arguments.upsample, "cnn_fallback": not arguments.no_cnn_fallback}
    try:
        summary = align_folder(
            arguments.input,
            arguments.output,
            image_size=arguments.size,
            alignment=arguments.alignment,
            landmarks=arguments.landmarks,
            detector=arguments.detector,
            detector_options=options,
            selection=arguments.select,
            workers=arguments.workers,
            overwrite=arguments.overwrite,
            progress=not arguments.quiet,
        )
    except (OSError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    output = Path(arguments.output)
    print(
        f"{output}: aligned {summary.aligned}, already done {summary.done}, failed {len(summary.failed)} "
        f"(listed in {output / REPORT_FILE}), landmarks in {output / LANDMARKS_FILE}"
        + (f"; left {summary.kept} existing files not made by data align alone (--overwrite)" if summary.kept else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
