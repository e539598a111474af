"""All verification metrics of one pair set in one ``Metric``: what a training loop logs per validation set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from lightning_margin.metrics.functional import (
    DEFAULT_FAR,
    _check_far,
    _check_num_folds,
    roc_curve,
    verification_metrics,
)
from lightning_margin.metrics.pair_scores import PairScoreMetric

__all__ = ["VerificationMetrics"]


class VerificationMetrics(PairScoreMetric):
    """k-fold accuracy (LFW protocol), TAR@FAR, EER and ROC AUC of a verification set, from one set of states.

    ``compute()`` returns a flat dict whose keys are ``accuracy``, ``accuracy_std``, ``threshold``, one
    ``tar@far=<far>`` per target (e.g. ``tar@far=1e-3``), ``eer`` and ``auc``: log it per set as
    ``val/<set>/<key>``. :meth:`roc_curve` gives the curve for plotting.

    Args:
        num_folds: folds of the k-fold accuracy (LFW: 10).
        far: target false-accept rate(s) for TAR@FAR.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = VerificationMetrics(num_folds=2, far=(0.5,))
        >>> anchor = torch.tensor([[1.0, 0.0]] * 4)
        >>> other = torch.tensor([[1.0, 0.0], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]])  # cosines 1, 0.89, 0.71, 0
        >>> metric.update(anchor, other, torch.tensor([True, False, True, False]))
        >>> {key: round(value.item(), 3) for key, value in metric.compute().items()}
        {'accuracy': 0.5, 'accuracy_std': 0.0, 'threshold': 0.65, 'tar@far=5e-1': 1.0, 'eer': 0.5, 'auc': 0.75}
    """

    def __init__(self, num_folds: int = 10, far: float | Sequence[float] = DEFAULT_FAR, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_folds = _check_num_folds(num_folds)
        self.far = tuple(_check_far(far)[0])

    def compute(self) -> dict[str, Tensor]:
        """The flat dict of 0-d tensors described in the class docstring."""
        return verification_metrics(*self.pairs(), num_folds=self.num_folds, far=self.far)

    def roc_curve(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(fpr, tpr, thresholds)`` of the pairs seen so far, synchronised across processes like ``compute``.

        Under DDP every process must call it (it gathers the states), as with ``compute``.
        """
        with self.sync_context(should_sync=self.sync_on_compute):
            return roc_curve(*self.pairs())
