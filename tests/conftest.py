"""Shared test configuration: offline services, data location, deterministic seeds."""

from __future__ import annotations

import os
from pathlib import Path

# These must be set before huggingface_hub / wandb are imported anywhere.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest
import torch

DATA_ENV = "LIGHTNING_MARGIN_DATA"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    """The LFW folder (``$LIGHTNING_MARGIN_DATA/lfw``); tests that need it skip when it is absent."""
    base = os.environ.get(DATA_ENV)
    if not base:
        pytest.skip(f"LFW tests need ${DATA_ENV} (the folder holding lfw/); it is not set")
    root = Path(base) / "lfw"
    if not (root / "lfw-deepfunneled").is_dir():
        pytest.skip(f"LFW tests need {root}/lfw-deepfunneled, which does not exist (${DATA_ENV}={base})")
    return root
