"""Lightning callbacks: head hyperparameter schedules, numerical safety, θ-distribution recording, export."""

from lightning_margin.callbacks.embedder_artifact import EmbedderArtifact
from lightning_margin.callbacks.hyperparameter_schedule import HeadHyperparameterSchedule
from lightning_margin.callbacks.margin_scheduler import MarginScheduler
from lightning_margin.callbacks.nonfinite_diagnostics import NonFiniteError
from lightning_margin.callbacks.nonfinite_guard import NonFiniteGuard
from lightning_margin.callbacks.rng_state import RNGStateCheckpoint
from lightning_margin.callbacks.sphereface_annealing import SphereFaceAnnealing
from lightning_margin.callbacks.theta_distribution import ThetaDistribution

__all__ = [
    "EmbedderArtifact",
    "HeadHyperparameterSchedule",
    "MarginScheduler",
    "NonFiniteError",
    "NonFiniteGuard",
    "RNGStateCheckpoint",
    "SphereFaceAnnealing",
    "ThetaDistribution",
]
