"""θ distributions (ArcFace, Deng et al., 2019, Figure 7): angles between embeddings and their class centres.

:func:`class_center_angles` computes the angles (the functional core of
:class:`~lightning_margin.callbacks.ThetaDistribution`); :func:`plot_theta_histograms` draws one histogram curve
per training stage, so the shift of the distribution towards 0 as training proceeds is visible at a glance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from lightning_margin._validation import check_integer
from lightning_margin.plots._figure import new_figure, save_figure

__all__ = ["class_center_angles", "plot_theta_histograms", "theta_histogram"]


def class_center_angles(embeddings: Tensor, labels: Tensor, weight: Tensor, rows_per_class: int = 1) -> Tensor:
    """Angle in degrees between each embedding and its class centre (the nearest sub-centre, if several).

    Args:
        embeddings: ``[B, D]``.
        labels: ``[B]`` class indices.
        weight: The head's ``[num_classes * rows_per_class, D]`` weight; rows ``j*K .. j*K+K-1`` are class ``j``.
        rows_per_class: ``K``, the number of sub-centres per class.

    Returns:
        float32 ``[B]`` angles in [0, 180], computed in float32 (or float64 if the inputs are float64), no grad.

    Example:
        >>> class_center_angles(torch.tensor([[1.0, 1.0]]), torch.tensor([0]), torch.tensor([[1.0, 0.0]]))
        tensor([45.])
    """
    rows_per_class = check_integer("rows_per_class", rows_per_class)
    if embeddings.ndim != 2 or weight.ndim != 2 or embeddings.shape[1] != weight.shape[1]:
        raise ValueError(
            "embeddings [B, D] and weight [C*K, D] must share D, got "
            f"{tuple(embeddings.shape)} and {tuple(weight.shape)}"
        )
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must be [{embeddings.shape[0]}] (one per embedding), got {tuple(labels.shape)}")
    if weight.shape[0] % rows_per_class:
        raise ValueError(f"weight has {weight.shape[0]} rows, not a multiple of rows_per_class={rows_per_class}")
    num_classes = weight.shape[0] // rows_per_class
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {int(labels.min())} to {int(labels.max())}")
    with torch.no_grad():
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, weight.dtype), torch.float32)
        x = F.normalize(embeddings.detach().to(dtype), dim=1)
        centres = F.normalize(weight.detach().to(dtype), dim=1).view(num_classes, rows_per_class, -1)
        cos = torch.einsum("bkd,bd->bk", centres[labels.to(centres.device)], x.to(centres.device)).amax(dim=1)
        return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def theta_histogram(angles: Tensor | np.ndarray, bins: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Counts of ``angles`` (degrees) in ``bins`` equal bins over [0, 180]: ``(counts [bins], edges [bins + 1])``.

    Example:
        >>> counts, edges = theta_histogram(np.array([10.0, 20.0, 170.0]), bins=2)
        >>> counts.tolist(), edges.tolist()
        ([2, 1], [0.0, 90.0, 180.0])
    """
    bins = check_integer("bins", bins)
    return np.histogram(_as_array(angles), bins=bins, range=(0.0, 180.0))


def _as_array(angles: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(angles, Tensor):
        return angles.detach().cpu().double().numpy().ravel()
    return np.asarray(angles, dtype=np.float64).ravel()


def plot_theta_histograms(
    angles: Mapping[str, Tensor | np.ndarray],
    path: str | os.PathLike[str] | None = None,
    *,
    bins: int = 90,
    title: str | None = "θ distribution during training",
) -> Figure:
    """Histograms of embedding-to-centre angles, one step curve per stage (ArcFace, Deng et al., 2019, Figure 7).

    Args:
        angles: ``{stage label: angles in degrees}``, e.g. ``{"start": ..., "middle": ..., "end": ...}``; drawn in
            this order. Each curve is ``Axes.stairs`` of :func:`theta_histogram` (raw counts); the legend gives
            the number of samples and the mean angle.
        path: Save the figure there as a PNG.
        bins: Number of equal bins over [0, 180] degrees.
        title: Axes title; ``None`` for none.

    Example:
        >>> figure = plot_theta_histograms({"start": torch.full((8,), 90.0), "end": torch.full((8,), 20.0)})
        >>> [line.get_label() for line in figure.axes[0].patches]
        ['start (n=8, mean 90.0°)', 'end (n=8, mean 20.0°)']
    """
    if not angles:
        raise ValueError("`angles` is empty; give at least one {stage: angles}")
    figure = new_figure(6.0, 4.0)
    ax = figure.add_subplot()
    for stage, values in angles.items():
        values = _as_array(values)
        counts, edges = theta_histogram(values, bins)
        total = int(counts.sum())
        mean = float(values.mean()) if values.size else float("nan")
        ax.stairs(counts, edges, label=f"{stage} (n={total}, mean {mean:.1f}°)", linewidth=1.5)
    ax.set_xlim(0.0, 180.0)
    ax.set_xticks(np.arange(0, 181, 30))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("θ between embedding and its class centre (degrees)")
    ax.set_ylabel("number of samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    save_figure(figure, path)
    return figure
