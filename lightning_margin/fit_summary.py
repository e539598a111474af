"""What a fit says when it ends: each validation metric's last and best value, the checkpoints, the next commands.

``lightning-margin fit`` ends (finished, stopped by SIGTERM or Ctrl-C, or stopped by
:class:`~lightning_margin.callbacks.NonFiniteGuard`) with one short summary, printed on rank 0 and written as
``summary.json`` beside the checkpoints (the quick start's, shortened)::

    lightning-margin fit finished at step 15 (3 epochs)
      validation metric            last (step)    best (step)
      val/synthetic/accuracy       0.7000 (15)    0.7700 (5)
      val/synthetic/eer            0.2300 (15)    0.2200 (5)     lower is better
    last checkpoint: checkpoints/quickstart/last.ckpt
    summary: checkpoints/quickstart/summary.json
    next:
      lightning-margin export checkpoints/quickstart/last.ckpt checkpoints/quickstart/embedder --config ...
      lightning-margin verify --model checkpoints/quickstart/embedder --pairs synthetic

The values come from :class:`~lightning_margin.callbacks.MetricHistory`; the rules live here, one function each:
which direction is better for a metric (:func:`higher_is_better`), where the last and best checkpoints are
(:func:`last_checkpoint`, :func:`best_checkpoints`), where the summary goes (:func:`summary_folder`), and what to run
next (:func:`next_commands`). In Python, call :func:`report_fit` after ``trainer.fit`` (with ``MetricHistory`` among
the callbacks).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_margin._atomic import atomic_path
from lightning_margin.callbacks.metric_history import MetricHistory, MetricRecord
from lightning_margin.callbacks.nonfinite_diagnostics import NonFiniteError
from lightning_margin.data.sources import verification_set_name
from lightning_margin.metrics import EER, TARAtFAR, VerificationAccuracy, VerificationAUC

__all__ = [
    "EXPORT_FOLDER",
    "FINISHED",
    "SUMMARY_NAME",
    "best_checkpoints",
    "best_record",
    "fit_summary",
    "format_summary",
    "higher_is_better",
    "last_checkpoint",
    "next_commands",
    "report_fit",
    "stop_status",
    "summarize_metrics",
    "summary_folder",
]

#: The summary's file name, in :func:`summary_folder`.
SUMMARY_NAME = "summary.json"
#: The folder, beside the checkpoints, that the suggested ``export`` command writes.
EXPORT_FOLDER = "embedder"
#: The status of a fit that ran to its end (``max_epochs``, ``max_steps``, early stopping): nothing to resume.
FINISHED = "finished"
_SIGTERM, _NONFINITE, _CTRL_C = "stopped by SIGTERM", "stopped by NonFiniteGuard", "interrupted by Ctrl-C"
PROGRAM = "lightning-margin"

# The direction of each verification metric, from the torchmetrics class that computes it alone. `accuracy_std` (the
# spread over folds) and `threshold` (the operating point) are no scores: they have no best value.
_DIRECTIONS: dict[str, bool | None] = {
    "accuracy": VerificationAccuracy.higher_is_better,
    "accuracy_std": None,
    "threshold": None,
    "eer": EER.higher_is_better,
    "auc": VerificationAUC.higher_is_better,
}


def higher_is_better(name: str) -> bool | None:
    """Whether a larger value of the metric ``name`` is better: ``False`` for EER and losses, ``None`` for no score.

    The last part of the name decides (``val/lfw_dev_test/eer`` -> ``eer``): the verification metrics take their
    classes' ``higher_is_better`` (TAR@FAR, accuracy, AUC: yes; EER: no), a name holding ``loss`` is a loss, the
    spread and threshold of the k-fold accuracy have no direction, and any other metric is taken as higher-is-better.

    Example:
        >>> [higher_is_better(name) for name in ("val/lfw/accuracy", "val/lfw/eer", "val/loss", "val/lfw/threshold")]
        [True, False, False, None]
    """
    key = name.rsplit("/", 1)[-1]
    if key in _DIRECTIONS:
        return _DIRECTIONS[key]
    if key.startswith("tar@far="):
        return TARAtFAR.higher_is_better
    return "loss" not in key


def best_record(records: Sequence[MetricRecord], higher: bool | None) -> MetricRecord | None:
    """The best of ``records`` (the earliest of equal values; NaN never is), or ``None`` without a direction.

    Example:
        >>> records = [MetricRecord(5, 0, 0.30), MetricRecord(10, 1, 0.10), MetricRecord(15, 2, 0.10)]
        >>> best_record(records, higher=False)
        MetricRecord(step=10, epoch=1, value=0.1)
    """
    numbers = [record for record in records if record.value == record.value]  # NaN != NaN
    if higher is None or not numbers:
        return None
    sign = 1.0 if higher else -1.0
    return max(numbers, key=lambda record: sign * record.value)  # max keeps the first of equal keys


def summarize_metrics(history: Mapping[str, Sequence[MetricRecord]]) -> dict[str, dict[str, Any]]:
    """``{name: {"higher_is_better", "last", "best"}}``, each record as ``{"value", "step", "epoch"}`` (NaN: ``None``).

    Example:
        >>> summary = summarize_metrics({"val/lfw/accuracy": [MetricRecord(5, 0, 0.9), MetricRecord(10, 1, 0.8)]})
        >>> summary["val/lfw/accuracy"]["best"]
        {'value': 0.9, 'step': 5, 'epoch': 0}
    """
    summary = {}
    for name, records in history.items():
        if not records:
            continue
        higher = higher_is_better(name)
        best = best_record(records, higher)
        summary[name] = {
            "higher_is_better": higher,
            "last": _record(records[-1]),
            "best": _record(best) if best is not None else None,
        }
    return summary


def _record(record: MetricRecord) -> dict[str, Any]:
    value = record.value if record.value == record.value else None  # JSON has no NaN
    return {"value": value, "step": record.step, "epoch": record.epoch}


# ---- checkpoints ------------------------------------------------------------------------------------------------


def last_checkpoint(trainer: pl.Trainer | None) -> str | None:
    """The ``last`` checkpoint written so far (the first ``ModelCheckpoint`` with ``save_last`` that wrote one).

    ``--ckpt_path last`` resumes from the newest of these; ``None`` when none exists on disk.
    """
    if trainer is None:
        return None
    for callback in trainer.checkpoint_callbacks:
        path = getattr(callback, "last_model_path", "")
        if path and os.path.exists(path):
            return path
    return None


def best_checkpoints(trainer: pl.Trainer) -> list[dict[str, Any]]:
    """``[{"path", "monitor", "mode", "score"}]``: the best checkpoint of each monitored ``ModelCheckpoint``."""
    found = []
    for callback in trainer.checkpoint_callbacks:
        monitor, path = getattr(callback, "monitor", None), getattr(callback, "best_model_path", "")
        if monitor and path and os.path.exists(path):
            score = getattr(callback, "best_model_score", None)
            found.append(
                {
                    "path": path,
                    "monitor": monitor,
                    "mode": getattr(callback, "mode", None),
                    "score": None if score is None else float(score),
                }
            )
    return found


def summary_folder(trainer: pl.Trainer) -> Path:
    """Where ``summary.json`` goes: beside the last checkpoint, else the first checkpoint folder, else the log dir."""
    last = last_checkpoint(trainer)
    if last is not None:
        return Path(last).parent
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            return Path(callback.dirpath)
    return Path(_log_dir(trainer))


def _log_dir(trainer: pl.Trainer) -> str:
    """``trainer.log_dir`` without its broadcast: the summary is made on rank 0 alone, where a collective would hang."""
    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    folder = logger.log_dir if isinstance(logger, TensorBoardLogger | CSVLogger) else logger.save_dir
    return folder or trainer.default_root_dir


def _saved_config(trainer: pl.Trainer) -> str | None:
    """The resolved config that ``lightning-margin fit`` saved beside the logs, if it exists."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, SaveConfigCallback):
            path = os.path.join(_log_dir(trainer), callback.config_filename)
            if os.path.exists(path):
                return path
    return None


