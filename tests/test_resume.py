"""Exact resume after preemption: a fit killed mid-run and resumed with ``--ckpt_path last`` ends bitwise equal to an
uninterrupted one (CPU, deterministic algorithms), with the sampler position, the global random streams (dropout,
Partial FC, device-side augmentation), the per-sample augmentation, the LR schedule and the annealed SphereFace
lambda/margin all restored.

The two interrupted fits run ``lightning-margin fit`` in subprocesses, started first so that their imports overlap
the in-process uninterrupted reference run; ``tests/scripts/resume_fit.py`` holds the callbacks their configs name.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from lightning_margin.callbacks.rng_state import RNGStateCheckpoint, collect_rng_states, set_rng_states
from lightning_margin.cli import main
from lightning_margin.data import CorruptImageError, SkipCorruptDataset, SkipReportingDataLoader, collate_skipping_none
from lightning_margin.data.sampler import ResumableDataLoader, ResumableRandomSampler
from tests.helpers import quiet_trainer, subprocess_env

STEPS = 56  # 32 batches per epoch (16 identities x 16 images / 8): the runs cross an epoch boundary
SIGTERM_STEP = 50  # the signal arrives during the step with global_step 50 (epoch 1, batch 18)
SIGKILL_STEP = 36  # killed during step 36; the last periodic checkpoint is step 32 (end of epoch 0)
CHECKPOINT_EVERY = 16


def fit_config(
    root: Path,
    record: Path,
    *,
    num_workers: int = 0,
    checkpoint: dict | None = None,
    fault: dict | None = None,
    devices: int = 1,
    validate: bool = True,
    stop: dict | None = None,
    epochs: int | None = None,
) -> Path:
    """A ``lightning-margin fit`` config: a tiny timm backbone with BatchNorm, a dropout neck, SphereFace with Partial
    FC sampling, lambda annealing and a margin warm-up, a step LR schedule, flips and random shifts. ``devices > 1``:
    DDP on CPU (gloo) with the head's classes sharded over the ranks. ``stop``: a ``StopAt`` callback's arguments.
    ``epochs``: train ``max_epochs`` epochs with the LR stepped per epoch (as the loss configs do) instead of
    ``max_steps`` with the LR stepped per step."""
    callbacks: list[dict[str, Any]] = [
        {"class_path": "lightning_margin.callbacks.rng_state.RNGStateCheckpoint"},
        {"class_path": "lightning_margin.callbacks.SphereFaceAnnealing", "init_args": {"base": 100.0, "gamma": 0.1}},
        {
            "class_path": "lightning_margin.callbacks.HeadScheduler",
            "init_args": {"attribute": "margin", "start": 1, "end": 4, "warmup_steps": 45},
        },
    ]
    if checkpoint is not None:
        init_args = {"dirpath": str(root / "checkpoints"), "save_last": True, **checkpoint}
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": init_args})
    if fault is not None:
        callbacks.append({"class_path": "tests.scripts.resume_fit.FaultAtStep", "init_args": fault})
    if stop is not None:
        callbacks.append({"class_path": "tests.scripts.resume_fit.StopAt", "init_args": stop})
    callbacks.append({"class_path": "tests.scripts.resume_fit.StepRecorder", "init_args": {"path": str(record)}})
    config = {
        "seed_everything": 1234,
        "trainer": {
            "accelerator": "cpu",
            "devices": devices,
            "strategy": "ddp" if devices > 1 else "auto",
            "max_steps": STEPS,
            "deterministic": True,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": checkpoint is not None,
            "default_root_dir": str(root),
            "callbacks": callbacks,
        },
        "data": {
            "train": "synthetic:16",
            # Validated at each epoch end and in the sanity check (or not at all: training must not notice).
            "val_sets": {"synthetic": "synthetic:20"} if validate else {},
            "image_size": 8,
            "batch_size": 8,
            "num_workers": num_workers,
            "random_shift": 1,  # drawn in the main process from the global generator
        },
        "model": {
            "backbone": "test_efficientnet",
            "embedding_size": 16,
            "neck": "bn_dropout_fc_bn",
            "dropout": 0.2,
            "input_size": 8,
            "head": {"class_path": "lightning_margin.heads.SphereFace", "init_args": {"margin": 1}},
            "sharded": devices > 1,  # Partial FC under DDP samples among each rank's own classes
            "sample_rate": 0.75,  # Partial FC: 12 of 16 classes per step, about half of them negatives
            "scheduler_interval": "step",
            "optimizer": {
                "class_path": "torch.optim.SGD",
                "init_args": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
            },
            "lr_scheduler": {
                "class_path": "torch.optim.lr_scheduler.StepLR",
                "init_args": {"step_size": 20, "gamma": 0.5},
            },
        },
    }
    if epochs is not None:
        config["trainer"]["max_steps"], config["trainer"]["max_epochs"] = -1, epochs
        config["model"]["scheduler_interval"] = "epoch"
        config["model"]["lr_scheduler"]["init_args"]["step_size"] = 1
    path = root / f"{record.stem}.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def isolated_process_state():
    """Run a fit in this process without leaking its global settings into later tests."""
    environ = dict(os.environ)
    argv, threads = sys.argv, torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    states = collect_rng_states()
    sys.argv = sys.argv[:1]  # LightningCLI reads `args`, and warns when sys.argv has arguments too
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared machine
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)  # seed_everything exports PL_GLOBAL_SEED; deterministic mode a cuBLAS setting
        sys.argv = argv
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        set_rng_states(states)


def run_cli(*args: str) -> None:
    with isolated_process_state():
        assert main(["fit", *args]) == 0


def start_cli(config: Path, log: Path) -> subprocess.Popen:
    env = subprocess_env(OMP_NUM_THREADS="1")
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lightning_margin.cli", "fit", "--config", str(config)],
            cwd=config.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the fit and its workers, not pytest
        )


def wait_for(marker: Path, process: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the fit exited ({process.returncode}) before the fault step:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the fit did not reach the fault step within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """The two interrupted subprocess fits (started first) and the uninterrupted reference (in this process)."""
    root = tmp_path_factory.mktemp("resume")
    interrupted = {
        # One training and one (persistent) validation worker, which receive the SIGTERM too (sent to the process
        # group, as SLURM does): both defer it, or torch would raise a worker's death at an arbitrary point of the
        # main process (say, while saving the checkpoint).
        "sigterm": {
            "fault_step": SIGTERM_STEP,
            "checkpoint": {"save_on_exception": True},
            "num_workers": 1,
            "validate": True,
        },
        # Periodic checkpoints only: save_on_exception cannot help against SIGKILL.
        "sigkill": {
            "fault_step": SIGKILL_STEP,
            "checkpoint": {"every_n_train_steps": CHECKPOINT_EVERY, "save_top_k": -1},
            "num_workers": 0,
            "validate": True,
        },
    }
    processes = {}
    for name, case in interrupted.items():
        folder = root / name
        case["marker"] = folder / "at_fault_step"
        fault = {"step": case["fault_step"], "marker": str(case["marker"])}
        common = {"num_workers": case["num_workers"], "checkpoint": case["checkpoint"], "validate": case["validate"]}
        first = fit_config(folder, folder / "interrupted.pt", fault=fault, **common)
        case["resume_config"] = fit_config(folder, folder / "resumed.pt", **common)
        case["folder"], case["log"] = folder, folder / "interrupted.log"
        processes[name] = start_cli(first, case["log"])
        case["process"] = processes[name]
    try:
        reference = fit_config(root / "reference", root / "reference" / "reference.pt")
        run_cli("--config", str(reference))
        yield {"reference": torch.load(root / "reference" / "reference.pt", weights_only=False), **interrupted}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def assert_same_run(resumed: dict[str, Any], reference: dict[str, Any], first_step: int) -> None:
    # Resumed, not restarted, and to the same end.
    assert min(resumed["steps"]) == first_step and max(resumed["steps"]) == max(reference["steps"])
    for step, seen in resumed["steps"].items():
        expected = reference["steps"][step]
        assert seen["epoch"] == expected["epoch"], step
        assert torch.equal(seen["labels"], expected["labels"]), f"step {step}: another batch (sampler position)"
        assert torch.equal(seen["images"], expected["images"]), f"step {step}: other flips or shifts"
        assert seen["lambda_"] == expected["lambda_"] and seen["margin"] == expected["margin"], step
        assert seen["lr"] == expected["lr"], step
        assert torch.equal(seen["rng"], expected["rng"]), f"step {step}: another global random stream"
        assert torch.equal(seen["sampled_classes"], expected["sampled_classes"]), f"step {step}: Partial FC sample"
    final, expected = resumed["final"], reference["final"]
    assert final["global_step"] == expected["global_step"]
    assert final["state_dict"].keys() == expected["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():  # parameters and buffers (BatchNorm statistics)
        assert torch.equal(final["state_dict"][name], tensor), name
    assert all(torch.equal(a, b) for a, b in zip(final["momentum"], expected["momentum"], strict=True))
    assert final["lr"] == expected["lr"] and final["scheduler"] == expected["scheduler"]
    assert (final["lambda_"], final["margin"]) == (expected["lambda_"], expected["margin"])
    assert torch.equal(final["sampled_classes"], expected["sampled_classes"])


def test_the_reference_run_exercises_every_resumed_state(fits):
    # Guards the comparison below against vacuous equality: each restored quantity really changes during the run.
    steps = fits["reference"]["steps"]
    assert len({s["lambda_"] for s in steps.values()}) == STEPS and len({s["margin"] for s in steps.values()}) == 4
    assert len({tuple(s["lr"]) for s in steps.values()}) == 3  # StepLR: 0.05, 0.025, 0.0125
    assert len({tuple(s["sampled_classes"].tolist()) for s in steps.values()}) > STEPS // 2
    assert {s["epoch"] for s in steps.values()} == {0, 1}
    assert not torch.equal(steps[0]["labels"], steps[32]["labels"])  # epochs are shuffled differently


def test_sigterm_mid_epoch_saves_a_checkpoint_and_the_resumed_fit_is_bitwise_equal(fits):
    case = fits["sigterm"]
    wait_for(case["marker"], case["process"], case["log"])
    os.killpg(case["process"].pid, signal.SIGTERM)  # the main process and its DataLoader worker
    # Handled: Lightning finishes the step and stops; the command says the run is unfinished (128 + SIGTERM).
    assert case["process"].wait(timeout=120) == 128 + signal.SIGTERM, case["log"].read_text()[-3000:]
    assert "stopped by SIGTERM; the run is not finished" in case["log"].read_text()
    # ModelCheckpoint(save_on_exception=True): saved when the interrupted step had finished, as last.ckpt too. The
    # training worker defers SIGTERM (ResumableDataLoader): were it killed, the save would not happen.
    last = case["folder"] / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)  # the random states are plain tensors and numbers
    assert checkpoint["global_step"] == SIGTERM_STEP + 1
    assert "RNGStateCheckpoint" in checkpoint["callbacks"]

    run_cli("--config", str(case["resume_config"]), "--ckpt_path", "last")
    resumed = torch.load(case["folder"] / "resumed.pt", weights_only=False)
    # The reference ran with num_workers=0 (per-sample seeds make the worker's flips the same) and validated (the
    # random streams of training do not depend on it).
    assert_same_run(resumed, fits["reference"], first_step=SIGTERM_STEP + 1)


def test_sigkill_after_a_periodic_checkpoint_recomputes_the_lost_steps_bitwise(fits):
    case = fits["sigkill"]
    wait_for(case["marker"], case["process"], case["log"])
    case["process"].kill()
    assert case["process"].wait(timeout=60) == -signal.SIGKILL
    last = case["folder"] / "checkpoints" / "last.ckpt"
    saved_step = SIGKILL_STEP // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    # Written at the end of epoch 0's last batch, before that epoch's validation ran.
    assert torch.load(last, weights_only=True)["global_step"] == saved_step

    run_cli("--config", str(case["resume_config"]), "--ckpt_path", "last")
    resumed = torch.load(case["folder"] / "resumed.pt", weights_only=False)
    assert_same_run(resumed, fits["reference"], first_step=saved_step)


@pytest.mark.slow
def test_ddp_ranks_resume_bitwise_from_a_mid_epoch_checkpoint(tmp_path):
    # Two CPU ranks (gloo): each rank's sampler share and position, its own random states (its Partial FC samples
    # among its shard of the classes) and the sharded head's rows and momentum must all come back.
    env = subprocess_env(OMP_NUM_THREADS="1")
    every = 8
    full = fit_config(
        tmp_path / "full",
        tmp_path / "full" / "record.pt",
        checkpoint={"every_n_train_steps": every, "save_top_k": -1},
        devices=2,
    )
    resumed = fit_config(tmp_path / "resumed", tmp_path / "resumed" / "record.pt", devices=2)
    command = [sys.executable, "-m", "lightning_margin.cli", "fit", "--config"]
    subprocess.run([*command, str(full)], cwd=tmp_path, env=env, check=True, timeout=600, capture_output=True)
    step = 5 * every  # 16 batches per epoch and rank: step 40 is batch 8 of epoch 2
    checkpoint = tmp_path / "full" / "checkpoints" / f"epoch=2-step={step}.ckpt"
    subprocess.run(
        [*command, str(resumed), "--ckpt_path", str(checkpoint)],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )
    for rank in (0, 1):
        reference = torch.load(tmp_path / "full" / f"record.rank{rank}.pt", weights_only=False)
        assert_same_run(torch.load(tmp_path / "resumed" / f"record.rank{rank}.pt", weights_only=False), reference, step)


# ---- the sampler and the loader ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "num_replicas", "drop_last"), [(10, 1, False), (10, 3, False), (10, 3, True), (7, 4, False)]
)
def test_sampler_order_is_torchs_distributed_sampler_order(size, num_replicas, drop_last):
    for epoch in (0, 5):
        for rank in range(num_replicas):
            ours = ResumableRandomSampler(
                range(size), seed=7, num_replicas=num_replicas, rank=rank, drop_last=drop_last
            )
            torchs = DistributedSampler(range(size), num_replicas, rank, shuffle=True, seed=7, drop_last=drop_last)
            ours.set_epoch(epoch)
            torchs.set_epoch(epoch)
            assert list(ours) == list(torchs) and len(ours) == len(torchs)


class RecordingDataset(Dataset):
    """Item ``i`` is ``(i, a uniform draw from torch's global generator)``: the draw stands for a random flip."""

    def __init__(self, size: int) -> None:
        self.size, self.read = size, []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        self.read.append(index)
        return index, torch.rand(())


def batches(iterator, count=None) -> list[tuple[list[int], list[float]]]:
    out = []
    for indices, draws in iterator:
        out.append((indices.tolist(), draws.tolist()))
        if count is not None and len(out) == count:
            break
    return out


def test_loader_resumes_at_the_next_batch_without_reading_the_consumed_samples():
    uninterrupted = ResumableDataLoader(RecordingDataset(40), batch_size=4, seed=3, drop_last=True)
    uninterrupted.sampler.set_epoch(2)
    expected = batches(uninterrupted)

    first = ResumableDataLoader(RecordingDataset(40), batch_size=4, seed=3, drop_last=True)
    first.sampler.set_epoch(2)
    assert batches(first, count=3) == expected[:3]
    state = first.state_dict()

    dataset = RecordingDataset(40)
    resumed = ResumableDataLoader(dataset, batch_size=4, seed=99, drop_last=True)  # the checkpoint's seed wins
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)  # what Lightning does at the (resumed) epoch start: keeps the position
    assert batches(resumed) == expected[3:]
    assert sorted(dataset.read) == sorted(i for indices, _ in expected[3:] for i in indices)  # nothing re-read


