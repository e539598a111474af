"""Evaluate an embedding model on a verification pair set: embed, score, and compute every verification metric."""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lightning_margin._atomic import atomic_path
from lightning_margin.data.sources import build_verification_set, resolve_data_root
from lightning_margin.metrics.functional import DEFAULT_FAR, roc_curve, verification_metrics
from lightning_margin.metrics.verification import VerificationMetrics
from lightning_margin.tta import embed

if TYPE_CHECKING:
    from lightning_margin.embedder import FaceEmbedder

__all__ = ["evaluate_embedder", "evaluate_pairs", "format_table", "write_metrics_json"]


def _model_device(model: Callable[[Tensor], Tensor]) -> torch.device:
    if isinstance(model, nn.Module):
        for tensor in [*model.parameters(), *model.buffers()]:
            return tensor.device
    return torch.device("cpu")


def evaluate_pairs(
    model: Callable[[Tensor], Tensor],
    dataloader: Iterable[Sequence[Any]],
    flip: bool = True,
    far: float | Sequence[float] = DEFAULT_FAR,
    device: torch.device | str | None = None,
    progress: bool = True,
    num_folds: int = 10,
) -> dict[str, Any]:
    """Verification metrics of a model on one pair set, the way face-recognition papers report them (LFW protocol).

    Every pair is embedded (with flip test-time augmentation by default, :func:`lightning_margin.tta.embed`), scored
    by the cosine of the two embeddings, and the scores, in the loader's order, go to
    :func:`~lightning_margin.metrics.functional.verification_metrics`: use an unshuffled loader, since the k-fold
    accuracy splits the pairs into consecutive folds. The model runs in eval mode under ``torch.no_grad()``; its
    previous mode is restored afterwards.

    Args:
        model: maps ``(batch, channels, height, width)`` images to ``(batch, embedding_size)`` embeddings.
        dataloader: yields ``(images1, images2, issame)`` batches (further items are ignored).
        flip: flip test-time augmentation.
        far: target false-accept rate(s) for TAR@FAR.
        device: where to run the model (it is moved there); default: where its parameters are.
        progress: show a tqdm progress bar.
        num_folds: folds of the k-fold accuracy.

    Returns:
        The flat metrics dict of ``verification_metrics`` as Python floats (``accuracy``, ``accuracy_std``,
        ``threshold``, ``tar@far=...``, ``eer``, ``auc``), ``num_pairs``, and ``roc``: a dict of CPU tensors ``fpr``,
        ``tpr``, ``thresholds`` (for :func:`lightning_margin.plots.roc.plot_roc_curves`).

    Example:
        >>> images = torch.rand(20, 3, 8, 8)
        >>> pairs = [(images[:10], images[10:], torch.arange(10) % 2 == 0)]
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16))
        >>> results = evaluate_pairs(model, pairs, progress=False, num_folds=2)
        >>> results["num_pairs"], sorted(results["roc"])
        (10, ['fpr', 'thresholds', 'tpr'])
    """
    if device is None:
        device = _model_device(model)
    else:
        device = torch.device(device)
        if isinstance(model, nn.Module):
            model.to(device)
    was_training = model.training if isinstance(model, nn.Module) else None
    # The metric accumulates the pairs (cosine scores, labels, in the loader's order) exactly as training's does.
    pairs = VerificationMetrics(num_folds=num_folds, far=far).to(device)
    try:
        if isinstance(model, nn.Module):
            model.eval()
        with torch.no_grad():
            total = len(dataloader) if hasattr(dataloader, "__len__") else None  # type: ignore[arg-type]
            for batch in tqdm(dataloader, total=total, desc="verification pairs", unit="batch", disable=not progress):
                images1, images2, same = batch[0], batch[1], batch[2]
                images1, images2 = images1.to(device), images2.to(device)
                if images1.shape == images2.shape:
                    # One forward pass for both sides of the pairs (and their mirrors): fewer, larger batches.
                    embeddings = embed(model, torch.cat([images1, images2]), flip=flip)
                    embeddings1, embeddings2 = embeddings[: len(images1)], embeddings[len(images1) :]
                else:
                    embeddings1, embeddings2 = embed(model, images1, flip=flip), embed(model, images2, flip=flip)
                pairs.update(embeddings1.float(), embeddings2.float(), torch.as_tensor(same, device=device))
    finally:
        if isinstance(model, nn.Module) and was_training is not None:
            model.train(was_training)
    if not pairs.scores:
        raise ValueError("the dataloader yielded no pairs")
    all_scores, all_issame = pairs.pairs()
    # float64 from here: the metrics then print as 0.532 rather than 0.5320000052452087 (the cosines keep their order).
    all_scores, all_issame = all_scores.cpu().double(), all_issame.cpu()
    metrics = verification_metrics(all_scores, all_issame, num_folds=pairs.num_folds, far=pairs.far)
    fpr, tpr, thresholds = roc_curve(all_scores, all_issame)
    results: dict[str, Any] = {key: value.item() for key, value in metrics.items()}
    results["num_pairs"] = all_scores.numel()
    results["roc"] = {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}
    return results


