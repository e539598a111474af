"""The ``lightning-margin`` command: LightningCLI for ``fit``/``validate``/``test``/``predict``, plus tools.

``lightning-margin fit --config configs/arcface.yaml`` trains; ``lightning-margin data pack ...``,
``lightning-margin plot ...`` and ``lightning-margin verify ...`` run the tools. Every training argument is a
typed constructor argument of :class:`~lightning_margin.MarginModule`, :class:`~lightning_margin.data.FaceDataModule`
or Lightning's ``Trainer``; ``lightning-margin fit --help`` lists them, ``--print_config`` shows a full config.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

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
}


class LoggedConfig(SaveConfigCallback):
    """Saves the resolved config to the log dir (as LightningCLI does) and to every logger (wandb, TensorBoard)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False)  # the exact YAML that reproduces the run
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class MarginCLI(LightningCLI):
    """LightningCLI with the datamodule's ``num_classes`` linked into the model, so configs never repeat it.

    The resolved config is saved next to the logs and logged to every logger (:class:`LoggedConfig`).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_callback", LoggedConfig)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


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
    except SIGTERMException:  # a SystemExit without a code: the process would report success
        print(
            "lightning-margin: stopped by SIGTERM; the run is not finished. Run the same command with "
            "`--ckpt_path last` to resume (needs a ModelCheckpoint with save_on_exception=True or save_last=True).",
            file=sys.stderr,
        )
        return SIGTERM_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
