"""SphereFace's lambda annealing, as the original Caffe layer computes it."""

from __future__ import annotations

from lightning_margin._validation import check_non_negative, check_positive
from lightning_margin.callbacks.hyperparameter_schedule import HeadHyperparameterSchedule
from lightning_margin.functional.schedules import sphereface_lambda

__all__ = ["SphereFaceAnnealing"]


class SphereFaceAnnealing(HeadHyperparameterSchedule):
    """SphereFace (Liu et al., 2017) lambda annealing: ``lambda = max(lambda_min, base (1 + gamma it)^-power)``.

    A-Softmax with ``m = 4`` does not converge from scratch; the paper blends the target logit with plain
    ``cos theta`` (weight ``lambda``) and lets ``lambda`` decay. Every training step sets ``head.lambda_``.

    Iteration convention: the Caffe layer increments its counter before use, so ``it = 1`` at the first forward
    pass. Here ``it = trainer.global_step + 1``: the same with one forward per optimizer step; with gradient
    accumulation ``it`` counts optimizer steps, not forward passes.

    Args:
        base: ``lambda`` before decay (1000 in the paper's Caffe prototxt).
        gamma: Decay rate (0.12).
        power: Decay exponent (1).
        lambda_min: Floor (5).
        attribute: The head attribute to set.
        head_path: Dotted path from the LightningModule to the head.

    Example:
        >>> from lightning_margin.callbacks import SphereFaceAnnealing
        >>> SphereFaceAnnealing().value_at(0)  # the first step: it = 1
        892.8571428571428
    """

    def __init__(
        self,
        base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
        attribute: str = "lambda_",
        head_path: str = "head",
    ) -> None:
        super().__init__(attribute, head_path)
        self.base = check_non_negative("base", base)
        self.gamma = check_non_negative("gamma", gamma)
        self.power = check_positive("power", power)
        self.lambda_min = check_non_negative("lambda_min", lambda_min)

    def value_at(self, step: int) -> float:
        return sphereface_lambda(step + 1, self.base, self.gamma, self.power, self.lambda_min)
