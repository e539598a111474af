"""k-fold verification accuracy (the LFW protocol) as a torchmetrics ``Metric``."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_margin.metrics.functional import _check_num_folds, verification_accuracy
from lightning_margin.metrics.pair_scores import PairScoreMetric

__all__ = ["VerificationAccuracy"]


class VerificationAccuracy(PairScoreMetric):
    """k-fold verification accuracy of Huang et al., "Labeled Faces in the Wild" (2007), as insightface computes it.

    Pairs are scored by the cosine of their L2-normalised embeddings and split into ``num_folds`` consecutive folds;
    each fold is classified with the threshold that is best on the other folds (exact search over every distinct
    score; among maximisers, the midpoint of the highest maximising interval). See
    :func:`~lightning_margin.metrics.functional.verification_accuracy` for the exact rule.

    Args:
        num_folds: number of consecutive folds (LFW: 10).
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).

    Example:
        >>> import torch
        >>> metric = VerificationAccuracy(num_folds=2)
        >>> anchor = torch.tensor([[1.0, 0.0]] * 4)
        >>> other = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])  # cosines 1, 0, 1, 0
        >>> metric.update(anchor, other, torch.tensor([True, False, True, False]))
        >>> metric.compute()
        {'accuracy': tensor(1.), 'accuracy_std': tensor(0.), 'threshold': tensor(0.5000)}
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, num_folds: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_folds = _check_num_folds(num_folds)

    def compute(self) -> dict[str, Tensor]:
        """``accuracy`` (mean over folds), ``accuracy_std`` (population std over folds), ``threshold`` (mean)."""
        return verification_accuracy(*self.pairs(), num_folds=self.num_folds)
