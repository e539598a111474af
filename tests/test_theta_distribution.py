"""ThetaDistribution: the recorded angles equal an independent computation, stage windows, logging, resume."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_margin.callbacks.theta_distribution import ThetaDistribution
from lightning_margin.heads import create_head
from lightning_margin.plots.theta_histogram import class_center_angles
from tests.helpers import quiet_trainer

IN_FEATURES, EMBEDDING_SIZE, NUM_CLASSES, BATCH = 16, 8, 4, 8


@pytest.fixture(autouse=True)
def _one_thread():
    # Intra-op threads only slow ops this small down, badly so on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyModule(pl.LightningModule):
    """A linear embedder + a library head, with MarginModule's training_step contract; keeps what each step saw."""

    def __init__(self, head: str = "arcface", return_dict: bool = True, **head_kwargs):
        super().__init__()
        self.net = nn.Linear(IN_FEATURES, EMBEDDING_SIZE)
        self.head = create_head(head, embedding_size=EMBEDDING_SIZE, num_classes=NUM_CLASSES, **head_kwargs)
        self.return_dict = return_dict
        self.records: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):
        features, labels = batch
        embeddings = self.net(features)
        loss = self.head(embeddings, labels)
        if not self.return_dict:
            return loss
        return {"loss": loss, "embeddings": embeddings.detach(), "labels": labels}

    def on_train_batch_start(self, batch, batch_idx):
        self.weight_before_step = self.head.weight.detach().clone()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # global_step has already moved past this batch's optimizer step.
        step = self.trainer.global_step - 1
        self.records[step] = (outputs["embeddings"].clone(), outputs["labels"].clone(), self.weight_before_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def loader(num_batches: int = 6, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_batches * BATCH, IN_FEATURES, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (num_batches * BATCH,), generator=generator)
    return DataLoader(TensorDataset(features, labels), batch_size=BATCH)


def trainer(tmp_path, callbacks, max_steps: int = 6, logger=False) -> pl.Trainer:
    return quiet_trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        limit_val_batches=0,
        logger=logger,
        log_every_n_steps=1,
        callbacks=callbacks,
    )


def reference_angles(embeddings, labels, weight, rows_per_class: int = 1) -> np.ndarray:
    """Degrees between each embedding and its nearest own-class weight row, in numpy float64."""
    x = embeddings.double().numpy()
    w = weight.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    angles = []
    for row, label in zip(x, labels.tolist(), strict=True):
        centres = w[label * rows_per_class : (label + 1) * rows_per_class]
        angles.append(np.degrees(np.arccos(np.clip((centres @ row).max(), -1.0, 1.0))))
    return np.array(angles)


def test_records_each_stage_window_and_logs_the_histograms_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = ThetaDistribution(num_batches=2, save_path=tmp_path / "theta.png")
    module = TinyModule()
    trainer(tmp_path, [callback], logger=TensorBoardLogger(tmp_path, name="tb")).fit(module, loader())

    # 6 steps, windows of 2: start = steps 0-1, middle = round(0.5 * (6 - 2)) = 2 -> steps 2-3, end = steps 4-5.
    assert callback.windows == {"start": (0, 2), "middle": (2, 4), "end": (4, 6)}
    for stage, steps in {"start": (0, 1), "middle": (2, 3), "end": (4, 5)}.items():
        expected = np.concatenate([reference_angles(*module.records[step]) for step in steps])
        assert callback.angles[stage].shape == (2 * BATCH,)
        np.testing.assert_allclose(callback.angles[stage].numpy(), expected, atol=1e-3)

    # The figure: one step curve per stage whose counts are the histogram of that stage's angles.
    figure = callback.plot()
    curves = figure.axes[0].patches
    assert [curve.get_label().split(",")[0] for curve in curves] == ["start", "middle", "end"]
    for curve, stage in zip(curves, ["start", "middle", "end"], strict=True):
        counts, edges = curve.get_data()[:2]
        np.testing.assert_array_equal(counts, np.histogram(callback.angles[stage].numpy(), 90, (0, 180))[0])
        assert counts.sum() == 2 * BATCH
        assert edges[0] == 0 and edges[-1] == 180
    assert (tmp_path / "theta.png").stat().st_size > 0

    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents*")).parent)).Reload()
    assert "train/theta_distribution" in events.Tags()["images"]
    means = {stage: events.Scalars(f"train/theta_distribution/mean_{stage}")[-1].value for stage in callback.angles}
    for stage, mean in means.items():
        assert mean == pytest.approx(float(callback.angles[stage].mean()), abs=1e-4)


