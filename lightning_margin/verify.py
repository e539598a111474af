"""``lightning-margin verify``: evaluate face embedders on verification pairs and check them against their model cards.

``lightning-margin verify --model ORG/NAME`` downloads a published embedder, re-evaluates it on the sets its card
lists, prints the table and exits with status 1 when a metric differs from the card by more than ``--tolerance``.
``--model`` also takes a Lightning checkpoint (``.ckpt``) or an exported folder, and several models: one table and
one overlaid ROC figure (``--plot roc.png``); ``--json`` writes the metrics.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_margin.artifacts import fetch_artifact, load_card_results, load_embedder
from lightning_margin.data.sources import parse_pairs
from lightning_margin.embedder import FaceEmbedder
from lightning_margin.evaluation import evaluate_embedder, format_table, write_metrics_json
from lightning_margin.hub import CorruptDownloadError
from lightning_margin.metrics.functional import DEFAULT_FAR
from lightning_margin.model_card import DEFAULT_TOLERANCE, CardSet, MetricMismatch, compare_metrics

__all__ = [
    "LoadedModel",
    "VerifyReport",
    "load_model",
    "main",
    "parse_pairs",
    "verify_models",
]

# Exit statuses: 0 all good, 1 a metric does not reproduce its card, 2 bad usage (argparse's convention), 3 a download
# does not match the Hub's hash (a different failure from a card that does not reproduce: retry, or check the mirror).
EXIT_MISMATCH = 1
EXIT_CORRUPT_DOWNLOAD = 3


@dataclass
class VerifyReport:
    """What :func:`verify_models` found.

    Attributes:
        rows: ``{row: metrics}``, rows named ``"model"`` (one set) or ``"model @ set"``.
        mismatches: Card metrics not reproduced within the tolerance (``set_name`` is ``"model @ set"``).
        compared: The ``"model @ set"`` entries that were compared with a card.
        notes: What was not compared, and why.
    """

    rows: dict[str, dict[str, Any]]
    mismatches: list[MetricMismatch]
    compared: list[str]
    notes: list[str]


@dataclass
class LoadedModel:
    """An embedder with where it came from and, for exported folders and Hub ids, its card's results."""

    name: str
    embedder: FaceEmbedder
    card_sets: dict[str, CardSet] | None


def load_model(source: str | os.PathLike[str], revision: str | None = None) -> LoadedModel:
    """Load a model to verify: its embedder and its card's results, from one fetch (one Hub commit).

    Args:
        source: A ``.ckpt`` file, an exported folder or a Hub id ``ORG/NAME``
            (:func:`~lightning_margin.artifacts.fetch_artifact`).
        revision: Hub revision (branch, tag or commit) for Hub ids.

    Returns:
        The :class:`LoadedModel`; ``card_sets`` is ``None`` when there is no card or it lists no results.

    Raises:
        CorruptDownloadError: for a Hub id, if the weights, config or card downloaded do not hash to what the Hub
            lists for them at the commit (see :func:`~lightning_margin.hub.download_verified`).
    """
    path = fetch_artifact(source, revision)
    return LoadedModel(str(source), load_embedder(path), load_card_results(path))