def test_per_sample_seeds_make_dataset_randomness_independent_of_workers_and_of_the_global_stream():
    loaders = [ResumableDataLoader(RecordingDataset(12), batch_size=4, seed=5, num_workers=w) for w in (0, 1)]
    torch.manual_seed(0)
    in_process = batches(loaders[0])
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)  # reading the data drew nothing from the global generator
    assert batches(loaders[1]) == in_process  # a worker process draws the same "flips"
    loaders[0].sampler.set_epoch(1)
    next_epoch = batches(loaders[0])
    # Another epoch: other draws for the same samples (compare sample by sample).
    first = {i: d for indices, draws in in_process for i, d in zip(indices, draws, strict=True)}
    second = {i: d for indices, draws in next_epoch for i, d in zip(indices, draws, strict=True)}
    assert all(first[i] != second[i] for i in first)


def test_a_finished_epoch_resumes_at_the_start_of_the_next_one():
    loader = ResumableDataLoader(TensorDataset(torch.arange(10)), batch_size=3, seed=1, drop_last=True)
    assert len(batches_of(loader)) == 3  # 9 samples, the 10th dropped
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (1, 0)
    resumed = ResumableDataLoader(TensorDataset(torch.arange(10)), batch_size=3, drop_last=True)
    resumed.load_state_dict(state)
    torchs = DistributedSampler(range(10), num_replicas=1, rank=0, seed=1)
    torchs.set_epoch(1)
    assert [i for batch in batches_of(resumed) for i in batch] == list(torchs)[:9]


