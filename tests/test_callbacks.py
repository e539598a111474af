import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_margin import MarginModule
from lightning_margin.callbacks import HeadScheduler, SphereFaceAnnealing
from tests.helpers import IMAGE_SIZE, quiet_trainer, tiny_backbone, train_loader
from tests.test_module import trainer_metrics


class Recorder(Callback):
    """Records the head's hyperparameters as the training step sees them (runs after the schedules)."""

    def __init__(self, *names):
        self.names, self.seen = names, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen[trainer.global_step] = tuple(getattr(pl_module.head, name) for name in self.names)


def make_module(head, **head_kwargs):
    torch.manual_seed(0)
    return MarginModule(
        backbone=tiny_backbone(),
        num_classes=4,
        embedding_size=16,
        head=head,
        head_kwargs=head_kwargs,
        neck="linear",
        input_size=IMAGE_SIZE,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )


def fit(tmp_path, module, callbacks, max_steps, ckpt_path=None, checkpoint=None):
    trainer = quiet_trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        callbacks=[*callbacks, *([checkpoint] if checkpoint else [])],
        enable_checkpointing=checkpoint is not None,
    )
    trainer.fit(module, train_loader(), ckpt_path=ckpt_path)
    return trainer


def caffe_lambda(iteration, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0):
    # The Caffe MarginInnerProduct layer: iter_ += 1 before use, so iteration 1 is the first forward pass.
    return max(lambda_min, base * math.pow(1.0 + gamma * iteration, -power))


def test_sphereface_annealing_follows_the_caffe_formula_and_logs_it(tmp_path):
    recorder = Recorder("lambda_")
    fit(tmp_path, make_module("sphereface"), [SphereFaceAnnealing(), recorder], max_steps=6)
    assert sorted(recorder.seen) == list(range(6))
    for step, (value,) in recorder.seen.items():
        assert value == pytest.approx(caffe_lambda(step + 1))
    assert trainer_metrics(tmp_path)["train/lambda_"] == pytest.approx(caffe_lambda(6))


def test_sphereface_annealing_reaches_its_floor():
    callback = SphereFaceAnnealing(base=1000, gamma=0.12, power=1, lambda_min=5)
    # 1000 / (1 + 0.12 it) = 5 at it = 1658.33..., so it = 1658 is above the floor and 1659 is on it.
    assert callback.value_at(1657) > 5.0
    assert callback.value_at(1658) == 5.0


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("linear", lambda step: 0.1 + 0.4 * min(step / 8, 1.0)),
        ("cosine", lambda step: 0.1 + 0.4 * (1 - math.cos(math.pi * min(step / 8, 1.0))) / 2),
        ("constant", lambda step: 0.5),
    ],
)
def test_head_scheduler_schedules_from_the_heads_start_value(tmp_path, schedule, expected):
    recorder = Recorder("margin")
    fit(
        tmp_path,
        make_module("arcface", margin=0.1),
        [HeadScheduler("margin", 0.5, 8, schedule=schedule), recorder],
        10,
    )
    for step, (value,) in recorder.seen.items():
        assert value == pytest.approx(expected(step)), step


RESUME_CASES = {
    # Two schedules on one head: each needs its own checkpoint entry. `start=None` reads the head's value at fit
    # start, so the resumed module below, built with another margin, must still continue the original ramp.
    "arcface": (
        lambda: [HeadScheduler("margin", end=0.5, warmup_steps=8), HeadScheduler("scale", 30.0, 8, 4.0, "cosine")],
        ("margin", "scale"),
        {"margin": 0.1, "scale": 4.0},
        {"margin": 0.3, "scale": 4.0},
    ),
    "sphereface": (lambda: [SphereFaceAnnealing(base=100.0, gamma=0.5)], ("lambda_",), {}, {}),
}


@pytest.mark.parametrize("head", sorted(RESUME_CASES))
def test_resume_continues_the_schedules_from_the_restored_step(tmp_path, head):
    callbacks, names, kwargs, resumed_kwargs = RESUME_CASES[head]
    reference = Recorder(*names)
    fit(tmp_path / "full", make_module(head, **kwargs), [*callbacks(), reference], max_steps=10)

    first = Recorder(*names)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=4)
    fit(tmp_path / "a", make_module(head, **kwargs), [*callbacks(), first], max_steps=4, checkpoint=checkpoint)
    second = Recorder(*names)
    resumed = make_module(head, **resumed_kwargs)
    fit(tmp_path / "b", resumed, [*callbacks(), second], max_steps=10, ckpt_path=tmp_path / "ckpt" / "last.ckpt")

    assert sorted(first.seen) == [0, 1, 2, 3] and sorted(second.seen) == [4, 5, 6, 7, 8, 9]
    combined = {**first.seen, **second.seen}
    assert combined.keys() == reference.seen.keys()
    for step in reference.seen:
        assert combined[step] == pytest.approx(reference.seen[step]), step
    assert len({values for values in reference.seen.values()}) > 5  # the values really moved


def test_a_schedule_for_a_missing_attribute_names_the_numeric_ones(tmp_path):
    with pytest.raises(ValueError, match="no numeric attribute 'margn'.*margin.*scale"):
        fit(tmp_path, make_module("arcface"), [HeadScheduler("margn", 0.5, 8)], max_steps=1)


def test_invalid_schedule_arguments():
    with pytest.raises(ValueError, match="'constant', 'linear', 'cosine'"):
        HeadScheduler("margin", 0.5, 10, schedule="exponential")
    with pytest.raises(ValueError, match="warmup_steps"):
        HeadScheduler("margin", 0.5, -1)


def test_head_scheduler_resumes_a_state_saved_under_its_former_name():
    # Lightning keys callback states by class name; checkpoints written before the rename say "MarginScheduler".
    scheduler = HeadScheduler("scale", end=30.0, warmup_steps=8)
    old_key = "MarginScheduler{'attribute': 'scale', 'head_path': 'head'}"
    checkpoint = {"callbacks": {old_key: {"attribute": "scale", "last_value": 5.5, "last_step": 3, "start": 4.0}}}
    scheduler.on_load_checkpoint(None, None, checkpoint)
    assert scheduler.start == 4.0 and scheduler.last_step == 3
    assert scheduler.value_at(4) == pytest.approx(4.0 + (30.0 - 4.0) * 4 / 8)
    # A state under the current key wins (Lightning loads it after this hook); nothing is read twice.
    fresh = HeadScheduler("scale", end=30.0, warmup_steps=8)
    both = {"callbacks": {**checkpoint["callbacks"], fresh.state_key: {"start": 9.0}}}
    fresh.on_load_checkpoint(None, None, both)
    assert fresh.start is None
