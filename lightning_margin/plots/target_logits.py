"""Target logit curves (ArcFace, Deng et al., 2019, Figure 3): the true-class logit as a function of its angle.

Every value comes from the head's own :meth:`logits`: a copy of the head gets a canonical weight (class 0's rows
along ``e0``, every other class along ``e2``, or ``e1`` in 2-D), and is fed embeddings of norm ``feature_norm``
at angle ``theta`` from class 0 in the ``(e0, e1)`` plane. So the curves show what the code computes, not what a
paper says it should.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from lightning_margin._validation import check_integer, check_positive
from lightning_margin.plots._figure import new_figure, save_figure
from lightning_margin.plots._heads import HeadsArg, resolve_heads, rows_per_class

__all__ = ["logit_unit", "non_target_logit_curve", "plot_target_logits", "target_logit_curve"]


def _probe_head(head: nn.Module) -> nn.Module:
    """A float64, eval-mode copy of ``head`` with the canonical weight (and a zero bias, for softmax)."""
    weight = getattr(head, "weight", None)
    if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.shape[1] < 2:
        raise ValueError(f"{type(head).__name__} needs a 2-D `weight` of at least 2 columns to be probed by angle")
    rows = rows_per_class(head)
    # Eval mode: running statistics (CurricularFace's t, AdaFace's batch mean/std) must not move while probing.
    probe = copy.deepcopy(head).to(device="cpu", dtype=torch.float64).eval()
    other_axis = min(2, weight.shape[1] - 1)
    with torch.no_grad():
        probe.weight.zero_()
        probe.weight[:rows, 0] = 1.0
        probe.weight[rows:, other_axis] = 1.0
        bias = getattr(probe, "bias", None)
        if isinstance(bias, Tensor):
            bias.zero_()
    return probe


def _embeddings_at(thetas: Tensor, embedding_size: int, feature_norm: float) -> Tensor:
    embeddings = torch.zeros(thetas.numel(), embedding_size, dtype=torch.float64)
    embeddings[:, 0] = feature_norm * torch.cos(thetas)
    embeddings[:, 1] = feature_norm * torch.sin(thetas)
    return embeddings


def logit_unit(head: nn.Module, feature_norm: float = 1.0) -> float:
    """What the plotted logits are divided by: the head's ``scale`` if it has one, else ``||x|| ||W||``.

    With the canonical unit-norm weight that makes every curve a "cosine-like" quantity: ``cos(theta)`` for
    plain softmax, ``psi(theta)`` for SphereFace, ``cos(theta + m)`` for ArcFace, whatever the scale.
    """
    scale = getattr(head, "scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return float(scale)
    return float(feature_norm)


def _curve(head: nn.Module, thetas: Tensor, label: int, feature_norm: float) -> Tensor:
    check_positive("feature_norm", feature_norm)
    thetas = torch.as_tensor(thetas, dtype=torch.float64).flatten()
    probe = _probe_head(head)
    embeddings = _embeddings_at(thetas, probe.weight.shape[1], feature_norm)
    labels = torch.full((thetas.numel(),), label, dtype=torch.long)
    with torch.no_grad():
        logits = probe.logits(embeddings, labels)
    return logits[:, 0] / logit_unit(head, feature_norm)


def target_logit_curve(head: nn.Module, thetas: Tensor, *, feature_norm: float = 1.0) -> Tensor:
    """The true-class logit of an embedding at angle ``thetas`` (radians) from its class centre, over the unit.

    Args:
        head: Any margin head (it is copied; the original is untouched).
        thetas: Angles in radians, any shape (flattened).
        feature_norm: ``||x||`` of the probing embeddings; matters only to heads whose margin depends on the
            norm (MagFace, AdaFace).

    Returns:
        float64 ``[N]``: ``head.logits(x, y)[:, y] / logit_unit(head)``.

    Example:
        >>> from lightning_margin.heads import create_head
        >>> head = create_head("arcface", embedding_size=3, num_classes=2, margin=0.5)
        >>> target_logit_curve(head, torch.deg2rad(torch.tensor([0.0, 90.0])))  # cos(theta + 0.5)
        tensor([ 0.8776, -0.4794], dtype=torch.float64)
    """
    return _curve(head, thetas, 0, feature_norm)


def non_target_logit_curve(head: nn.Module, thetas: Tensor, *, feature_norm: float = 1.0) -> Tensor:
    """The logit of a class the embedding does *not* belong to, at angle ``thetas`` from that class's centre.

    Same probe and unit as :func:`target_logit_curve`; the embedding's own class lies at 90 degrees from it
    (for heads of ``embedding_size >= 3``). ``cos(theta)`` for every head but CurricularFace, whose hard
    negatives depend on its curriculum state ``t``.
    """
    return _curve(head, thetas, 1, feature_norm)


def plot_target_logits(
    heads: HeadsArg | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    feature_norm: float = 1.0,
    num_points: int = 721,
    title: str | None = "Target logit curves",
) -> Figure:
    """Target logit curves (ArcFace, Deng et al., 2019, Figure 3): one curve per head, theta from 0 to 180 degrees.

    The y-axis is the true-class logit divided by :func:`logit_unit` (the scale ``s``, or ``||x||`` for heads
    without one), i.e. the margin-penalised cosine that the softmax sees before scaling.

    Args:
        heads: Names (``"arcface"``), ``(name, hyperparameters)`` pairs, modules, or a mapping legend label ->
            any of these; ``None`` draws softmax, SphereFace, CosFace, ArcFace and the combined margin.
        path: Save the figure there as a PNG.
        feature_norm: ``||x||`` of the probing embeddings (see :func:`target_logit_curve`).
        num_points: Angles sampled on [0, 180] degrees.
        title: Axes title; ``None`` for none.

    Example:
        >>> heads = ["softmax", ("arcface", {"margin": 0.5})]
        >>> figure = plot_target_logits(heads, "target_logits.png")  # doctest: +SKIP
    """
    num_points = check_integer("num_points", num_points, minimum=2)
    labelled = resolve_heads(heads)
    degrees = np.linspace(0.0, 180.0, num_points)
    thetas = torch.from_numpy(np.deg2rad(degrees))

    figure = new_figure(6.0, 4.0)
    ax = figure.add_subplot()
    for index, (label, head) in enumerate(labelled.items()):
        curve = target_logit_curve(head, thetas, feature_norm=feature_norm).numpy()
        # Past the 10 colours of the cycle, a new line style keeps every curve distinguishable.
        ax.plot(degrees, curve, label=label, linestyle=("-", "--", ":")[index // 10 % 3])
    ax.set_xlim(0.0, 180.0)
    ax.set_xticks(np.arange(0, 181, 30))
    ax.set_xlabel("θ between embedding and class centre (degrees)")
    ax.set_ylabel("target logit / scale")
    ax.grid(alpha=0.3)
    if len(labelled) > 6:
        figure.set_figwidth(9.0)
        figure.legend(loc="outside right upper", fontsize="small")
    else:
        ax.legend(loc="lower left", fontsize="small")
    if title:
        ax.set_title(title)
    save_figure(figure, path)
    return figure