def test_subcenter_heads_measure_the_nearest_subcentre():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(32, 5, generator=generator)
    labels = torch.randint(0, 3, (32,), generator=generator)
    weight = torch.randn(3 * 4, 5, generator=generator)
    angles = class_center_angles(embeddings, labels, weight, rows_per_class=4)
    np.testing.assert_allclose(angles.numpy(), reference_angles(embeddings, labels, weight, 4), atol=1e-4)
    # With one row per class the same weight gives different (larger or equal) angles: rows 0..2 only.
    single = class_center_angles(embeddings, labels, weight[:3], rows_per_class=1)
    np.testing.assert_allclose(single.numpy(), reference_angles(embeddings, labels, weight[:3]), atol=1e-4)


def test_known_angles_and_input_checks():
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    embeddings = torch.tensor([[3.0, 3.0], [1.0, 0.0], [-1.0, 0.0]])
    angles = class_center_angles(embeddings, torch.tensor([0, 1, 0]), weight)
    np.testing.assert_allclose(angles.numpy(), [45.0, 90.0, 180.0], atol=1e-4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        class_center_angles(embeddings, torch.tensor([0, 2, 0]), weight)
    with pytest.raises(ValueError, match="not a multiple of rows_per_class=3"):
        class_center_angles(embeddings, torch.tensor([0, 0, 0]), weight, rows_per_class=3)
    with pytest.raises(ValueError, match="stages"):
        ThetaDistribution(stages=(0.0, 1.5))
    with pytest.raises(ValueError, match="num_batches"):
        ThetaDistribution(num_batches=0)


def test_state_dict_survives_an_interrupted_run(tmp_path):
    class StopAfter(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                trainer.should_stop = True

    first, first_module = ThetaDistribution(num_batches=2), TinyModule()
    run = trainer(tmp_path, [first, StopAfter()])
    run.fit(first_module, loader())
    assert run.global_step == 3
    checkpoint = tmp_path / "interrupted.ckpt"
    run.save_checkpoint(checkpoint)

    second, second_module = ThetaDistribution(num_batches=2), TinyModule()
    trainer(tmp_path, [second]).fit(second_module, loader(), ckpt_path=checkpoint)
    records = {**first_module.records, **second_module.records}
    assert sorted(records) == [0, 1, 2, 3, 4, 5]
    for stage, steps in {"start": (0, 1), "middle": (2, 3), "end": (4, 5)}.items():
        expected = np.concatenate([reference_angles(*records[step]) for step in steps])
        np.testing.assert_allclose(second.angles[stage].numpy(), expected, atol=1e-3)

    # And state_dict / load_state_dict directly: the same stages, the same angles.
    restored = ThetaDistribution(num_batches=2)
    restored.load_state_dict(second.state_dict())
    for stage in ("start", "middle", "end"):
        assert torch.equal(restored.angles[stage], second.angles[stage])
    with pytest.raises(ValueError, match="stages"):
        ThetaDistribution(stages=(0.0, 1.0)).load_state_dict(second.state_dict())


def test_max_samples_caps_each_stage_and_a_plain_loss_output_is_reported(tmp_path):
    callback = ThetaDistribution(num_batches=3, max_samples=10)
    trainer(tmp_path, [callback]).fit(TinyModule(head="subcenter_arcface", num_subcenters=2), loader())
    assert {stage: angles.numel() for stage, angles in callback.angles.items()} == {
        "start": 10,
        "middle": 10,
        "end": 10,
    }

    with pytest.raises(ValueError, match="'embeddings' and 'labels'"):
        trainer(tmp_path, [ThetaDistribution(num_batches=2)]).fit(TinyModule(return_dict=False), loader())


def test_logs_the_image_to_an_offline_wandb_run(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="theta-test")
    trainer(tmp_path, [ThetaDistribution(num_batches=2)], logger=logger).fit(TinyModule(), loader())
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    images = list((run_dir / "files" / "media" / "images").glob("train/theta_distribution*.png"))
    assert len(images) == 1 and images[0].stat().st_size > 0


def test_works_with_margin_module(tmp_path):
    from lightning_margin import MarginModule

    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32))
    module = MarginModule(
        backbone, num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE, head="cosface", input_size=8
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4 * BATCH, 3, 8, 8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (4 * BATCH,), generator=generator)
    callback = ThetaDistribution(stages=(0.0, 1.0), num_batches=1)
    trainer(tmp_path, [callback], max_steps=4).fit(module, DataLoader(TensorDataset(images, labels), batch_size=BATCH))
    assert callback.windows == {"start": (0, 1), "end": (3, 4)}
    assert {stage: angles.numel() for stage, angles in callback.angles.items()} == {"start": BATCH, "end": BATCH}
