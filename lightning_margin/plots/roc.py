"""ROC curves of face verification: true accept rate against false accept rate (log scale), one line per model."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lightning_margin.plots._figure import new_figure, save_figure

__all__ = ["plot_roc_curves"]


def _as_rates(name: str, curve: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` as float64 arrays from a ``(fpr, tpr[, thresholds])`` tuple or a ``{"fpr", "tpr"}`` mapping."""
    if isinstance(curve, Mapping):
        curve = (curve["fpr"], curve["tpr"])
    if not isinstance(curve, Sequence) or len(curve) not in (2, 3):
        raise ValueError(f"curve {name!r} must be (fpr, tpr), (fpr, tpr, thresholds) or a mapping with fpr/tpr")
    rates = []
    for values in curve[:2]:
        if hasattr(values, "detach"):  # torch tensors, without importing torch here
            values = values.detach().cpu().numpy()
        rates.append(np.asarray(values, dtype=np.float64))
    fpr, tpr = rates
    if fpr.ndim != 1 or fpr.shape != tpr.shape or fpr.size == 0:
        raise ValueError(
            f"curve {name!r}: fpr and tpr must be non-empty 1-D and of equal length, got shapes {fpr.shape} and "
            f"{tpr.shape}"
        )
    if not (np.all(np.isfinite(fpr)) and np.all(np.isfinite(tpr))):
        raise ValueError(f"curve {name!r}: fpr and tpr must be finite")
    if fpr.min() < 0 or fpr.max() > 1 or tpr.min() < 0 or tpr.max() > 1:
        raise ValueError(f"curve {name!r}: fpr and tpr are rates and must lie in [0, 1]")
    return fpr, tpr


#: Up to this many curves the legend sits in the axes (lower right); more go beside them.
_LEGEND_INSIDE_MAX = 5


def plot_roc_curves(
    curves: Mapping[str, Any],
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Verification ROC curves (TAR against FAR, log-scale FAR axis) as face-recognition papers draw them.

    One line per entry of ``curves``, drawn with exactly the given points. The legend shows each name with its area
    under the curve (trapezoidal rule over the given points, i.e. the full-range ROC AUC when the curve spans
    FAR 0 to 1) unless ``labels`` gives another text, best area first; with more than five curves it sits beside
    the axes, where it hides none of them. Points with FAR = 0 have no place on a log axis and are not drawn; the
    axis starts at the smallest positive FAR of any curve.

    Args:
        curves: ``{name: (fpr, tpr)}``; also accepts ``(fpr, tpr, thresholds)`` or the ``roc`` dict of
            :func:`lightning_margin.evaluation.evaluate_pairs`. Tensors, arrays or lists.
        path: save the figure there as a PNG when given.
        title: figure title (default: "Verification ROC").
        labels: legend text per name, replacing "name (AUC = ...)".

    Returns:
        The matplotlib figure (Agg canvas; nothing is shown).

    Example:
        >>> figure = plot_roc_curves({"model-a": ([0.0, 0.001, 0.01, 1.0], [0.0, 0.9, 0.97, 1.0])})
        >>> [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
        ['model-a (AUC = 0.9840)']
    """
    if not curves:
        raise ValueError("`curves` is empty: give at least one {name: (fpr, tpr)}")
    labels = dict(labels or {})
    unknown = sorted(set(labels) - set(curves))
    if unknown:
        raise ValueError(f"`labels` names curves that are not plotted: {unknown}; curves are {sorted(curves)}")

    beside = len(curves) > _LEGEND_INSIDE_MAX
    figure = new_figure(8.5 if beside else 6.0, 4.5)
    axes = figure.add_subplot()
    smallest_positive = math.inf
    ranked = []
    for name, curve in curves.items():
        fpr, tpr = _as_rates(name, curve)
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoidal rule (np.trapz is numpy-1 only)
        (line,) = axes.plot(fpr, tpr, label=labels.get(name, f"{name} (AUC = {area:.4f})"), linewidth=1.5)
        ranked.append((area, line))
        positive = fpr[fpr > 0]
        if positive.size:
            smallest_positive = min(smallest_positive, float(positive.min()))

    # "mask" drops FAR = 0 from the drawing instead of clipping it to a tiny number far off to the left.
    axes.set_xscale("log", nonpositive="mask")
    if math.isfinite(smallest_positive) and smallest_positive < 1:
        axes.set_xlim(10 ** math.floor(math.log10(smallest_positive)), 1.0)
    axes.set_ylim(0.0, 1.005)
    axes.set_xlabel("False accept rate (FAR)")
    axes.set_ylabel("True accept rate (TAR)")
    axes.set_title(title if title is not None else "Verification ROC")
    axes.grid(True, which="both", alpha=0.3)
    handles = [line for _, line in sorted(ranked, key=lambda entry: -entry[0])]  # the legend reads as a ranking
    if beside:  # many curves: a legend inside the axes would hide some of them
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        figure.subplots_adjust(right=0.68)
    else:
        axes.legend(handles=handles, loc="lower right")
    save_figure(figure, path)
    return figure
