"""MarginModule: a LightningModule that trains backbone + neck + margin head for face recognition."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_margin._validation import check_choice, check_integer
from lightning_margin.backbones.factory import build_backbone, feature_width, sized_backbone_kwargs
from lightning_margin.heads import MarginHead, create_head
from lightning_margin.heads.registry import HeadCallable, head_class_from_path, head_config
from lightning_margin.metrics.functional import DEFAULT_FAR, MAIN_METRIC
from lightning_margin.necks import create_neck, list_necks

__all__ = ["MarginModule", "default_optimizer"]


def default_optimizer(params: Iterable[Any]) -> torch.optim.Optimizer:
    """SGD with momentum 0.9, lr 0.1 and weight decay 5e-4: the insightface recipe for ResNet-class backbones."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)


class MarginModule(pl.LightningModule):
    """Backbone -> embedding neck -> margin head, trained with the head's loss and validated by face verification.

    ``forward(images)`` returns the embeddings (no head, not normalised): what a face embedder outputs.
    ``training_step`` returns the head's loss and logs ``train/loss``, ``train/accuracy`` (top-1 of the
    head's inference logits) and ``train/lr``. Validation embeds both images of every pair of each verification
    set of the datamodule (with flip test-time augmentation) and logs ``val/<set>/<metric>``.

    Args:
        backbone: A timm model name (``iresnet50``, ``mobilefacenet``, ``resnet18``, ...) created with
            ``num_classes=0``, or any ``nn.Module`` mapping images to ``[B, features]``.
        num_classes: Number of training identities (linked from the datamodule by the CLI).
        embedding_size: Width of the embeddings.
        head: The margin head, given as a :data:`~lightning_margin.heads.registry.HeadCallable`
            ``(embedding_size, num_classes) -> head`` (a head class, ``functools.partial(ArcFace, margin=0.4)``; in a
            config ``{class_path: ArcFace, init_args: {margin: 0.4}}``, ``--model.head.help ArcFace`` lists its
            arguments), a name from :func:`~lightning_margin.heads.list_heads` (with ``head_kwargs``), a head
            instance, or a head's record ``{"class_path": ..., "init_args": ...}``. Whatever the form, the
            hyperparameters record the built head's :func:`~lightning_margin.heads.registry.head_config` (its class
            path and :attr:`~lightning_margin.heads.MarginHead.hparams`), which rebuilds it.
        head_kwargs: Python only: hyperparameters of the head when ``head`` is a name (the CLI sets
            ``head.init_args``).
        neck: The layer between backbone and embedding (``bn_dropout_fc_bn``: the ArcFace paper's option E).
        dropout: Dropout rate in the neck.
        backbone_kwargs: Extra ``timm.create_model`` arguments (``global_pool``, ...); face backbones also get
            ``img_size=input_size``.
        pretrained: Load timm's pretrained backbone weights (cached, or downloaded).
        input_size: Square input size in pixels (measures the backbone's output width).
        optimizer: ``params -> Optimizer`` (``--model.optimizer SGD --model.optimizer.lr 0.1``), given two
            parameter groups: backbone + neck, then the head.
        lr_scheduler: ``optimizer -> LRScheduler``, or ``None``.
        scheduler_interval: Step the scheduler every epoch or every step.
        head_weight_decay: The head's weight decay (``None``: the optimizer's).
        flip_test: Validate on the sum of each image's and its mirror's normalised embeddings.
        far: False accept rates at which validation reports the true accept rate.
        sharded: Shard the head's class centres over DDP ranks (checkpoints hold the full weight).
        sample_rate: Partial FC: the fraction of negative class centres used per step (1.0: all).
        chunk_size: Classes per block of a loss that never holds ``[B, num_classes]`` logits (``None``: off).

    Example:
        >>> from functools import partial
        >>> from lightning_margin.heads import ArcFace
        >>> model = MarginModule("iresnet18", num_classes=100, embedding_size=128,
        ...                      head=partial(ArcFace, scale=32.0, margin=0.5), input_size=112)
        >>> model(torch.randn(2, 3, 112, 112)).shape
        torch.Size([2, 128])
        >>> model.hparams.head["init_args"]
        {'scale': 32.0, 'margin': 0.5, 'easy_margin': False, 'gradient': 'exact'}
    """

    def __init__(
        self,
        backbone: str | nn.Module = "iresnet50",
        num_classes: int = 1000,
        embedding_size: int = 512,
        head: HeadCallable | str | MarginHead | Mapping[str, Any] = "arcface",
        head_kwargs: dict[str, Any] | None = None,
        neck: Literal["bn_dropout_fc_bn", "fc_bn", "linear", "identity"] = "bn_dropout_fc_bn",
        dropout: float = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained: bool = False,
        input_size: int = 112,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        head_weight_decay: float | None = None,
        flip_test: bool = True,
        far: Sequence[float] = DEFAULT_FAR,
        sharded: bool = False,
        sample_rate: float = 1.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        # Modules and callables are not hyperparameters: checkpoints must load with `weights_only=True`. The head is
        # recorded once built, from the head itself (below).
        modules = ["backbone"] if isinstance(backbone, nn.Module) else []
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "head", "head_kwargs", *modules])
        num_classes = check_integer("num_classes", num_classes)
        embedding_size = check_integer("embedding_size", embedding_size)
        check_choice("neck", neck, list_necks())
        check_choice("scheduler_interval", scheduler_interval, ("epoch", "step"))
        self.input_size = check_integer("input_size", input_size)

        backbone_kwargs = dict(backbone_kwargs or {})
        if isinstance(backbone, str):
            backbone_kwargs = sized_backbone_kwargs(backbone, self.input_size, backbone_kwargs)
            self.backbone = build_backbone(backbone, pretrained=pretrained, **backbone_kwargs)
        else:
            self.backbone = backbone
        in_features = feature_width(self.backbone, self.input_size, backbone_kwargs.get("in_chans", 3))
        self.neck = create_neck(neck, in_features, embedding_size, dropout)

        self.head = _build_head(head, head_kwargs, embedding_size, num_classes)
        # Plain strings and numbers, in the config form: `MarginModule(**hparams)`, `load_from_checkpoint` and the CLI's
        # `--ckpt_path` (which parses them back into the config) all rebuild this head.
        self.save_hyperparameters({"head": head_config(self.head)})
        if sharded or sample_rate != 1.0 or chunk_size is not None:
            from lightning_margin.parallel import ShardedMarginHead

            # Wrapped after the head is built, so its initial weight is the one an unsharded run would draw.
            self.head = ShardedMarginHead(self.head, sample_rate=sample_rate, chunk_size=chunk_size)
        self.sharded = sharded

        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.head_weight_decay = head_weight_decay
        self.flip_test = flip_test
        self.far = tuple(far)
        self.val_metrics = nn.ModuleList()
        self.val_set_names: list[str] = []

    # ---- model ------------------------------------------------------------------------------------------------

    def forward(self, images: Tensor) -> Tensor:
        """Embeddings ``[B, embedding_size]`` of ``images`` ``[B, C, H, W]`` (not normalised)."""
        return self.neck(self.backbone(images))

    # ---- training ---------------------------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        images, labels = batch
        embeddings = self(images)
        loss = self.head(embeddings, labels)
        batch_size = labels.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if self._logging_step():
            # The inference logits (no margin): the accuracy a user would see, not the margin-penalised one.
            with torch.no_grad():
                accuracy = (self.head.logits(embeddings.detach()).argmax(dim=1) == labels).float().mean()
            self.log("train/accuracy", accuracy, prog_bar=True, batch_size=batch_size)
            if self._trainer is not None and self._trainer.optimizers:
                self.log("train/lr", self._trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
        return {"loss": loss, "embeddings": embeddings.detach(), "labels": labels}

    def _logging_step(self) -> bool:
        # The accuracy needs a second [B, num_classes] matmul: only pay for it on the steps that are logged.
        trainer = self._trainer
        if trainer is None:
            return True
        return trainer.global_step % max(trainer.log_every_n_steps, 1) == 0

    def configure_model(self) -> None:
        world_size = self._trainer.world_size if self._trainer is not None else 1
        # Partial FC and chunking wrap the head before the process group exists. Unsharded, every rank would hold
        # the whole head (and with Partial FC sample its own classes): the replicas would drift.
        wrapped = [f"sample_rate={self.hparams.sample_rate} (Partial FC)"] if self.hparams.sample_rate != 1.0 else []
        wrapped += [f"chunk_size={self.hparams.chunk_size}"] if self.hparams.chunk_size is not None else []
        if world_size > 1 and not self.sharded and wrapped:
            raise ValueError(
                f"{' and '.join(wrapped)} with {world_size} processes needs sharded=True (each rank keeps its own "
                "shard of the class centres); set model.sharded: true"
            )
        if self.sharded:
            from lightning_margin.parallel import ignore_sharded_parameters

            self.head.shard()  # the process group exists now: keep this rank's classes
            ignore_sharded_parameters(self)  # DDP must neither broadcast nor average the shards

    def configure_optimizers(self) -> Any:
        head_params = list(self.head.parameters())
        head_ids = {id(p) for p in head_params}
        body_params = [p for p in self.parameters() if id(p) not in head_ids]
        head_group: dict[str, Any] = {"params": head_params}
        if self.head_weight_decay is not None:
            head_group["weight_decay"] = self.head_weight_decay
        optimizer = self.optimizer_factory([{"params": body_params}, head_group])
        if hasattr(self.head, "attach_optimizer"):
            self.head.attach_optimizer(optimizer)  # sharded heads: checkpoints hold full momentum rows
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    # ---- validation -------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate", "test"):
            self._build_val_metrics()

    def _build_val_metrics(self) -> None:
        from lightning_margin.metrics import VerificationMetrics

        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = list(getattr(datamodule, "verification_set_names", []) or [])
        if not names:
            return
        self.val_set_names = names
        self.val_metrics = nn.ModuleList(VerificationMetrics(far=self.far) for _ in names)

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalised evaluation embeddings, with flip test-time augmentation when ``flip_test``."""
        from lightning_margin.tta import embed

        return embed(self, images, flip=self.flip_test)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Embed both sides of each pair; batches are ``(images1, images2, issame[, pair_index])``.

        With ``pair_index`` (each pair's position in its set) the metrics undo a ``DistributedSampler``'s
        interleaving and padding, so multi-process validation gives exactly the single-process numbers.
        """
        if not self.val_metrics:
            return
        images1, images2, issame, *rest = batch
        pair_index = rest[0] if rest else None
        self.val_metrics[dataloader_idx].update(self.embed(images1), self.embed(images2), issame, pair_index)

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        self._log_verification("val")

    def on_test_epoch_end(self) -> None:
        self._log_verification("test")

    def _log_verification(self, prefix: str) -> None:
        for name, metric in zip(self.val_set_names, self.val_metrics, strict=True):
            if not metric.update_called:
                continue
            try:
                results = metric.compute()
            except ValueError as error:
                # A partial pass (fast_dev_run, limit_val_batches) may hold fewer pairs than folds, or one class.
                rank_zero_warn(f"verification set {name!r}: no metrics this epoch: {error}")
                metric.reset()
                continue
            values = {f"{prefix}/{name}/{key}": value for key, value in results.items() if _is_scalar(value)}
            main = f"{prefix}/{name}/{MAIN_METRIC}"
            if main in values:  # the progress bar shows what the run is for
                self.log(main, values.pop(main), prog_bar=True, add_dataloader_idx=False, sync_dist=False)
            self.log_dict(values, add_dataloader_idx=False, sync_dist=False)
            metric.reset()


def _build_head(
    head: HeadCallable | str | MarginHead | Mapping[str, Any],
    head_kwargs: dict[str, Any] | None,
    embedding_size: int,
    num_classes: int,
) -> MarginHead:
    """The head from any of the forms ``MarginModule`` takes, checked against the module's sizes."""
    if head_kwargs and not isinstance(head, str):
        raise ValueError(
            f"`head_kwargs` only applies to a head name, but `head` is a {type(head).__name__}; give the "
            "hyperparameters to the head (`partial(ArcFace, margin=0.4)`, or `init_args` in a config)"
        )
    if isinstance(head, str):
        return create_head(head, embedding_size=embedding_size, num_classes=num_classes, **(head_kwargs or {}))
    if isinstance(head, Mapping):
        if not isinstance(head.get("class_path"), str):
            raise ValueError(f"a head config needs a `class_path` (and optional `init_args`), got keys {sorted(head)}")
        cls = head_class_from_path(head["class_path"])
        return cls(embedding_size, num_classes, **dict(head.get("init_args") or {}))
    if not isinstance(head, MarginHead):
        if not callable(head):
            raise ValueError(
                "`head` must be a callable (embedding_size, num_classes) -> MarginHead, a head name, a MarginHead "
                f"instance or a head config, got {type(head).__name__}"
            )
        built = head(embedding_size, num_classes)
        if not isinstance(built, MarginHead):
            raise ValueError(f"the `head` callable must return a MarginHead, got {type(built).__name__}")
        head = built
    for name, expected in (("embedding_size", embedding_size), ("num_classes", num_classes)):
        if getattr(head, name, expected) != expected:
            raise ValueError(f"the head has {name}={getattr(head, name)}, but the module has {name}={expected}")
    return head


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1)
