"""The ``lightning-margin`` command: LightningCLI for ``fit``/``validate``/``test``/``predict``, plus tools.

``lightning-margin fit --config configs/arcface.yaml`` trains; ``lightning-margin data pack ...``,
``lightning-margin plot ...`` and ``lightning-margin verify ...`` run the tools. Every training argument is a
typed constructor argument of :class:`~lightning_margin.MarginModule`, :class:`~lightning_margin.data.FaceDataModule`
or Lightning's ``Trainer``; ``lightning-margin fit --help`` lists them, ``--print_config`` shows a full config.
"""

from __future__ import annotations

import inspect
import signal
import sys
from argparse import Action
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_margin.callbacks.metric_history import MetricHistory
from lightning_margin.fit_summary import FINISHED, last_checkpoint, report_fit, stop_status
from lightning_margin.heads.registry import HeadCallable, get_head_class
from lightning_margin.module import MarginModule

__all__ = ["SIGTERM_EXIT_STATUS", "MarginCLI", "main"]

#: Exit status of a fit stopped by SIGTERM (128 + 15, a shell's convention): not 0, so that a scheduler (a Kubernetes
#: Job, a SLURM requeue script) does not count the unfinished run as done.
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM

# Commands that are not Lightning subcommands: name -> ("module:function", help). Imported only when used.
TOOLS: dict[str, tuple[str, str]] = {
    "data": ("lightning_margin.data.cli:main", "data tools: `data pack` builds RecordIO (.rec/.idx) and .bin files"),
    "plot": ("lightning_margin.plots.cli:main", "draw the margin papers' figures"),
    "verify": ("lightning_margin.verify:main", "evaluate models on verification pairs; compare with model cards"),
    "export": ("lightning_margin.export:main", "export a checkpoint as a FaceEmbedder folder (safetensors, ONNX)"),
    "publish": ("lightning_margin.publish:main", "export, evaluate, write the model card and push to the Hub"),
    "import": ("lightning_margin.importers.cli:main", "import an insightface / AdaFace / dlib model as a FaceEmbedder"),
}


#: The usage line of ``fit``/``validate``/``test``/``predict``: every option is in the help below it.
USAGE = (
    "%(prog)s [-h] [-c CONFIG] [--print_config[=flags]] [--seed_everything SEED] [--trainer.* ...] "
    "[--model.* ...] [--data.* ...] [--ckpt_path CKPT_PATH]"
)


class GroupedHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with each "known subclasses" list grouped by module: ``torch.optim.{SGD, Adam}``.

    The same names in about half the lines: the callbacks' list alone is 40 lines otherwise.
    """

    def _get_help_string(self, action: Action) -> str:
        text = super()._get_help_string(action)
        head, marker, tail = text.partition(KNOWN_SUBCLASSES)
        if not marker or not tail.endswith(")"):
            return text
        return head + marker + group_class_paths(tail[:-1].split(", ")) + ")"


KNOWN_SUBCLASSES = ", known subclasses: "


def group_class_paths(paths: Sequence[str]) -> str:
    """``a.b.C, a.b.D, e.F`` -> ``a.b.{C, D}, e.F``: paths grouped by module, in order of first appearance.

    Example:
        >>> group_class_paths(["torch.optim.SGD", "torch.optim.Adam", "my.Optimizer"])
        'torch.optim.{SGD, Adam}, my.Optimizer'
    """
    groups: dict[str, list[str]] = {}
    for path in paths:
        module, _, name = path.rpartition(".")
        groups.setdefault(module, []).append(name)
    return ", ".join(
        f"{module}.{names[0]}" if len(names) == 1 else f"{module}.{{{', '.join(names)}}}"
        for module, names in groups.items()
    )


class LoggedConfig(SaveConfigCallback):
    """Saves the resolved config to the log dir (as LightningCLI does) and to every logger (wandb, TensorBoard)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False)  # the exact YAML that reproduces the run
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class MarginCLI(LightningCLI):
    """LightningCLI with the datamodule's ``num_classes`` linked into the model, so configs never repeat it.

    Two model arguments are narrower on the command line than in Python, so that ``fit --help`` stays readable and
    every value is validated by the parser: ``model.backbone`` is a timm model name (its arguments go to
    ``model.backbone_kwargs``; a module object is for Python), and ``model.head`` is a
    :data:`~lightning_margin.heads.registry.HeadCallable` given as ``{class_path: ArcFace, init_args: {...}}``
    (``--model.head.help ArcFace`` lists its typed arguments, ``--model.head.init_args.margin 0.4`` sets one).
    ``head_kwargs`` (Python's companion of a head name) is not a CLI argument.

    The resolved config is saved next to the logs and logged to every logger (:class:`LoggedConfig`). ``fit`` records
    the validation metrics (:class:`~lightning_margin.callbacks.MetricHistory`, added when the config has none) and
    ends, finished or stopped (SIGTERM, Ctrl-C, ``NonFiniteGuard``), with the summary of
    :func:`~lightning_margin.fit_summary.report_fit`: last and best metrics, checkpoints, next commands.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_callback", LoggedConfig)
        given = kwargs.get("args")
        # The command's arguments, repeated in the end-of-fit summary's resume command.
        self.command_args = [str(arg) for arg in given] if isinstance(given, list | tuple) else sys.argv[1:]
        # argparse's usage line would list all ~90 options again above their help: name the groups instead.
        parser_kwargs = {
            key: dict(value) if isinstance(value, dict) else value
            for key, value in (kwargs.get("parser_kwargs") or {}).items()
        }
        parser_kwargs.setdefault("formatter_class", GroupedHelpFormatter)  # subcommands inherit the main parser's
        for subcommand in self.subcommands():
            parser_kwargs.setdefault(subcommand, {}).setdefault("usage", USAGE)
        kwargs["parser_kwargs"] = parser_kwargs
        super().__init__(*args, **kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException as stop:
            if isinstance(stop, SIGTERMException):
                # Said once, by rank 0: under DDP every rank stops with this exception.
                hint = stop_message(self.trainer) if self.trainer.is_global_zero else ""
                stop.resume_hint = hint  # type: ignore[attr-defined]
            status = stop_status(stop)
            if subcommand == "fit" and status is not None:
                report_fit(self.trainer, status, self.command_args)
            raise
        if subcommand == "fit":
            report_fit(self.trainer, FINISHED, self.command_args)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        configured = [*(config.get("callbacks") or []), *callbacks]
        if not any(isinstance(callback, MetricHistory) for callback in configured):
            callbacks = [*callbacks, MetricHistory()]  # the end-of-fit summary reads it
        return super()._instantiate_trainer(config, callbacks)

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if self.subclass_mode_model or not issubclass(self._model_class, MarginModule):
            super().add_core_arguments_to_parser(parser)
            return
        # LightningCLI's own steps, except that the model's class arguments skip the Python-only forms.
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        model_group = "model"
        parser.add_class_arguments(
            self._model_class,
            model_group,
            fail_untyped=False,
            sub_configs=True,
            skip={"backbone", "head", "head_kwargs"},
        )
        defaults = inspect.signature(self._model_class).parameters
        default_head = get_head_class(defaults["head"].default)  # the Python default is a head name
        group = parser.groups[model_group]  # the model's own section of the help
        group.add_argument(
            f"--{model_group}.backbone",
            type=str,
            default=defaults["backbone"].default,
            help="A timm model name (iresnet50, resnet18, ...); its arguments: model.backbone_kwargs.",
        )
        group.add_argument(
            f"--{model_group}.head",
            type=HeadCallable,
            default={"class_path": f"lightning_margin.heads.{default_head.__name__}"},
            help="The margin head: {class_path: ArcFace, init_args: {margin: 0.5}}.",
        )
        if self.datamodule_class is not None:
            parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data)
        else:
            parser.add_lightning_class_args(
                self._datamodule_class, "data", subclass_mode=self.subclass_mode_data, required=False
            )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def stop_message(trainer: Trainer | None) -> str:
    """What a fit stopped by SIGTERM tells its user: whether a checkpoint exists, and what to run next."""
    written = last_checkpoint(trainer)
    if trainer is not None and written is None:
        return (
            "stopped by SIGTERM before any checkpoint was written; the run is not finished. Run the same command "
            "again to start it over (with `--ckpt_path last` it also starts from the beginning)."
        )
    where = f" The checkpoint is {written}." if written else ""
    return (
        f"stopped by SIGTERM; the run is not finished.{where} Run the same command with `--ckpt_path last` to resume "
        "(needs a ModelCheckpoint with save_on_exception=True or save_last=True)."
    )


def _tool(target: str) -> Callable[[list[str]], int]:
    module, _, function = target.partition(":")
    return getattr(import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-margin`` console script.

    Returns 0, or :data:`SIGTERM_EXIT_STATUS` when a SIGTERM stopped the run (Lightning finishes the running step
    and exits; with ``ModelCheckpoint(save_on_exception=True)`` a checkpoint is written first).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TOOLS:
        return int(_tool(TOOLS[args[0]][0])(args[1:]) or 0)
    if args and args[0] in ("-h", "--help"):
        print("Tools (each has --help):")
        for name, (_, description) in TOOLS.items():
            print(f"  lightning-margin {name:<8} {description}")
        print("Training (LightningCLI):")
    from lightning_margin.data import FaceDataModule

    try:
        MarginCLI(
            MarginModule,
            FaceDataModule,
            args=None if argv is None else args,  # None: LightningCLI reads sys.argv itself (no "both given" warning)
            auto_configure_optimizers=False,  # the model owns its optimizer arguments (one way to set them)
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "lightning-margin"},
        )
    except SIGTERMException as stop:  # a SystemExit without a code: the process would report success
        hint = getattr(stop, "resume_hint", stop_message(None))
        if hint:
            print(f"lightning-margin: {hint}", file=sys.stderr)
        return SIGTERM_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
