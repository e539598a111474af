"""Lightning callbacks: head hyperparameter schedules, numerical safety, θ and ROC figures, export, metric history."""

from lightning_margin.callbacks.embedder_artifact import EmbedderArtifact
from lightning_margin.callbacks.head_scheduler import HeadScheduler
from lightning_margin.callbacks.hyperparameter_schedule import HeadHyperparameterSchedule
from lightning_margin.callbacks.metric_history import MetricHistory
from lightning_margin.callbacks.nonfinite_diagnostics import NonFiniteError
from lightning_margin.callbacks.nonfinite_guard import NonFiniteGuard
from lightning_margin.callbacks.rng_state import RNGStateCheckpoint
from lightning_margin.callbacks.roc_figure import ROCFigure
from lightning_margin.callbacks.sphereface_annealing import SphereFaceAnnealing
from lightning_margin.callbacks.theta_distribution import ThetaDistribution

__all__ = [
    "EmbedderArtifact",
    "HeadHyperparameterSchedule",
    "HeadScheduler",
    "MetricHistory",
    "NonFiniteError",
    "NonFiniteGuard",
    "RNGStateCheckpoint",
    "ROCFigure",
    "SphereFaceAnnealing",
    "ThetaDistribution",
]
