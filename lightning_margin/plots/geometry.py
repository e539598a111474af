"""Feature geometry (SphereFace, Liu et al., 2017, Figure 2): 2-D and 3-D embeddings learnt under each loss.

:func:`train_geometry_models` trains the same tiny network once per loss on a handful of classes of
scikit-learn's bundled handwritten digits (no download) or any ``(features, labels)`` you give it, with the
library's heads; :func:`plot_geometry` draws the embeddings with the class-weight directions as arrows: in the
plane for a 2-D embedding, on the unit sphere for a 3-D one. Training and drawing are separate so a test (or
you) can check what is drawn against what was learnt.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor, nn

from lightning_margin._validation import check_integer, check_positive, check_range
from lightning_margin.heads import create_head
from lightning_margin.plots._figure import CLASS_COLORS, new_figure, save_figure
from lightning_margin.plots._heads import head_legend_label, rows_per_class

__all__ = [
    "GEOMETRY_HEAD_KWARGS",
    "GEOMETRY_LOSSES",
    "GeometryResult",
    "load_digits_subset",
    "plot_geometry",
    "train_geometry_models",
]

GEOMETRY_LOSSES: tuple[str, ...] = ("softmax", "modified_softmax", "sphereface", "cosface", "arcface")
# A 2-D or 3-D embedding has little room: a scale of 16 (NormFace's default) instead of 64 keeps the softmax
# from saturating on the first steps. Margins are the papers' values.
GEOMETRY_HEAD_KWARGS: dict[str, dict[str, Any]] = {
    "sphereface": {"margin": 4},
    "cosface": {"scale": 16.0, "margin": 0.35},
    "arcface": {"scale": 16.0, "margin": 0.5},
    "combined": {"scale": 16.0},
    "subcenter_arcface": {"scale": 16.0},
    "curricularface": {"scale": 16.0},
    "adaface": {"scale": 16.0},
    "magface": {"scale": 16.0},
}
# SphereFace's schedule: lambda = max(lambda_min, base / (1 + gamma * step)); gamma is set so that lambda reaches
# lambda_min three quarters into training, whatever the number of steps.
_LAMBDA_BASE, _LAMBDA_MIN = 1000.0, 5.0


@dataclass
class GeometryResult:
    """What one loss learnt: the embeddings of every sample and the head's class weights, on the CPU.

    Attributes:
        loss: Registry name of the head (``"arcface"``).
        label: Panel title, e.g. ``"ArcFace (s=16, m=0.5)"``.
        embeddings: ``[N, embedding_size]`` embeddings after training, of all samples or the held-out ones.
        labels: ``[N]`` their class indices in ``0 .. num_classes-1``.
        class_weights: The head's ``weight`` (``[num_classes * rows_per_class, embedding_size]``).
        rows_per_class: Weight rows per class (sub-centres).
        accuracy: Fraction of these samples whose inference logits (no margin) pick their own class.
        class_names: Names of the classes, in label order.
        split: ``"training"`` (the samples trained on) or ``"held-out"`` (samples kept out of training).
        indices: ``[N]`` positions of these samples in the data (in the digits subset, in dataset order).
    """

    loss: str
    label: str
    embeddings: Tensor
    labels: Tensor
    class_weights: Tensor
    rows_per_class: int
    accuracy: float
    class_names: list[str]
    split: str = "training"
    indices: Tensor | None = None

    @property
    def embedding_size(self) -> int:
        return int(self.embeddings.shape[1])


def load_digits_subset(classes: Sequence[int] = (0, 1, 2, 3, 4)) -> tuple[Tensor, Tensor, list[str]]:
    """Digits ``classes`` of scikit-learn's bundled 8x8 digits: features in [0, 1] ``[N, 64]``, labels, names.

    Labels are renumbered ``0 .. len(classes)-1`` in the order given.

    Example:
        >>> features, labels, names = load_digits_subset((3, 7))
        >>> features.shape[1], labels.unique().tolist(), names
        (64, [0, 1], ['3', '7'])
    """
    from sklearn.datasets import load_digits

    classes = [int(value) for value in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(0 <= value <= 9 for value in classes):
        raise ValueError(f"`classes` must be at least two distinct digits in 0..9, got {classes}")
    digits = load_digits()
    keep = np.isin(digits.target, classes)
    remap = {digit: index for index, digit in enumerate(classes)}
    features = torch.from_numpy(digits.data[keep]).float() / 16.0  # pixel intensities are 0..16
    labels = torch.tensor([remap[int(digit)] for digit in digits.target[keep]], dtype=torch.long)
    return features, labels, [str(value) for value in classes]


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run the enclosed ops on one thread: intra-op threads only cost on ops this small, and on a busy machine
    they wait on each other (1000 steps took 5 s on one thread and 130 s on two on a loaded 2-core box)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _make_network(in_features: int, hidden_size: int, embedding_size: int) -> nn.Module:
    # The final BatchNorm is the face-recognition neck's: it keeps the batch of embeddings centred on the origin,
    # so early training cannot squeeze every class into one narrow cone (which a 2-D margin loss never leaves).
    return nn.Sequential(
        nn.Linear(in_features, hidden_size),
        nn.PReLU(hidden_size),
        nn.Linear(hidden_size, hidden_size),
        nn.PReLU(hidden_size),
        nn.Linear(hidden_size, embedding_size),
        nn.BatchNorm1d(embedding_size),
    )


def train_geometry_models(
    losses: Sequence[str] = GEOMETRY_LOSSES,
    *,
    embedding_size: int = 2,
    data: tuple[Tensor, Tensor] | None = None,
    classes: Sequence[int] = (0, 1, 2, 3, 4),
    class_names: Sequence[str] | None = None,
    steps: int = 2000,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    hidden_size: int = 64,
    head_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    holdout_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, GeometryResult]:
    """Train one tiny embedding network per loss and return what each learnt (SphereFace, Liu et al., 2017, Fig. 2).

    Every loss starts from the same initial network and sees the same batches (Adam, weight decay 1e-4). Heads
    with a ``lambda_`` (SphereFace, L-Softmax) have it annealed as in SphereFace: from 1000 down to 5, reached
    three quarters of the way through. The global RNG state is left as it was.

    Args:
        losses: Head registry names, one panel each.
        embedding_size: 2 (drawn in the plane) or 3 (drawn on the sphere).
        data: ``(features [N, F], labels [N])`` with labels ``0..C-1``; default: digits ``classes``.
        classes: Digits to use when ``data`` is None.
        class_names: Legend names of the classes of ``data`` (default: their indices).
        steps: Optimiser steps per loss (2000 take ~2 s per loss on one CPU core).
        batch_size: Samples per step, drawn with replacement.
        learning_rate: Adam's learning rate.
        hidden_size: Width of the two hidden layers.
        head_kwargs: Per-loss hyperparameters, merged over :data:`GEOMETRY_HEAD_KWARGS`.
        holdout_fraction: Fraction of each class kept out of training (chosen with ``seed``); the results hold,
            and the accuracy is measured on, these held-out samples only. 0 trains on, and returns, every sample.
        seed: Seed of the initialisation, of the batches and of the held-out split.

    Example:
        >>> results = train_geometry_models(("softmax", "arcface"), steps=200)  # doctest: +SKIP
        >>> plot_geometry(results, "geometry.png")  # doctest: +SKIP
    """
    if isinstance(losses, str) or not losses:
        raise ValueError(f"`losses` must be a non-empty sequence of head names, got {losses!r}")
    embedding_size = check_integer("embedding_size", embedding_size, minimum=2)
    if embedding_size > 3:
        raise ValueError(
            f"`embedding_size` must be 2 or 3 (the figure is drawn in 2-D or on a sphere), got {embedding_size}"
        )
    steps = check_integer("steps", steps)
    batch_size = check_integer("batch_size", batch_size)
    hidden_size = check_integer("hidden_size", hidden_size)
    learning_rate = check_positive("learning_rate", learning_rate)
    holdout_fraction = check_range("holdout_fraction", holdout_fraction, 0.0, 1.0, high_inclusive=False)
    if data is None:
        features, labels, names = load_digits_subset(classes)
    else:
        features, labels = (torch.as_tensor(value) for value in data)
        features, labels = features.float().flatten(1), labels.long()
        if labels.ndim != 1 or labels.shape[0] != features.shape[0] or labels.numel() == 0:
            raise ValueError(
                f"`data` must be (features [N, ...], labels [N]); got {tuple(features.shape)} and {tuple(labels.shape)}"
            )
        num_classes = int(labels.max()) + 1
        if int(labels.min()) < 0 or labels.unique().numel() != num_classes:
            raise ValueError(f"`data` labels must cover 0..C-1 without gaps, got values {labels.unique().tolist()}")
        names = [str(index) for index in range(num_classes)]
    if class_names is not None:
        if len(class_names) != len(names):
            raise ValueError(f"`class_names` has {len(class_names)} names for {len(names)} classes")
        names = [str(name) for name in class_names]
    kwargs_by_loss = {
        loss: {**GEOMETRY_HEAD_KWARGS.get(loss, {}), **(head_kwargs or {}).get(loss, {})} for loss in losses
    }

    shown = (
        _holdout_mask(labels, holdout_fraction, seed) if holdout_fraction else torch.ones_like(labels, dtype=torch.bool)
    )
    trained = ~shown if holdout_fraction else shown
    results = {}
    with torch.random.fork_rng(devices=[]), _single_thread():
        torch.manual_seed(seed)
        initial_state = _make_network(features.shape[1], hidden_size, embedding_size).state_dict()
        for loss in losses:
            torch.manual_seed(seed)
            head = create_head(loss, embedding_size=embedding_size, num_classes=len(names), **kwargs_by_loss[loss])
            network = _make_network(features.shape[1], hidden_size, embedding_size)
            network.load_state_dict(initial_state)
            _train(
                network,
                head,
                features[trained],
                labels[trained],
                steps=steps,
                batch_size=batch_size,
                learning_rate=learning_rate,
                seed=seed,
            )
            network.eval()
            head.eval()
            with torch.no_grad():
                embeddings = network(features[shown])
                accuracy = (head.logits(embeddings).argmax(dim=1) == labels[shown]).float().mean().item()
            results[loss] = GeometryResult(
                loss=loss,
                label=head_legend_label(head),
                embeddings=embeddings,
                labels=labels[shown].clone(),
                indices=shown.nonzero().flatten(),
                class_weights=head.weight.detach().clone(),
                rows_per_class=rows_per_class(head),
                accuracy=accuracy,
                class_names=list(names),
                split="held-out" if holdout_fraction else "training",
            )
    return results


def _holdout_mask(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """True for ``round(fraction * n_c)`` samples of each class ``c`` (at least one), chosen at random."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        count = min(max(round(fraction * members.numel()), 1), members.numel() - 1)
        mask[members[torch.randperm(members.numel(), generator=generator)[:count]]] = True
    return mask


