"""Two-class decision margins (ArcFace, Deng et al., 2019, Figure 5): boundaries in (θ1, θ2) or cosine space.

A sample of class 1 at angle ``θ1`` from its own centre and ``θ2`` from class 2's is classified correctly *under
the loss* when its margin-penalised target logit beats class 2's logit: ``T(θ1) > N(θ2)``, where ``T`` is
:func:`~lightning_margin.plots.target_logits.target_logit_curve` and ``N`` is
:func:`~lightning_margin.plots.target_logits.non_target_logit_curve`, both computed by the head itself. The
class-1 boundary is ``θ2 = N^-1(T(θ1))``; class 2's is its mirror image. Plain softmax gives the diagonal; the
band between the two boundaries is the decision margin the loss demands.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from lightning_margin._validation import check_choice, check_integer
from lightning_margin.plots._figure import new_figure, save_figure
from lightning_margin.plots._heads import HeadsArg, resolve_heads
from lightning_margin.plots.target_logits import non_target_logit_curve, target_logit_curve

__all__ = ["decision_boundary", "plot_decision_boundaries"]

_BISECTION_STEPS = 60  # halves [0, pi] down to ~3e-18 rad: exact in float64
_SPACES = ("angle", "cosine")


def decision_boundary(head: nn.Module, thetas: Tensor, *, feature_norm: float = 1.0) -> Tensor:
    """For each ``θ1`` in ``thetas`` (radians), the ``θ2`` where class 2's logit equals class 1's target logit.

    Solved by bisection on the head's own non-target logit, which must decrease in ``θ2`` (it is ``cos θ2``
    times a positive factor for every head but CurricularFace, whose hard-negative rule can break that).

    Args:
        head: Any margin head (copied; the original is untouched).
        thetas: Angles ``θ1`` in radians.
        feature_norm: ``||x||`` of the probing embeddings (MagFace and AdaFace margins depend on it).

    Returns:
        float64 ``θ2`` in radians, NaN where no angle in [0, π] is on the boundary (the penalised target logit
        is below every non-target logit: such a sample is never classified correctly under the loss).

    Example:
        >>> from lightning_margin.heads import create_head
        >>> head = create_head("arcface", embedding_size=3, num_classes=2, margin=0.5)
        >>> decision_boundary(head, torch.tensor([0.0, 1.0]))  # theta2 = theta1 + m
        tensor([0.5000, 1.5000], dtype=torch.float64)
    """
    thetas = torch.as_tensor(thetas, dtype=torch.float64).flatten()
    target = target_logit_curve(head, thetas, feature_norm=feature_norm)

    def non_target(angles: Tensor) -> Tensor:
        return non_target_logit_curve(head, angles, feature_norm=feature_norm)

    grid = non_target(torch.linspace(0.0, math.pi, 181, dtype=torch.float64))
    if bool((grid.diff() > 1e-12).any()):
        raise ValueError(
            f"{type(head).__name__}'s non-target logit does not decrease with the angle, so its two-class decision "
            "boundary is not a curve theta2(theta1); it cannot be drawn here"
        )
    low = torch.zeros_like(thetas)
    high = torch.full_like(thetas, math.pi)
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        above = non_target(middle) > target  # class 2 still wins at this theta2: the boundary lies further out
        low = torch.where(above, middle, low)
        high = torch.where(above, high, middle)
    solution = (low + high) / 2
    tolerance = 1e-9
    defined = (target <= grid[0] + tolerance) & (target >= grid[-1] - tolerance)
    return torch.where(defined, solution, torch.full_like(solution, math.nan))


def plot_decision_boundaries(
    heads: HeadsArg | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    space: str = "angle",
    feature_norm: float = 1.0,
    num_points: int = 721,
    ncols: int | None = None,
    title: str | None = "Two-class decision margins",
) -> Figure:
    """Decision margins (ArcFace, Deng et al., 2019, Figure 5): one panel per head, both classes' boundaries.

    In each panel the line ``gid="boundary-class1"`` is class 1's boundary (samples above it are classified as
    class 1 by the loss), ``"boundary-class2"`` its mirror for class 2, the grey band between them the margin,
    and the dashed ``"no-margin"`` diagonal the softmax boundary.

    Args:
        heads: As in :func:`~lightning_margin.plots.target_logits.plot_target_logits`.
        path: Save the figure there as a PNG.
        space: ``"angle"``: axes θ1, θ2 in degrees, [0, 180]; ``"cosine"``: axes cos θ1, cos θ2, [-1, 1].
        feature_norm: ``||x||`` of the probing embeddings.
        num_points: Values of θ1 sampled on [0, 180] degrees.
        ncols: Panels per row (default: all in one row up to 5).
        title: Figure title; ``None`` for none.

    Example:
        >>> figure = plot_decision_boundaries(["softmax", "cosface", "arcface"], space="cosine")  # doctest: +SKIP
    """
    space = check_choice("space", space, _SPACES)
    num_points = check_integer("num_points", num_points, minimum=2)
    labelled = resolve_heads(heads)
    ncols = min(len(labelled), 5) if ncols is None else check_integer("ncols", ncols)
    nrows = math.ceil(len(labelled) / ncols)
    thetas = torch.linspace(0.0, math.pi, num_points, dtype=torch.float64)

    figure = new_figure(3.0 * ncols, 3.1 * nrows + (0.3 if title else 0.0))
    axes = figure.subplots(nrows, ncols, squeeze=False).flatten()
    for ax, (label, head) in zip(axes, labelled.items(), strict=False):  # spare axes are hidden below
        boundary = decision_boundary(head, thetas, feature_norm=feature_norm)
        keep = ~torch.isnan(boundary)
        first, second = thetas[keep].numpy(), boundary[keep].numpy()
        if space == "angle":
            first, second = np.rad2deg(first), np.rad2deg(second)
            limits, axis_label = (0.0, 180.0), "θ{} (degrees)"
        else:
            first, second = np.cos(first), np.cos(second)
            limits, axis_label = (-1.0, 1.0), "cos θ{}"
        ax.plot(limits, limits, linestyle="--", color="0.6", linewidth=0.8, gid="no-margin")
        # The band is the polygon that runs out along class 1's boundary and back along class 2's.
        ax.fill(np.concatenate([first, second[::-1]]), np.concatenate([second, first[::-1]]), color="0.85", zorder=0)
        ax.plot(first, second, color="C0", gid="boundary-class1", label="class 1 boundary")
        ax.plot(second, first, color="C3", gid="boundary-class2", label="class 2 boundary")
        ax.set_xlim(*limits)
        ax.set_ylim(*limits)
        ax.set_aspect("equal")
        ax.set_xlabel(axis_label.format(1))
        ax.set_ylabel(axis_label.format(2))
        # Hyperparameters on a second line: long labels would run into the next panel.
        ax.set_title(label.replace(" (", "\n(", 1), fontsize="small")
    for ax in axes[len(labelled) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="x-small", loc="lower right" if space == "angle" else "upper left")
    if title:
        figure.suptitle(title)
    save_figure(figure, path)
    return figure
