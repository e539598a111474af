"""Export the trained FaceEmbedder at the end of fit, and hand it to wandb as a model artifact."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

__all__ = ["EmbedderArtifact"]


class EmbedderArtifact(Callback):
    """Saves the :class:`~lightning_margin.FaceEmbedder` of the trained model when ``fit`` ends.

    The folder (``model.safetensors`` + ``config.json``, with the data module's preprocessing) goes to
    ``<log_dir>/embedder`` unless ``dirpath`` is given; with a :class:`~lightning.pytorch.loggers.WandbLogger` it is
    also logged as a wandb artifact of type ``model`` (offline runs keep it with the run until ``wandb sync``).

    Args:
        dirpath: Where to write the folder; ``None``: ``trainer.log_dir/embedder``.
        artifact_name: The wandb artifact's name; ``None``: ``embedder-<run id>``.

    Example:
        >>> from lightning_margin.callbacks import EmbedderArtifact
        >>> callback = EmbedderArtifact(dirpath="exports/arcface")
    """

    def __init__(self, dirpath: str | None = None, artifact_name: str | None = None) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.artifact_name = artifact_name
        self.saved_to: Path | None = None

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning_margin.embedder import FaceEmbedder, preprocessing_from_data

        datamodule = getattr(trainer, "datamodule", None)
        data = dict(getattr(datamodule, "hparams", {}) or {})
        preprocessing = preprocessing_from_data(data, pl_module.hparams, "the trained model") if data else {}
        embedder = FaceEmbedder.from_module(pl_module, **preprocessing)
        folder = Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "embedder"
        embedder.save_pretrained(folder)
        self.saved_to = folder
        rank_zero_info(f"EmbedderArtifact: saved the FaceEmbedder to {folder}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                run = logger.experiment
                artifact = wandb.Artifact(self.artifact_name or f"embedder-{run.id}", type="model")
                artifact.add_dir(str(folder))
                run.log_artifact(artifact)