def verify_models(
    models: Sequence[LoadedModel],
    sets: Mapping[str, str] | None = None,
    *,
    data_root: str | os.PathLike[str] | None = None,
    flip: bool = True,
    far: Sequence[float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    device: str | None = None,
) -> VerifyReport:
    """Evaluate every model on every set and compare with the models' cards.

    Without ``sets`` each model is evaluated on the sets of its card, with the card's protocol (flip, folds,
    false accept rates). A card set is compared only when it was evaluated with the card's protocol.

    Returns:
        A :class:`VerifyReport`.
    """
    rows: dict[str, dict[str, Any]] = {}
    mismatches: list[MetricMismatch] = []
    compared: list[str] = []
    notes: list[str] = []
    plans = []
    for model in models:
        card = model.card_sets or {}
        if sets:
            plan = dict(sets)
        elif card:
            plan = {name: entry.source for name, entry in card.items()}
        else:
            raise ValueError(f"{model.name}: no model card results to re-evaluate; name the sets with --pairs")
        plans.append((model, card, plan))
    several_sets = any(len(plan) > 1 for _, _, plan in plans) or len({tuple(plan) for _, _, plan in plans}) > 1
    for model, card, plan in plans:
        measured: dict[str, dict[str, Any]] = {}
        for set_name, source in plan.items():
            entry = card.get(set_name)
            protocol_far = list(far) if far else (entry.far if entry and entry.far else list(DEFAULT_FAR))
            folds = entry.num_folds if entry else 10
            results = evaluate_embedder(
                model.embedder,
                source,
                data_root=data_root,
                flip=flip,
                far=protocol_far,
                num_folds=folds,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=progress,
                device=device,
            )
            row = f"{model.name} @ {set_name}" if several_sets else model.name
            rows[row] = results
            if entry is None:
                continue
            if entry.source != source or entry.flip != flip:
                notes.append(
                    f"{model.name} @ {set_name}: not compared with the card (card: {entry.source}, flip={entry.flip}; "
                    f"here: {source}, flip={flip})"
                )
                continue
            measured[set_name] = results
            compared.append(f"{model.name} @ {set_name}")
        for mismatch in compare_metrics(card, measured, tolerance):
            mismatch.set_name = f"{model.name} @ {mismatch.set_name}"
            mismatches.append(mismatch)
        if card and not measured:
            notes.append(f"{model.name}: none of its card's sets was evaluated with the card's protocol")
    return VerifyReport(rows, mismatches, compared, notes)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-margin verify",
        description=(
            "Evaluate face embedders on verification pairs (accuracy, its std, TAR@FAR, EER, AUC). With an exported "
            "folder or Hub id whose model card lists results, re-evaluate the card's sets and exit with status 1 when "
            "a metric differs from the card by more than --tolerance."
        ),
    )
    parser.add_argument(
        "--model",
        dest="models",
        nargs="+",
        action="extend",
        required=True,
        metavar="MODEL",
        help="a Lightning checkpoint (.ckpt), an exported folder, or a Hub id ORG/NAME; several allowed",
    )
    parser.add_argument(
        "--pairs",
        nargs="+",
        action="extend",
        metavar="SET",
        help="verification sets: lfw:dev_test, lfw:10fold, bin:PATH, synthetic[:N], or NAME=SOURCE "
        "(default: the sets of each model's card)",
    )
    parser.add_argument(
        "--data-root", help="folder holding lfw/ and relative .bin paths (default: $LIGHTNING_MARGIN_DATA)"
    )
    parser.add_argument("--json", type=Path, help="write the metrics to this JSON file")
    parser.add_argument("--plot", type=Path, help="save the ROC curves (all models, one figure) to this PNG")
    parser.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    parser.add_argument("--far", type=float, nargs="+", help="false accept rates for TAR@FAR (default: the card's)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"largest accepted absolute difference from a card's metric (default {DEFAULT_TOLERANCE})",
    )
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) for Hub ids")
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per batch (default 64)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes (default 0)")
    parser.add_argument("--device", help="torch device (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-margin verify``; returns the exit status.

    0: every compared metric reproduces its card; 1: a metric does not; 3: a downloaded file does not match the
    Hub's hash (nothing was evaluated).
    """
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    sets = parse_pairs(args.pairs) if args.pairs else None
    try:
        models = [load_model(spec, revision=args.revision) for spec in args.models]
    except CorruptDownloadError as error:
        print(f"lightning-margin verify: {error}", file=sys.stderr)
        return EXIT_CORRUPT_DOWNLOAD
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise SystemExit("lightning-margin verify: the same --model is given twice")
    report = verify_models(
        models,
        sets,
        data_root=args.data_root,
        flip=not args.no_flip,
        far=args.far,
        tolerance=args.tolerance,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        device=args.device,
    )
    print(format_table(report.rows))
    if args.json is not None:
        write_metrics_json(args.json, report.rows)
        print(f"metrics written to {args.json}")
    if args.plot is not None:
        from lightning_margin.plots.roc import plot_roc_curves

        plot_roc_curves({row: results["roc"] for row, results in report.rows.items()}, args.plot)
        print(f"ROC curves saved to {args.plot}")
    for note in report.notes:
        print(f"note: {note}")
    if report.mismatches:
        print(
            f"FAILED: {len(report.mismatches)} metric(s) differ from the model card by more than {args.tolerance:g}:",
            file=sys.stderr,
        )
        for mismatch in report.mismatches:
            print(f"  {mismatch}", file=sys.stderr)
        return EXIT_MISMATCH
    if report.compared:
        print(f"OK: {', '.join(report.compared)} reproduce the model card within {args.tolerance:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