def evaluate_embedder(
    embedder: FaceEmbedder,
    source: str,
    *,
    data_root: str | os.PathLike[str] | None = None,
    flip: bool = True,
    far: float | Sequence[float] = DEFAULT_FAR,
    num_folds: int = 10,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Verification metrics of an embedder on one pair set, with the embedder's recorded preprocessing.

    The set is built from its source string (:func:`~lightning_margin.data.sources.build_verification_set`) with
    :meth:`FaceEmbedder.eval_transform`, loaded in order and scored by
    :func:`evaluate_pairs`.

    Returns:
        What :func:`evaluate_pairs` returns (metrics, ``num_pairs`` and ``roc``).
    """
    dataset = build_verification_set(
        source, resolve_data_root(data_root), embedder.eval_transform(source), image_size=embedder.input_size
    )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return evaluate_pairs(embedder, loader, flip=flip, far=far, device=device, progress=progress, num_folds=num_folds)


def _scalar(value: Any) -> float | int | None:
    """A JSON/table number from a Python, numpy or 0-d torch number; ``None`` for anything else."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _scalar_columns(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for metrics in results.values():
        for key, value in metrics.items():
            if key not in columns and _scalar(value) is not None:
                columns.append(key)
    return columns


def format_table(results: Mapping[str, Mapping[str, float]], name_header: str = "model") -> str:
    """A Markdown pipe table, one row per model (or pair set) and one column per scalar metric.

    Readable in a terminal and pasteable into a README or model card. Floats get 4 decimals, integers none, missing
    values ``-``; non-scalar entries (such as ``roc``) are left out.

    Args:
        results: ``{row name: {metric: value}}``, e.g. ``{"arcface-r18": evaluate_pairs(...)}``.
        name_header: header of the first column.

    Example:
        >>> print(format_table({"model-a": {"accuracy": 0.99517, "eer": 0.00612, "num_pairs": 6000}}))
        | model   | accuracy | eer    | num_pairs |
        |---------|----------|--------|-----------|
        | model-a | 0.9952   | 0.0061 | 6000      |
    """
    columns = _scalar_columns(results)

    def cell(value: Any) -> str:
        number = _scalar(value)
        if number is None:
            return "-"
        return str(number) if isinstance(number, int) else f"{number:.4f}"

    rows = [[name_header, *columns]]
    rows += [[name, *(cell(metrics.get(column)) for column in columns)] for name, metrics in results.items()]
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(rows[0]), separator, *(line(row) for row in rows[1:])])


def write_metrics_json(path: str | os.PathLike[str], results: Mapping[str, Mapping[str, float]]) -> Path:
    """Write ``{name: {metric: value}}`` as JSON, atomically (a temporary file in the same folder, then a rename).

    Readers never see a half-written file, even if the process dies mid-write. Only scalar metrics are written
    (tensors become numbers; the ``roc`` curve is left out); non-finite values become ``null``.

    Args:
        path: the JSON file; its folder is created if needed.
        results: ``{row name: {metric: value}}`` as for :func:`format_table`.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> path = write_metrics_json(f"{folder}/metrics.json", {"lfw": {"accuracy": torch.tensor(0.5)}})
        >>> path.read_text()
        '{\\n  "lfw": {\\n    "accuracy": 0.5\\n  }\\n}\\n'
    """
    path = Path(path)
    payload: dict[str, dict[str, float | int | None]] = {}
    for name, metrics in results.items():
        row: dict[str, float | int | None] = {}
        for key, value in metrics.items():
            number = _scalar(value)
            if number is not None:
                # JSON has no NaN/Infinity: write null rather than an unparsable file.
                row[key] = number if math.isfinite(number) else None
            elif value is None:
                row[key] = None
        payload[str(name)] = row
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as file:
        json.dump(payload, file, indent=2, allow_nan=False)
        file.write("\n")
    return path