# ---- commands ---------------------------------------------------------------------------------------------------


def next_commands(
    *,
    checkpoint: str | None,
    export_dir: str | None = None,
    config: str | None = None,
    pairs: Mapping[str, str] | None = None,
    data_root: str | None = None,
    fit_args: Sequence[str] | None = None,
    finished: bool = True,
) -> list[str]:
    """The commands to run after a fit, as shell lines: export the checkpoint, verify the export, resume if needed.

    Args:
        checkpoint: The checkpoint to export (``None``: nothing to export or verify).
        export_dir: The folder ``export`` writes (default: :data:`EXPORT_FOLDER` beside ``checkpoint``).
        config: The training config, recorded in the exported card (``export --config``).
        pairs: The verification sets ``{name: source}``; a set named as its source names it is given by source.
        data_root: ``verify --data-root``.
        fit_args: The ``fit`` command's arguments (``["fit", "--config", ...]``); with ``finished=False`` they are
            repeated with ``--ckpt_path last`` (any other ``--ckpt_path`` removed).
        finished: Whether the fit ran to its end.

    Example:
        >>> for line in next_commands(checkpoint="ckpt/last.ckpt", pairs={"lfw_dev_test": "lfw:dev_test"},
        ...                           fit_args=["fit", "--config", "a.yaml"], finished=False):
        ...     print(line)
        lightning-margin export ckpt/last.ckpt ckpt/embedder
        lightning-margin verify --model ckpt/embedder --pairs lfw:dev_test
        lightning-margin fit --config a.yaml --ckpt_path last
    """
    commands = []
    if checkpoint is not None:
        export_dir = export_dir or os.path.join(os.path.dirname(checkpoint), EXPORT_FOLDER)
        export = [PROGRAM, "export", checkpoint, export_dir]
        commands.append(shlex.join(export + (["--config", config] if config else [])))
        if pairs:
            # `verify` names a set given by its source as the data module does: only other names need NAME=SOURCE.
            sets = [
                source if verification_set_name(source) == name else f"{name}={source}"
                for name, source in pairs.items()
            ]
            verify = [PROGRAM, "verify", "--model", export_dir, "--pairs", *sets]
            commands.append(shlex.join(verify + (["--data-root", data_root] if data_root else [])))
    if not finished and fit_args is not None:
        commands.append(shlex.join([PROGRAM, *_without_ckpt_path(fit_args), "--ckpt_path", "last"]))
    return commands


