"""The margin papers' figures, drawn from this library's own heads and trained models (matplotlib, PNG).

One module per figure, each with a pure function that computes the data and a ``plot_*`` function that returns
a :class:`matplotlib.figure.Figure` (Agg canvas; nothing is shown) and saves a PNG when given a path:

- :mod:`~lightning_margin.plots.target_logits`: target logit against θ (ArcFace, Figure 3).
- :mod:`~lightning_margin.plots.decision_boundaries`: two-class decision margins (ArcFace, Figure 5).
- :mod:`~lightning_margin.plots.geometry`: 2-D / 3-D feature geometry per loss (SphereFace, Figure 2).
- :mod:`~lightning_margin.plots.theta_histogram`: θ distribution during training (ArcFace, Figure 7); recorded
  in training by :class:`~lightning_margin.callbacks.theta_distribution.ThetaDistribution`.
- :mod:`~lightning_margin.plots.roc`: verification ROC curves of several models overlaid.

``lightning-margin plot {target-logits,decision-boundaries,geometry}`` draws them from the command line.
"""

from lightning_margin.plots._heads import DEFAULT_HEADS, head_legend_label, rows_per_class
from lightning_margin.plots.decision_boundaries import decision_boundary, plot_decision_boundaries
from lightning_margin.plots.geometry import (
    GEOMETRY_LOSSES,
    GeometryResult,
    load_digits_subset,
    plot_geometry,
    train_geometry_models,
)
from lightning_margin.plots.roc import plot_roc_curves
from lightning_margin.plots.target_logits import (
    logit_unit,
    non_target_logit_curve,
    plot_target_logits,
    target_logit_curve,
)
from lightning_margin.plots.theta_histogram import class_center_angles, plot_theta_histograms, theta_histogram

__all__ = [
    "DEFAULT_HEADS",
    "GEOMETRY_LOSSES",
    "GeometryResult",
    "class_center_angles",
    "decision_boundary",
    "head_legend_label",
    "load_digits_subset",
    "logit_unit",
    "non_target_logit_curve",
    "plot_decision_boundaries",
    "plot_geometry",
    "plot_roc_curves",
    "plot_target_logits",
    "plot_theta_histograms",
    "rows_per_class",
    "target_logit_curve",
    "theta_histogram",
    "train_geometry_models",
]
