"""Lightning callbacks: hyperparameter schedules for the heads and the θ-distribution recorder."""

from lightning_margin.callbacks.hyperparameter_schedule import HeadHyperparameterSchedule
from lightning_margin.callbacks.margin_scheduler import MarginScheduler
from lightning_margin.callbacks.sphereface_annealing import SphereFaceAnnealing
from lightning_margin.callbacks.theta_distribution import ThetaDistribution

__all__ = ["HeadHyperparameterSchedule", "MarginScheduler", "SphereFaceAnnealing", "ThetaDistribution"]