def _train(
    network: nn.Module,
    head: nn.Module,
    features: Tensor,
    labels: Tensor,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> None:
    parameters = [*network.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)  # the same batches for every loss
    anneal = hasattr(head, "lambda_")
    gamma = (_LAMBDA_BASE / _LAMBDA_MIN - 1.0) / max(0.75 * steps, 1.0)
    network.train()
    head.train()
    for step in range(steps):
        if anneal:
            head.lambda_ = max(_LAMBDA_MIN, _LAMBDA_BASE / (1.0 + gamma * step))
        index = torch.randint(0, features.shape[0], (batch_size,), generator=generator)
        loss = head(network(features[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def plot_geometry(
    results: Mapping[str, GeometryResult],
    path: str | os.PathLike[str] | None = None,
    *,
    ncols: int | None = None,
    max_points_per_class: int | None = None,
    title: str | None = None,
) -> Figure:
    """Embeddings and class-weight directions, one panel per loss (SphereFace, Liu et al., 2017, Figure 2).

    2-D embeddings are drawn as they are (the norm shows); class weights as arrows from the origin
    (``Axes.quiver``, one arrow per weight row, length scaled to the panel). 3-D embeddings are normalised onto
    the unit sphere (the loss only sees angles) and each weight row is a line from the centre to 1.3 times its
    unit direction, ``gid="class-weight"``. Points and arrows share the class's colour.

    Args:
        results: From :func:`train_geometry_models`; all of the same embedding size (2 or 3).
        path: Save the figure there as a PNG.
        ncols: Panels per row (default: all in one row up to 5).
        max_points_per_class: Draw at most this many points per class (the first ones), for lighter files.
        title: Figure title; ``None`` for none.
    """
    if not results:
        raise ValueError("`results` is empty; train at least one loss with train_geometry_models")
    sizes = {result.embedding_size for result in results.values()}
    if len(sizes) != 1 or not sizes <= {2, 3}:
        raise ValueError(f"`results` must all have embedding size 2 or all 3, got sizes {sorted(sizes)}")
    (size,) = sizes
    ncols = min(len(results), 5) if ncols is None else check_integer("ncols", ncols)
    nrows = math.ceil(len(results) / ncols)
    figure = new_figure(3.2 * ncols, 3.3 * nrows + (0.3 if title else 0.0))
    for index, result in enumerate(results.values()):
        projection = "3d" if size == 3 else None
        ax = figure.add_subplot(nrows, ncols, index + 1, projection=projection)
        embeddings, labels = _subsample(result, max_points_per_class)
        draw = _draw_sphere if size == 3 else _draw_plane
        draw(ax, embeddings, labels, result)
        # Hyperparameters on their own line: long labels would run into the next panel.
        name = result.label.replace(" (", "\n(", 1)
        split = "train" if result.split == "training" else "held-out"
        ax.set_title(f"{name}\n{split} acc {result.accuracy:.1%}", fontsize="small")
    handles = [
        Line2D([], [], marker="o", linestyle="", color=CLASS_COLORS[k % len(CLASS_COLORS)], label=name)
        for k, name in enumerate(next(iter(results.values())).class_names)
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small", title="class")
    if title:
        figure.suptitle(title)
    save_figure(figure, path)
    return figure


def _subsample(result: GeometryResult, max_points_per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    embeddings, labels = result.embeddings.float().numpy(), result.labels.numpy()
    if max_points_per_class is None:
        return embeddings, labels
    check_integer("max_points_per_class", max_points_per_class)
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        keep[np.flatnonzero(labels == label)[:max_points_per_class]] = True
    return embeddings[keep], labels[keep]


def _weight_classes(result: GeometryResult) -> np.ndarray:
    """The class of each weight row (rows ``j*K .. j*K+K-1`` belong to class ``j``)."""
    return np.arange(result.class_weights.shape[0]) // result.rows_per_class


def _colors(labels: np.ndarray) -> list[str]:
    return [CLASS_COLORS[int(label) % len(CLASS_COLORS)] for label in labels]


def _draw_plane(ax: Any, embeddings: np.ndarray, labels: np.ndarray, result: GeometryResult) -> None:
    ax.scatter(embeddings[:, 0], embeddings[:, 1], c=_colors(labels), s=4, alpha=0.5, linewidths=0)
    radius = float(np.abs(embeddings).max()) if embeddings.size else 1.0
    directions = F.normalize(result.class_weights.float(), dim=1).numpy() * 0.9 * radius
    zeros = np.zeros(len(directions))
    ax.quiver(
        zeros, zeros, directions[:, 0], directions[:, 1], color=_colors(_weight_classes(result)),
        angles="xy", scale_units="xy", scale=1, width=0.012, edgecolor="black", linewidth=0.5,
    )  # fmt: skip
    ax.set_xlim(-1.05 * radius, 1.05 * radius)
    ax.set_ylim(-1.05 * radius, 1.05 * radius)
    ax.set_aspect("equal")
    ax.tick_params(labelsize="x-small")


def _draw_sphere(ax: Any, embeddings: np.ndarray, labels: np.ndarray, result: GeometryResult) -> None:
    azimuth, polar = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
    ax.plot_wireframe(
        np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar), color="0.85", linewidth=0.4
    )
    points = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=_colors(labels), s=4, alpha=0.6, depthshade=False)
    directions = F.normalize(result.class_weights.float(), dim=1).numpy() * 1.3
    for direction, color in zip(directions, _colors(_weight_classes(result)), strict=True):
        ax.plot(*([0.0, value] for value in direction), color=color, linewidth=2.0, gid="class-weight")
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(-1.0, 1.0)
    ax.set_box_aspect((1, 1, 1), zoom=1.4)  # 3-D axes leave wide margins; the sphere can use them
    ax.set_axis_off()
