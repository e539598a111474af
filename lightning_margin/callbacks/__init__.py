"""Lightning callbacks: hyperparameter schedules for the heads."""

from lightning_margin.callbacks.hyperparameter_schedule import HeadHyperparameterSchedule
from lightning_margin.callbacks.margin_scheduler import MarginScheduler
from lightning_margin.callbacks.sphereface_annealing import SphereFaceAnnealing

__all__ = ["HeadHyperparameterSchedule", "MarginScheduler", "SphereFaceAnnealing"]