def batches_of(loader) -> list[list[int]]:
    return [batch.tolist() for (batch,) in loader]


def test_resuming_on_another_number_of_ranks_reads_every_sample_of_the_epoch_once():
    size, batch_size = 24, 2
    consumed = []
    states = []
    for rank in range(2):
        dataset = TensorDataset(torch.arange(size))
        sampler = ResumableRandomSampler(dataset, seed=4, num_replicas=2, rank=rank)  # what a DDP rank builds
        loader = ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler)
        iterator = iter(loader)
        for _ in range(3):
            consumed += next(iterator)[0].tolist()
        states.append(loader.state_dict())
    assert states[0]["position"] == states[1]["position"] == 6
    single = ResumableDataLoader(TensorDataset(torch.arange(size)), batch_size=batch_size)
    single.load_state_dict(states[0])
    rest = [i for batch in batches_of(single) for i in batch]
    assert sorted(consumed + rest) == list(range(size))


class _EveryFifthUnreadable(Dataset):
    def __len__(self) -> int:
        return 23

    def __getitem__(self, index: int) -> int:
        if index % 5 == 3:
            raise CorruptImageError(f"image {index}", "truncated")
        return index


@pytest.mark.filterwarnings("ignore::lightning_margin.data.CorruptImagesSkippedWarning")
def test_the_skip_corrupt_loader_resumes_at_the_next_unread_batch():
    def loader() -> SkipReportingDataLoader:
        dataset = SkipCorruptDataset(_EveryFifthUnreadable())
        options = {"batch_size": 4, "seed": 5, "drop_last": True, "collate_fn": collate_skipping_none}
        return SkipReportingDataLoader(dataset, skip_counter=dataset.counter, **options)

    first = loader()
    iterator = iter(first)
    consumed = [next(iterator).tolist() for _ in range(2)]
    state = first.state_dict()
    rest = [batch.tolist() for batch in iterator]  # the uninterrupted epoch's remaining batches
    resumed = loader()
    resumed.load_state_dict(state)
    assert [batch.tolist() for batch in resumed] == rest
    # One epoch of the seeded order, every readable index once, the unreadable ones dropped.
    seen = [index for batch in consumed + rest for index in batch]
    assert len(seen) == len(set(seen)) and not any(index % 5 == 3 for index in seen)
    assert len(consumed + rest) == 23 // 4


