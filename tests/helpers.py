"""Tiny models, data and trainers shared by the tests, and the runner for multi-process scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

IMAGE_SIZE = 8
# Head hyperparameters that keep every head in a regime where its margin matters (and L-Softmax/SphereFace's lambda
# finite): the parallel tests compare each wrapped head with the plain one there.
MARGIN_REGIME_HEAD_KWARGS: dict[str, dict[str, float]] = {
    "sphereface": {"lambda_": 5.0},
    "lsoftmax": {"margin": 2, "lambda_": 5.0},
    "curricularface": {"momentum": 0.5},
    "adaface": {"momentum": 0.5},
    "magface": {"regularizer_weight": 5.0},
}
ROOT = Path(__file__).resolve().parents[1]


def tiny_backbone(features: int = 32) -> nn.Module:
    """An image -> features map small enough for hundreds of CPU steps per second (no BatchNorm: DDP-exact)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, features), nn.ReLU())


def separable_images(num_classes: int = 4, per_class: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is a fixed random pattern plus small noise: linearly separable."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = prototypes[labels] + 0.3 * torch.randn(labels.shape[0], 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return images, labels


def train_loader(batch_size: int = 16, shuffle: bool = True, **kwargs) -> DataLoader:
    images, labels = separable_images(**kwargs)
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle, generator=generator)


def subprocess_env(**variables: str) -> dict[str, str]:
    """This process's environment for a child Python process that imports this repository (``tests``, the package).

    ``variables`` are added or replaced.
    """
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **variables}


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A one-device CPU ``Trainer`` without logger, checkpoints, progress bar or model summary; ``kwargs`` override."""
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**defaults, **kwargs})


def run_rank_script(
    script: Path, output_dir: Path, *arguments: str, timeout: float, weights_only: bool = True, world_size: int = 2
) -> list[Any]:
    """Run ``python script output_dir *arguments`` and load what each rank saved as ``output_dir/rank{r}.pt``.

    Multi-process fits run as a script in a fresh process, never inside pytest: Lightning re-launches the other ranks
    from the command line, which would be pytest again.
    """
    result = subprocess.run(
        [sys.executable, str(script), str(output_dir), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        cwd=output_dir,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(output_dir / f"rank{rank}.pt", weights_only=weights_only) for rank in range(world_size)]
