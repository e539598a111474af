"""The end-of-fit summary: checked against a CSV logger's record of the same run, and its commands are run.

The quick start's code path (``configs/quickstart.yaml`` through :class:`MarginCLI`) on tiny synthetic data: the
summary's last and best values must be what the CSV logger wrote (best by the rule restated here: min for EER, max for
the scores), the printed ``export`` and ``verify`` commands must run in a shell and reproduce the last validation, and
a fit stopped by SIGTERM or by ``NonFiniteGuard`` must say how to resume (and resume with its history).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

import lightning_margin.cli as cli_module
from lightning_margin.callbacks import MetricHistory, NonFiniteError
from lightning_margin.callbacks.metric_history import MetricRecord
from lightning_margin.cli import SIGTERM_EXIT_STATUS, MarginCLI, main
from lightning_margin.fit_summary import (
    best_record,
    format_summary,
    higher_is_better,
    next_commands,
    report_fit,
    stop_status,
    summarize_metrics,
)
from tests.helpers import ROOT, quiet_trainer, subprocess_env

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# The quick start with timm's smallest ResNet, 6 identities, 40 verification pairs and 2 steps per epoch: validations
# at steps 2, 4 and 6.
TINY = [
    "fit",
    "--config",
    str(QUICKSTART),
    "--model.backbone=test_resnet",
    "--data.train=synthetic:6",
    "--data.val_sets={synthetic: 'synthetic:40'}",
    "--data.batch_size=8",
    "--data.val_batch_size=20",
    "--trainer.limit_train_batches=2",
    "--trainer.max_epochs=3",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    '--trainer.logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}}',
]
CHECKPOINTS = Path("checkpoints") / "quickstart"  # the quick start's ModelCheckpoint dirpath
# A second ModelCheckpoint that keeps the best validation accuracy, as trainer.yaml's does.
BEST = [
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    "--trainer.callbacks.dirpath=checkpoints/best",
    "--trainer.callbacks.monitor=val/synthetic/accuracy",
    "--trainer.callbacks.mode=max",
    "--trainer.callbacks.filename={epoch}-{step}",
]


# ---- the rules, on known values ---------------------------------------------------------------------------------


def test_which_direction_is_better():
    assert [higher_is_better(f"val/lfw/{key}") for key in ("accuracy", "tar@far=1e-4", "auc")] == [True] * 3
    assert higher_is_better("val/lfw_dev_test/eer") is False
    assert higher_is_better("val/loss") is False and higher_is_better("val_loss") is False
    # The spread over folds and the threshold are no scores: no best value.
    assert higher_is_better("val/lfw/accuracy_std") is None and higher_is_better("val/lfw/threshold") is None
    assert higher_is_better("val/lfw/recall") is True


def test_best_is_the_largest_score_and_the_smallest_error_earliest_first_nan_never():
    records = [MetricRecord(2, 0, 0.4), MetricRecord(4, 1, float("nan")), MetricRecord(6, 2, 0.1)]
    records += [MetricRecord(8, 3, 0.4), MetricRecord(10, 4, 0.1)]
    assert best_record(records, higher=True) == MetricRecord(2, 0, 0.4)
    assert best_record(records, higher=False) == MetricRecord(6, 2, 0.1)
    assert best_record(records, higher=None) is None
    assert best_record([MetricRecord(2, 0, float("nan"))], higher=True) is None
    summary = summarize_metrics({"val/s/eer": records, "val/s/auc": records, "val/s/threshold": records})
    assert summary["val/s/eer"]["best"] == {"value": 0.1, "step": 6, "epoch": 2}
    assert summary["val/s/auc"]["best"] == {"value": 0.4, "step": 2, "epoch": 0}
    assert summary["val/s/threshold"]["best"] is None
    assert summary["val/s/auc"]["last"] == {"value": 0.1, "step": 10, "epoch": 4}


def test_next_commands_name_sets_like_verify_and_replace_any_ckpt_path():
    commands = next_commands(
        checkpoint="run dir/last.ckpt",
        config="logs/config.yaml",
        pairs={"lfw_dev_test": "lfw:dev_test", "agedb": "bin:agedb_30.bin"},
        data_root="/data",
        fit_args=["fit", "--config", "a.yaml", "--ckpt_path", "old.ckpt", "--ckpt_path=other.ckpt"],
        finished=False,
    )
    assert commands == [
        "lightning-margin export 'run dir/last.ckpt' 'run dir/embedder' --config logs/config.yaml",
        "lightning-margin verify --model 'run dir/embedder' --pairs lfw:dev_test agedb=bin:agedb_30.bin "
        "--data-root /data",
        "lightning-margin fit --config a.yaml --ckpt_path last",
    ]
    # Finished: nothing to resume; no checkpoint: nothing to export, still something to resume.
    assert len(next_commands(checkpoint="c.ckpt", fit_args=["fit"], finished=True)) == 1
    assert next_commands(checkpoint=None, fit_args=["fit"], finished=False) == ["lightning-margin fit --ckpt_path last"]


def test_what_stopped_a_fit():
    assert stop_status(SIGTERMException()) == "stopped by SIGTERM"
    assert stop_status(NonFiniteError.__new__(NonFiniteError)) == "stopped by NonFiniteGuard"
    try:  # what Lightning raises on Ctrl-C: sys.exit(1) while handling the KeyboardInterrupt
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)
    except SystemExit as exit_:
        assert stop_status(exit_) == "interrupted by Ctrl-C"
    assert stop_status(SystemExit(2)) is None and stop_status(FileNotFoundError("x")) is None


# ---- MetricHistory ----------------------------------------------------------------------------------------------


class EpochLogger(pl.LightningModule):
    """Logs ``val/x`` = the epoch in every validation except epoch 1's (as a set with too few pairs would)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        if self.current_epoch != 1:
            self.log("val/x", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_history_records_each_validation_once_without_the_sanity_check(tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    history = MetricHistory()
    trainer = quiet_trainer(max_epochs=3, callbacks=[history], default_root_dir=tmp_path)
    trainer.fit(EpochLogger(), data, data)
    # Steps 2, 4, 6 end epochs 0, 1, 2; epoch 1 logged nothing, the sanity check (step 0) is not a validation.
    assert history.history["val/x"] == [MetricRecord(2, 0, 0.0), MetricRecord(6, 2, 2.0)]
    torch.save(history.state_dict(), tmp_path / "state.pt")
    restored = MetricHistory()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.history == history.history


# ---- the quick start's code path --------------------------------------------------------------------------------


def run_main(folder: Path, args: list[str], callbacks: tuple[Callback, ...] = ()) -> dict:
    """``lightning-margin ARGS`` (``cli.main``) in ``folder``, with ``callbacks`` added to the trainer.

    Returns ``{"cli", "status", "printed", "raised"}``: the ``MarginCLI`` it made, its exit status (``None`` if it
    raised), what it printed and what it raised.
    """
    made: list[MarginCLI] = []

    class Recorded(MarginCLI):
        def __init__(self, *positional, **keywords) -> None:
            made.append(self)
            keywords["trainer_defaults"] = {"callbacks": list(callbacks)}
            super().__init__(*positional, **keywords)

    output, status, raised = io.StringIO(), None, None
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        patch.chdir(folder)
        patch.setattr(cli_module, "MarginCLI", Recorded)
        try:
            status = main(args)
        except BaseException as error:  # NonFiniteError leaves the command as a traceback: the test checks it
            raised = error
    return {"cli": made[0] if made else None, "status": status, "printed": output.getvalue(), "raised": raised}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    run = run_main(folder, [*TINY, *BEST])
    assert run["status"] == 0, run["raised"]
    summary = json.loads((folder / CHECKPOINTS / "summary.json").read_text())
    return {"folder": folder, "trainer": run["cli"].trainer, "printed": run["printed"], "summary": summary}


def csv_validation_history(folder: Path) -> dict[str, list[tuple[int, int, float]]]:
    """``{metric: [(step, epoch, value), ...]}`` of every ``val/`` column of the CSV logger's ``metrics.csv``.

    Lightning's loggers put a validation at the number of batches stepped *before* the last training batch, one less
    than ``trainer.global_step`` (the optimizer steps done, which the summary and checkpoint names count): a
    validation after 2 steps is logged at step 1. ``step`` here is the logger's step + 1.
    """
    [path] = folder.glob("logs/lightning_logs/version_*/metrics.csv")
    history: dict[str, list[tuple[int, int, float]]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            for name, value in row.items():
                if name.startswith("val/") and value != "":
                    history.setdefault(name, []).append((int(row["step"]) + 1, int(row["epoch"]), float(value)))
    return history


def test_the_summary_holds_the_last_and_best_values_the_logger_recorded(finished):
    logged = csv_validation_history(finished["folder"])
    metrics = finished["summary"]["metrics"]
    assert set(metrics) == set(logged)
    assert [step for step, _, _ in logged["val/synthetic/accuracy"]] == [2, 4, 6]  # one validation per epoch
    for name, records in logged.items():
        step, epoch, value = records[-1]
        assert metrics[name]["last"] == {"value": pytest.approx(value, rel=1e-6), "step": step, "epoch": epoch}
        if name.endswith(("/accuracy_std", "/threshold")):
            assert metrics[name]["best"] is None
            continue
        # Restated: the smallest EER, the largest of the other scores; the earliest of equal values.
        lower = name.endswith("/eer")
        best = min(records, key=lambda r: (r[2] if lower else -r[2], r[0]))
        assert metrics[name]["best"] == {"value": pytest.approx(best[2], rel=1e-6), "step": best[0], "epoch": best[1]}
    summary = finished["summary"]
    assert summary["status"] == "finished" and summary["finished"] and (summary["step"], summary["epochs"]) == (6, 3)


def test_the_summary_is_written_beside_the_checkpoints_and_printed_once(finished):
    summary, printed = finished["summary"], finished["printed"]
    assert summary["checkpoints"]["last"] == str(CHECKPOINTS / "last.ckpt")
    assert (finished["folder"] / summary["checkpoints"]["last"]).is_file()
    # ModelCheckpoint's own choice of the best checkpoint is the summary's best accuracy, at the same step.
    best = summary["metrics"]["val/synthetic/accuracy"]["best"]
    [checkpoint] = summary["checkpoints"]["best"]
    assert checkpoint == {
        "path": f"checkpoints/best/epoch={best['epoch']}-step={best['step']}.ckpt",
        "monitor": "val/synthetic/accuracy",
        "mode": "max",
        "score": pytest.approx(best["value"], rel=1e-6),
    }
    assert (finished["folder"] / checkpoint["path"]).is_file()
    assert summary["summary"] == str(CHECKPOINTS / "summary.json")
    assert printed.count("lightning-margin fit finished at step 6 (3 epochs)") == 1
    assert printed == format_summary(summary) + "\n"
    assert not any("--ckpt_path" in command for command in summary["commands"])  # finished: nothing to resume


def test_the_progress_bar_shows_the_main_metric_of_each_verification_set(finished):
    shown = finished["trainer"].progress_bar_metrics
    assert "val/synthetic/accuracy" in shown
    assert not {"val/synthetic/eer", "val/synthetic/auc"} & set(shown)


def test_the_printed_commands_run_and_reproduce_the_best_validation(finished):
    folder, summary = finished["folder"], finished["summary"]
    commands = summary["commands"]
    assert [shlex.split(command)[1:3] for command in commands] == [
        ["export", summary["checkpoints"]["best"][0]["path"]],  # the best checkpoint, where one is kept
        ["verify", "--model"],
    ]
    assert "\n".join(f"  {command}" for command in commands) in finished["printed"]
    # Both printed lines in one fresh process (one import of torch and Lightning), split as a shell splits them and
    # given to the console script's entry point, `lightning_margin.cli:main`.
    script = (
        "import shlex, sys\nfrom lightning_margin.cli import main\n"
        f"for line in {commands!r}:\n"
        "    program, *args = shlex.split(line)\n"
        "    assert program == 'lightning-margin' and main(args) == 0, line\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=folder, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    export_dir = shlex.split(commands[0])[3]
    assert (folder / export_dir / "model.safetensors").is_file()
    # verify's table: | model | accuracy | accuracy_std | threshold | tar@far=1e-3 | eer | auc | num_pairs |
    header, _, row = [line for line in result.stdout.splitlines() if line.startswith("|")][:3]
    table = dict(zip(header.strip("|").split("|"), row.strip("|").split("|"), strict=True))
    table = {key.strip(): value.strip() for key, value in table.items()}
    # The exported checkpoint is the one validated at the best accuracy's step: verify gives that validation's values.
    step = summary["metrics"]["val/synthetic/accuracy"]["best"]["step"]
    logged = csv_validation_history(folder)
    for key in ("accuracy", "eer", "auc"):
        [value] = [value for at, _, value in logged[f"val/synthetic/{key}"] if at == step]
        assert float(table[key]) == pytest.approx(value, abs=6e-5)  # the table shows 4 decimals


def test_only_global_rank_zero_prints_and_writes(finished, monkeypatch, tmp_path):
    trainer = finished["trainer"]
    written = finished["folder"] / CHECKPOINTS / "summary.json"
    before = written.stat().st_mtime_ns
    monkeypatch.setattr(type(trainer.strategy), "is_global_zero", property(lambda self: False))
    stream = io.StringIO()
    assert report_fit(trainer, stream=stream) is None
    assert stream.getvalue() == "" and written.stat().st_mtime_ns == before


# ---- stopped fits -----------------------------------------------------------------------------------------------


class StopAtStep(Callback):
    """At the start of training step ``step``: send this process SIGTERM, or make the model's weights NaN."""

    def __init__(self, step: int, how: str) -> None:
        self.step, self.how = step, how

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        if self.how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler: the step finishes, then the fit stops
        else:
            with torch.no_grad():
                for parameter in pl_module.neck.parameters():
                    parameter.fill_(math.nan)  # NonFiniteGuard stops at the non-finite embeddings


@pytest.mark.parametrize(
    ("how", "raised", "status", "step"),
    [
        ("sigterm", SIGTERMException, "stopped by SIGTERM", 3),
        ("nonfinite", NonFiniteError, "stopped by NonFiniteGuard", 2),
    ],
)
def test_a_stopped_fit_says_how_to_resume(tmp_path, how, raised, status, step):
    args = [*TINY, "--trainer.logger=false"]
    run = run_main(tmp_path, args, callbacks=(StopAtStep(2, how),))
    if how == "sigterm":
        assert run["status"] == SIGTERM_EXIT_STATUS
    else:
        assert isinstance(run["raised"], raised)
    summary = json.loads((tmp_path / CHECKPOINTS / "summary.json").read_text())
    assert (summary["status"], summary["finished"], summary["step"], summary["epochs"]) == (status, False, step, 1)
    resume = shlex.join(["lightning-margin", *args, "--ckpt_path", "last"])
    assert summary["commands"][-1] == resume
    printed = run["printed"]
    assert printed.count(f"lightning-margin fit {status} at step {step} (1 epoch)") == 1 and resume in printed
    assert summary["checkpoints"] == {"last": str(CHECKPOINTS / "last.ckpt"), "best": []}  # save_on_exception
    # The validation at step 2 (the end of epoch 0) is in the summary and in the checkpoint, for the resumed run.
    assert summary["metrics"]["val/synthetic/accuracy"]["last"]["step"] == 2
    if how == "sigterm":
        resumed = run_main(tmp_path, shlex.split(resume)[1:])
        assert resumed["status"] == 0, resumed["raised"]
        history = next(c for c in resumed["cli"].trainer.callbacks if isinstance(c, MetricHistory)).history
        assert [record.step for record in history["val/synthetic/accuracy"]] == [2, 4, 6]
        assert "lightning-margin fit finished at step 6 (3 epochs)" in resumed["printed"]
