"""Face-verification metrics: k-fold accuracy (LFW protocol), TAR@FAR, EER and ROC AUC.

Pure functions live in :mod:`lightning_margin.metrics.functional`; the classes are torchmetrics ``Metric`` objects
whose ``update(embeddings1, embeddings2, issame)`` scores each pair by the cosine of its L2-normalised embeddings and
whose states synchronise across processes by concatenation.
"""

from lightning_margin.metrics.accuracy import VerificationAccuracy
from lightning_margin.metrics.functional import (
    DEFAULT_FAR,
    MAIN_METRIC,
    cosine_scores,
    equal_error_rate,
    roc_auc,
    roc_curve,
    tar_at_far,
    tar_at_far_key,
    verification_accuracy,
    verification_metrics,
)
from lightning_margin.metrics.pair_scores import PairScoreMetric
from lightning_margin.metrics.roc import EER, TARAtFAR, VerificationAUC
from lightning_margin.metrics.verification import VerificationMetrics

__all__ = [
    "DEFAULT_FAR",
    "EER",
    "MAIN_METRIC",
    "PairScoreMetric",
    "TARAtFAR",
    "VerificationAUC",
    "VerificationAccuracy",
    "VerificationMetrics",
    "cosine_scores",
    "equal_error_rate",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "tar_at_far_key",
    "verification_accuracy",
    "verification_metrics",
]
