"""ROC-based verification metrics as torchmetrics ``Metric`` classes: TAR@FAR, EER and ROC AUC."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from lightning_margin.metrics.functional import (
    DEFAULT_FAR,
    _check_far,
    equal_error_rate,
    roc_auc,
    tar_at_far,
)
from lightning_margin.metrics.pair_scores import PairScoreMetric

__all__ = ["EER", "TARAtFAR", "VerificationAUC"]


class TARAtFAR(PairScoreMetric):
    """True accept rate at fixed false accept rates, the operating points of IJB-B/C style verification reports.

    For each target FAR: the highest TAR of any cosine threshold whose FAR does not exceed it, read off torchmetrics'
    exact ROC. See :func:`~lightning_margin.metrics.functional.tar_at_far`.

    Args:
        far: one target false-accept rate in ``(0, 1]`` or a sequence of them.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = TARAtFAR(far=(0.5, 1e-3))
        >>> anchor = torch.tensor([[1.0, 0.0]] * 4)
        >>> other = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.5], [0.0, 1.0]])
        >>> metric.update(anchor, other, torch.tensor([True, True, False, False]))
        >>> metric.compute()
        tensor([1.0000, 0.5000])
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, far: float | Sequence[float] = DEFAULT_FAR, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        values, scalar = _check_far(far)
        self.far: float | tuple[float, ...] = values[0] if scalar else tuple(values)

    def compute(self) -> Tensor:
        """One TAR per target FAR, in the order given (a 0-d tensor when ``far`` is a single number)."""
        return tar_at_far(*self.pairs(), far=self.far)


class EER(PairScoreMetric):
    """Equal error rate: where the false accept and false reject rates of the cosine threshold are equal.

    See :func:`~lightning_margin.metrics.functional.equal_error_rate`.

    Example:
        >>> import torch
        >>> metric = EER()
        >>> anchor = torch.tensor([[1.0, 0.0]] * 4)
        >>> other = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.5], [0.0, 1.0]])
        >>> metric.update(anchor, other, torch.tensor([True, True, False, False]))
        >>> metric.compute()
        tensor(0.5000)
    """

    higher_is_better = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def compute(self) -> Tensor:
        """The equal error rate, a 0-d tensor in ``[0, 1]``."""
        return equal_error_rate(*self.pairs())


class VerificationAUC(PairScoreMetric):
    """Area under the verification ROC curve of the cosine scores, by torchmetrics' ``binary_auroc``.

    See :func:`~lightning_margin.metrics.functional.roc_auc`.

    Example:
        >>> import torch
        >>> metric = VerificationAUC()
        >>> anchor = torch.tensor([[1.0, 0.0]] * 4)
        >>> other = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.5], [0.0, 1.0]])
        >>> metric.update(anchor, other, torch.tensor([True, True, False, False]))
        >>> metric.compute()
        tensor(0.7500)
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def compute(self) -> Tensor:
        """The ROC AUC, a 0-d tensor in ``[0, 1]``."""
        return roc_auc(*self.pairs())