def test_without_a_seed_every_process_shuffles_alike(monkeypatch):
    # DDP ranks are separate processes whose own torch seeds differ: their shares must still partition the epoch.
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    shares = []
    for rank, process_seed in ((0, 11), (1, 12)):
        torch.manual_seed(process_seed)
        shares.append(list(ResumableRandomSampler(range(10), num_replicas=2, rank=rank)))
    assert sorted(shares[0] + shares[1]) == list(range(10))


def test_integral_floats_from_yaml_count_as_integers():
    from_yaml = ResumableRandomSampler(range(10), seed=3, num_replicas=2.0, rank=1.0)
    torchs = DistributedSampler(range(10), num_replicas=2, rank=1, seed=3)
    assert list(from_yaml) == list(torchs)


def test_invalid_sampler_arguments_are_named():
    with pytest.raises(ValueError, match="rank"):
        ResumableRandomSampler(range(4), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_sampler"):
        ResumableDataLoader(range(4), batch_sampler=[[0, 1]])


# ---- the random states -------------------------------------------------------------------------------------


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    states = collect_rng_states()
    expected = (torch.rand(4), np.random.rand(4), np.random.randn(), random.random())
    torch.save({"states": states}, tmp_path / "states.pt")
    set_rng_states(torch.load(tmp_path / "states.pt", weights_only=True)["states"])
    again = (torch.rand(4), np.random.rand(4), np.random.randn(), random.random())
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1])
    assert again[2:] == expected[2:]