def _without_ckpt_path(args: Sequence[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return kept


# ---- the summary --------------------------------------------------------------------------------------------------


def stop_status(exception: BaseException) -> str | None:
    """The status of a fit that ``exception`` stopped, or ``None`` for an error (whose traceback says it all).

    Example:
        >>> stop_status(SIGTERMException()), stop_status(ValueError("bad config"))
        ('stopped by SIGTERM', None)
    """
    if isinstance(exception, SIGTERMException):
        return _SIGTERM
    if isinstance(exception, NonFiniteError):
        return _NONFINITE
    # Lightning answers Ctrl-C with a clean shutdown (checkpoints included) and `sys.exit(1)`.
    if isinstance(exception, KeyboardInterrupt) or (
        isinstance(exception, SystemExit) and isinstance(exception.__context__, KeyboardInterrupt)
    ):
        return _CTRL_C
    return None


def fit_summary(trainer: pl.Trainer, status: str = FINISHED, fit_args: Sequence[str] | None = None) -> dict[str, Any]:
    """The summary of the fit ``trainer`` ran, as written to ``summary.json``.

    Args:
        trainer: The trainer after ``fit`` (with :class:`~lightning_margin.callbacks.MetricHistory` among its
            callbacks; without it the metrics are empty).
        status: :data:`FINISHED`, or what stopped it (:func:`stop_status`).
        fit_args: The ``lightning-margin`` arguments of the fit, for the resume command (``None``: no resume command).

    Returns:
        ``{"status", "finished", "step", "epochs", "metrics", "checkpoints": {"last", "best"}, "summary", "commands",
        "cwd"}``; paths under the working directory are relative to it, as in the commands. ``summary`` is where
        :func:`report_fit` writes it.
    """
    history = next((c.history for c in trainer.callbacks if isinstance(c, MetricHistory)), {})  # type: ignore[attr-defined]
    last = last_checkpoint(trainer)
    best = best_checkpoints(trainer)
    for entry in best:
        entry["path"] = _display(entry["path"])
    datamodule = trainer.datamodule
    pairs = getattr(datamodule, "val_sets", None)
    data_root = getattr(datamodule, "hparams", {}).get("data_root") if datamodule is not None else None
    finished = status == FINISHED
    exported = best[0]["path"] if best else None  # the model to ship; else the last one
    if exported is None and last is not None:
        exported = _display(last)
    config = _saved_config(trainer)
    return {
        "status": status,
        "finished": finished,
        "step": trainer.global_step,
        "epochs": trainer.fit_loop.epoch_progress.current.completed,
        "metrics": summarize_metrics(history),
        "checkpoints": {"last": _display(last) if last else None, "best": best},
        "summary": _display(str(summary_folder(trainer) / SUMMARY_NAME)),
        "commands": next_commands(
            checkpoint=exported,
            config=_display(config) if config else None,
            pairs=pairs,
            data_root=str(data_root) if data_root else None,
            fit_args=fit_args,
            finished=finished,
        ),
        "cwd": os.getcwd(),
    }


def _display(path: str) -> str:
    """``path`` relative to the working directory when it lies under it (shorter commands), else absolute."""
    relative = os.path.relpath(os.path.abspath(path))
    return path if relative.startswith(os.pardir) else relative


def _number(value: float | None) -> str:
    return "nan" if value is None else f"{value:.4f}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The printed text of a :func:`fit_summary`: metrics with a direction, checkpoints, next commands.

    Example:
        >>> summary = {"status": "finished", "step": 15, "epochs": 3, "checkpoints": {"last": None, "best": []},
        ...            "summary": "ckpt/summary.json", "commands": [], "metrics": summarize_metrics(
        ...                {"val/s/eer": [MetricRecord(10, 1, 0.25), MetricRecord(15, 2, 0.5)]})}
        >>> print(format_summary(summary))
        lightning-margin fit finished at step 15 (3 epochs)
          validation metric   last (step)    best (step)
          val/s/eer           0.5000 (15)    0.2500 (10)    lower is better
        no checkpoint was written
        summary: ckpt/summary.json
    """
    epochs = f"{summary['epochs']} epoch{'' if summary['epochs'] == 1 else 's'}"
    lines = [f"{PROGRAM} fit {summary['status']} at step {summary['step']} ({epochs})"]
    rows = [(name, entry) for name, entry in summary["metrics"].items() if entry["higher_is_better"] is not None]
    if rows:
        width = max(len("validation metric"), *(len(name) for name, _ in rows))
        lines.append(f"  {'validation metric':<{width}}   {'last (step)':<14} best (step)")
        for name, entry in rows:
            cells = [f"{_number(record['value'])} ({record['step']})" for record in (entry["last"], entry["best"])]
            note = "" if entry["higher_is_better"] else "lower is better"
            lines.append(f"  {name:<{width}}   {cells[0]:<14} {cells[1]:<14} {note}".rstrip())
    else:
        lines.append("  no validation metric was logged")
    checkpoints = summary["checkpoints"]
    if checkpoints["last"]:
        lines.append(f"last checkpoint: {checkpoints['last']}")
    for entry in checkpoints["best"]:
        lines.append(f"best checkpoint ({entry['monitor']} = {_number(entry['score'])}): {entry['path']}")
    if not checkpoints["last"] and not checkpoints["best"]:
        lines.append("no checkpoint was written")
    if summary["summary"]:
        lines.append(f"summary: {summary['summary']}")
    if summary["commands"]:
        lines.append("next:")
        lines.extend(f"  {command}" for command in summary["commands"])
    if summary["status"] == _NONFINITE:
        # Resuming is exact: the same batch comes back at the same step, with the same weights.
        lines.append("  (resuming replays the step that was not finite: change what caused it first, see the error)")
    return "\n".join(lines)


def report_fit(
    trainer: pl.Trainer,
    status: str = FINISHED,
    fit_args: Sequence[str] | None = None,
    stream: TextIO | None = None,
) -> dict[str, Any] | None:
    """Print the :func:`fit_summary` and write it as ``summary.json`` (atomically), on global rank 0 only.

    Under ``fast_dev_run`` the summary is printed but not written (Lightning writes no files then).

    Returns:
        The summary on rank 0, ``None`` on the other ranks.

    Example:
        >>> trainer = pl.Trainer(max_epochs=3, callbacks=[MetricHistory()])  # doctest: +SKIP
        >>> trainer.fit(model, data)  # doctest: +SKIP
        >>> report_fit(trainer)["metrics"]["val/lfw_dev_test/accuracy"]["best"]  # doctest: +SKIP
        {'value': 0.9385, 'step': 1200, 'epoch': 2}
    """
    if not trainer.is_global_zero:
        return None
    summary = fit_summary(trainer, status, fit_args)
    if trainer.fast_dev_run:
        summary["summary"] = None
    else:
        with atomic_path(summary_folder(trainer) / SUMMARY_NAME) as temporary:
            temporary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(format_summary(summary), file=stream or sys.stdout, flush=True)
    return summary
