"""`--trainer.logger=WandbLogger`: the offline run holds the config, the metrics, the figures and the embedder."""

import time
from pathlib import Path

import pytest
import torch

from lightning_margin import FaceEmbedder
from lightning_margin.cli import MarginCLI
from lightning_margin.data import FaceDataModule
from lightning_margin.module import MarginModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_offline_wandb_run_holds_config_metrics_figures_and_the_embedder_artifact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cli = MarginCLI(
        MarginModule,
        FaceDataModule,
        args=[
            "fit",
            "--config",
            str(CONFIGS / "quickstart.yaml"),
            "--trainer.max_epochs=1",
            "--data.batch_size=16",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=WandbLogger",
            "--trainer.logger.offline=true",
            f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.logger.project=lightning-margin-test",
            "--trainer.callbacks+=lightning_margin.callbacks.ThetaDistribution",
            "--trainer.callbacks.num_batches=2",
            "--trainer.callbacks+=lightning_margin.callbacks.EmbedderArtifact",
            f"--trainer.callbacks.dirpath={tmp_path / 'embedder'}",
        ],
    )
    import wandb

    # Ask the run where it lives: wandb's process-wide settings may predate this test's WANDB_DIR.
    run_dir = Path(cli.trainer.logger.experiment.dir).parent
    wandb.finish()  # flush the offline run to disk
    assert run_dir.name.startswith("offline-run-")
    images = {p.parent.name for p in (run_dir / "files" / "media" / "images").rglob("*.png")}
    assert {"train", "synthetic"} <= images  # the θ histogram and the ROC curve of the "synthetic" set
    # The run log is protobuf records: the logged names and the config's values appear in it verbatim.
    needles = (
        b"train/loss",
        b"val/synthetic/accuracy",
        b"val/synthetic/auc",
        b"init_args",
        b"lightning_margin.heads.ArcFace",
    )
    # wandb's service process writes the file: under load its last records can land after finish() returns.
    deadline = time.monotonic() + 60
    while True:
        record = next(run_dir.glob("run-*.wandb")).read_bytes()
        if all(needle in record for needle in needles) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for needle in needles:
        assert needle in record, needle
    assert b"embedder-" in record  # the model artifact

    # The artifact folder is the trained model's embedder: same embeddings as the module.
    embedder = FaceEmbedder.from_pretrained(tmp_path / "embedder")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    cli.model.eval()
    torch.testing.assert_close(embedder(images), cli.model(images))