class DropoutModel(LightningModule):
    """Training consumes the global generator (dropout); validation starts a DataLoader, which draws from it too."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val", self.layer(batch[0]).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("callback", [True, False], ids=["with", "without"])
def test_validation_leaves_the_training_stream_alone_with_the_callback(tmp_path, callback):
    data = TensorDataset(torch.randn(32, 4))

    def weights(validate: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = DropoutModel()
        trainer = quiet_trainer(
            default_root_dir=tmp_path,
            max_steps=12,
            callbacks=[RNGStateCheckpoint()] if callback else [],
            limit_val_batches=1.0 if validate else 0,
            val_check_interval=3,
            num_sanity_val_steps=1 if validate else 0,
        )
        train = ResumableDataLoader(data, batch_size=4, seed=0)
        val = DataLoader(data, batch_size=8)
        with isolated_process_state():
            trainer.fit(model, train, val)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    same = torch.equal(weights(validate=True), weights(validate=False))
    assert same == callback  # without it, each validation's DataLoader moves the dropout masks


# ---- the stop-point matrix -----------------------------------------------------------------------------------
# Every hook boundary of a short fit (32 batches per epoch, validation at each epoch end): stopped there by SIGTERM
# (the checkpoint is written on the exception, or by the callback that was saving) or by SIGKILL after a periodic
# checkpoint, then resumed with `--ckpt_path last`: the fit must end bitwise equal to the uninterrupted one.

ON_EXCEPTION = {"save_on_exception": True}
EVERY_16_STEPS = {"every_n_train_steps": 16, "save_top_k": -1}
EVERY_EPOCH = {"every_n_epochs": 1, "save_top_k": -1}
#: name -> (StopAt hook, global step at the hook, signal, checkpointing, train by epochs (None: max_steps), ranks)
MATRIX: dict[str, tuple[str, int, str, dict, int | None, int]] = {
    "sanity-check": ("on_validation_batch_end", 0, "SIGTERM", ON_EXCEPTION, None, 1),
    "first-epoch-start": ("on_train_epoch_start", 0, "SIGTERM", ON_EXCEPTION, None, 1),
    "batch-end": ("on_train_batch_end", 10, "SIGTERM", ON_EXCEPTION, None, 1),
    "last-batch-end": ("on_train_batch_end", 32, "SIGTERM", ON_EXCEPTION, None, 1),
    "epoch-end": ("on_train_epoch_end", 32, "SIGTERM", ON_EXCEPTION, None, 1),
    "epoch-end-by-epochs": ("on_train_epoch_end", 32, "SIGTERM", ON_EXCEPTION, 3, 1),
    "epoch-end-every-epoch-checkpoint": ("on_train_epoch_end", 32, "SIGTERM", EVERY_EPOCH, 3, 1),
    "next-epoch-start": ("on_train_epoch_start", 32, "SIGTERM", ON_EXCEPTION, None, 1),
    "inside-validation": ("on_validation_batch_end", 32, "SIGTERM", ON_EXCEPTION, None, 1),
    "validation-end": ("on_validation_end", 32, "SIGTERM", ON_EXCEPTION, 3, 1),
    "while-checkpointing": ("on_save_checkpoint", 32, "SIGTERM", EVERY_16_STEPS, None, 1),
    "kill-mid-epoch": ("on_train_batch_end", 20, "SIGKILL", EVERY_16_STEPS, None, 1),
    "kill-after-epoch-end-checkpoint": ("on_train_batch_end", 40, "SIGKILL", EVERY_EPOCH, 3, 1),
    "kill-while-checkpointing": ("on_save_checkpoint", 32, "SIGKILL", EVERY_16_STEPS, None, 1),
    "kill-inside-validation": ("on_validation_batch_end", 32, "SIGKILL", EVERY_16_STEPS, None, 1),
    # 2-process DDP: 16 batches per epoch and rank. A SIGTERM is acted on at the next boundary all ranks agree on.
    "ddp-batch-end": ("on_train_batch_end", 6, "SIGTERM", ON_EXCEPTION, None, 2),
    "ddp-epoch-end": ("on_train_epoch_end", 16, "SIGTERM", ON_EXCEPTION, None, 2),
    "ddp-inside-validation": ("on_validation_batch_end", 16, "SIGTERM", ON_EXCEPTION, None, 2),
    "ddp-rank0-only": ("on_train_batch_end", 10, "SIGTERM-rank0", ON_EXCEPTION, None, 2),
    "ddp-kill-after-checkpoint": ("on_train_batch_end", 20, "SIGKILL", EVERY_16_STEPS, None, 2),
}
REPRESENTATIVE = "epoch-end"  # the cell of the default run: the stop that used to resume inexactly


def _run_fit(config: Path, *arguments: str, stopped: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_margin.cli", "fit", "--config", str(config), *arguments],
        cwd=config.parent,
        env=subprocess_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,  # its own process group: StopAt signals the group, not pytest
    )
    if not stopped:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _records(path: Path, devices: int) -> list[dict[str, Any]]:
    if devices == 1:
        return [torch.load(path, weights_only=False)]
    return [torch.load(path.with_name(f"{path.stem}.rank{r}{path.suffix}"), weights_only=False) for r in (0, 1)]


@pytest.fixture(scope="module")
def matrix_references(tmp_path_factory) -> Callable[[int | None, int], list[dict[str, Any]]]:
    """The uninterrupted fit of each (epochs, ranks) setting, run once."""
    root, cache = tmp_path_factory.mktemp("matrix-reference"), {}

    def reference(epochs: int | None, devices: int) -> list[dict[str, Any]]:
        if (epochs, devices) not in cache:
            folder = root / f"epochs{epochs}-ranks{devices}"
            _run_fit(fit_config(folder, folder / "record.pt", epochs=epochs, devices=devices))
            cache[epochs, devices] = _records(folder / "record.pt", devices)
        return cache[epochs, devices]

    return reference


def _matrix_params() -> list[Any]:
    return [pytest.param(name, marks=() if name == REPRESENTATIVE else pytest.mark.slow, id=name) for name in MATRIX]


@pytest.mark.parametrize("cell", _matrix_params())
def test_a_fit_stopped_at_any_hook_boundary_resumes_bitwise(cell, tmp_path, matrix_references):
    hook, step, signal_name, checkpoint, epochs, devices = MATRIX[cell]
    common = {"checkpoint": checkpoint, "epochs": epochs, "devices": devices}
    marker = tmp_path / "stopped_at"
    stop = {"hook": hook, "step": step, "marker": str(marker), "signal": signal_name}
    stopped = _run_fit(fit_config(tmp_path, tmp_path / "interrupted.pt", stop=stop, **common), stopped=True)
    assert marker.exists(), f"the fit never reached {hook} at step {step}:\n{stopped.stderr[-3000:]}"
    last = tmp_path / "checkpoints" / "last.ckpt"
    if signal_name == "SIGKILL":
        assert stopped.returncode == -signal.SIGKILL
    else:
        assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
        # The message says whether a checkpoint exists, and so what to run.
        hint = "--ckpt_path last` to resume" if last.exists() else "before any checkpoint was written"
        assert stopped.stderr.count(hint) == 1, stopped.stderr[-3000:]  # said once, by rank 0 under DDP
    first_step = torch.load(last, weights_only=True)["global_step"] if last.exists() else 0

    resumed = _run_fit(fit_config(tmp_path, tmp_path / "resumed.pt", **common), "--ckpt_path", "last")
    if not last.exists():  # a stop before the first checkpoint: the rerun starts from the beginning, no traceback
        assert "Traceback" not in resumed.stderr
    for ours, reference in zip(
        _records(tmp_path / "resumed.pt", devices), matrix_references(epochs, devices), strict=True
    ):
        assert_same_run(ours, reference, first_step)
