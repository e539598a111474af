"""ShardedMarginHead: any margin head with its class centres split across DDP ranks (model-parallel classifier)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_margin._validation import check_integer
from lightning_margin.heads import MarginHead, create_head
from lightning_margin.parallel.functional.chunked import class_rows
from lightning_margin.parallel.functional.distributed import (
    all_gather_rows,
    check_inputs_on_every_rank,
    rank_and_world_size,
    shard_bounds,
)
from lightning_margin.parallel.functional.partial_fc import check_sample_rate
from lightning_margin.parallel.functional.sharded import sharded_margin_cross_entropy

__all__ = ["ShardedMarginHead", "ignore_sharded_parameters"]


class ShardedMarginHead(nn.Module):
    """Class-centre sharding (the model-parallel classifier of insightface's Partial FC, An et al., 2022) for any
    head of :mod:`lightning_margin.heads`, with optional Partial FC sampling and a memory-lean chunked loss.

    With ``world_size`` DDP ranks each rank holds the rows of ``num_classes / world_size`` classes. ``forward``
    all-gathers the embeddings and labels of every rank (its backward returns each rank the summed gradient of
    its own embeddings), computes the logits of the local classes only and combines the softmax normaliser
    across ranks, so every rank gets the same loss as the wrapped head on the global batch with the full weight
    matrix, and each rank's shard gets exactly its slice of the full gradient. Without a process group (one
    device) it is the wrapped head with the options below.

    Sharding happens when a process group exists: at construction, or later with :meth:`shard` (Lightning
    creates the process group after the module, so call ``head.shard()`` in ``LightningModule.configure_model``,
    before the optimizer is built, together with :func:`ignore_sharded_parameters`, which stops DDP from
    averaging and broadcasting the shards).

    Checkpoints: ``state_dict()`` holds the **full** weight under the wrapped head's own keys (``weight``, ``t``,
    ...), the same format as an unsharded head, gathered from every rank (a collective: call it on all ranks, as
    Lightning does); ``load_state_dict`` accepts a full weight and keeps this rank's rows, so a run can resume
    on another number of ranks. With ``full_state_dict=False`` it holds this rank's rows only; use
    :func:`~lightning_margin.parallel.save_weight_shards` / :func:`~lightning_margin.parallel.load_weight_shards`
    then. :meth:`attach_optimizer` does the same for the optimizer's per-row state (momentum, Adam moments).

    Args:
        head: A head name from :func:`~lightning_margin.heads.list_heads`, or a head instance holding the full
            weight (it is sliced to this rank's rows when sharded; used as is on one device).
        embedding_size: Width of the embeddings (needed with a head name).
        num_classes: Number of classes over all ranks (needed with a head name).
        head_kwargs: Hyperparameters of the head when ``head`` is a name.
        sample_rate: Partial FC: fraction of each rank's class centres used per step, in (0, 1]; the batch's
            positive classes are always among them. 1.0 uses all.
        chunk_size: Memory-lean mode: logits are computed for blocks of this many classes and recomputed in
            backward, so the ``[batch, classes]`` logits never exist at once. None disables it.
        process_group: The ranks that share the classes (default: the global group).
        compensate_ddp_average: The embeddings come from a module wrapped in DistributedDataParallel, which
            averages gradients over ranks; multiply the embeddings' gradient by the world size so that the
            backbone's update equals a single process's on the global batch.
        full_state_dict: Gather the full weight into ``state_dict()`` (True) or keep this rank's rows (False).

    Example:
        >>> head = ShardedMarginHead("arcface", embedding_size=64, num_classes=1000, head_kwargs={"margin": 0.5})
        >>> loss = head(torch.randn(8, 64), torch.randint(0, 1000, (8,)))  # one process: the plain ArcFace loss
        >>> head.shard()  # in a DDP run (e.g. in configure_model): keep this rank's classes  # doctest: +SKIP
    """

    def __init__(
        self,
        head: str | MarginHead = "arcface",
        embedding_size: int | None = None,
        num_classes: int | None = None,
        head_kwargs: dict[str, Any] | None = None,
        sample_rate: float = 1.0,
        chunk_size: int | None = None,
        process_group: Any = None,
        compensate_ddp_average: bool = True,
        full_state_dict: bool = True,
    ) -> None:
        super().__init__()
        self.sample_rate = check_sample_rate(sample_rate)
        self.chunk_size = None if chunk_size is None else check_integer("chunk_size", chunk_size)
        self.process_group = process_group
        self.compensate_ddp_average = bool(compensate_ddp_average)
        self.full_state_dict = bool(full_state_dict)
        rank, world_size = rank_and_world_size(process_group)
        if isinstance(head, str):
            if embedding_size is None or num_classes is None:
                raise ValueError("ShardedMarginHead needs `embedding_size` and `num_classes` with a head name")
            self.embedding_size = check_integer("embedding_size", embedding_size)
            self.num_classes = check_integer("num_classes", num_classes)
            start, end = shard_bounds(self.num_classes, world_size, rank)
            # Only this rank's rows are ever allocated when the process group already exists. They are drawn from
            # a stream of their own (seed + rank): the same seed on every rank must not give every shard the same
            # centres, nor leave the global random state (the next modules' initialisation) differing by rank.
            with torch.random.fork_rng(devices=[]):
                if world_size > 1:
                    # The CPU generator only: torch.manual_seed would also reseed (and leave reseeded) CUDA's.
                    torch.default_generator.manual_seed(torch.initial_seed() + rank)
                self.head = create_head(head, self.embedding_size, end - start, **(head_kwargs or {}))
            self.rank, self.world_size, self.class_start, self.class_end = rank, world_size, start, end
        elif isinstance(head, MarginHead):
            if head_kwargs:
                raise ValueError("`head_kwargs` only applies to a head name; this head is already built")
            for name, given in (("embedding_size", embedding_size), ("num_classes", num_classes)):
                if given is not None and given != getattr(head, name):
                    raise ValueError(f"the head has {name}={getattr(head, name)}, but {name}={given} was given")
            self.embedding_size, self.num_classes = head.embedding_size, head.num_classes
            self.head = head
            self.rank, self.world_size, self.class_start, self.class_end = 0, 1, 0, head.num_classes
        else:
            raise ValueError(f"`head` must be a head name or a MarginHead instance, got {type(head).__name__}")
        # Global ids of the classes Partial FC used in the last training step (None: all).
        self.sampled_classes: Tensor | None = None
        self.register_state_dict_post_hook(_state_dict_post_hook)
        self.register_load_state_dict_pre_hook(_load_state_dict_pre_hook)
        if world_size > 1 and self.world_size == 1:
            self.shard()

    # ---- sharding ---------------------------------------------------------------------------------------------

    def shard(
        self, process_group: Any = None, *, rank: int | None = None, world_size: int | None = None
    ) -> ShardedMarginHead:
        """Keep only this rank's class rows (a no-op without a process group or if already sharded for it).

        Call it after the process group exists and before the optimizer is built (it replaces the row
        parameters). Every rank must hold the same full weight beforehand (same seed, or a loaded checkpoint).
        ``rank`` and ``world_size`` override the process group's, to cut shards offline (e.g. to write shard
        files for another cluster size with :func:`~lightning_margin.parallel.save_weight_shards`); such a head
        cannot run ``forward`` outside a process group of that size.
        """
        if process_group is not None:
            self.process_group = process_group
        group_rank, group_size = rank_and_world_size(self.process_group)
        rank = group_rank if rank is None else rank
        world_size = group_size if world_size is None else world_size
        if (rank, world_size) == (self.rank, self.world_size):
            return self
        if self.world_size != 1:
            raise ValueError(
                f"this head is already sharded over {self.world_size} ranks; to change the number of ranks, save "
                "a checkpoint (it holds the full weight) and load it into a new ShardedMarginHead"
            )
        start, end = shard_bounds(self.num_classes, world_size, rank)
        for name in self._row_parameter_names():
            parameter = getattr(self.head, name)
            rows = self._rows_per_class(name, self.num_classes)
            local = class_rows(parameter.detach(), slice(start, end), rows).clone()
            setattr(self.head, name, nn.Parameter(local, requires_grad=parameter.requires_grad))
        self.head.num_classes = end - start
        self.rank, self.world_size, self.class_start, self.class_end = rank, world_size, start, end
        return self

    @property
    def local_classes(self) -> int:
        """Number of classes this rank holds."""
        return self.class_end - self.class_start

    def _row_parameter_names(self) -> list[str]:
        # The head names its class-major parameters (``[num_classes * rows_per_class, ...]``); the rest is replicated.
        return list(self.head.class_parameters())

    def _rows_per_class(self, name: str, classes: int) -> int:
        return getattr(self.head, name).shape[0] // classes

    def _check_world(self) -> None:
        _, world_size = rank_and_world_size(self.process_group)
        if world_size != self.world_size:
            raise ValueError(
                f"{type(self).__name__} is sharded for {self.world_size} rank(s) but the process group has "
                f"{world_size}: call `.shard()` after the process group is created and before the optimizer is "
                "built (in LightningModule.configure_model)"
            )

    # ---- loss and logits --------------------------------------------------------------------------------------

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The head's mean loss over the global batch (every rank returns the same value)."""
        if labels is None:
            raise ValueError(f"{type(self).__name__}.forward needs labels; use .logits(embeddings) for inference")
        self._check_world()
        loss, sampled = sharded_margin_cross_entropy(
            self.head,
            embeddings,
            labels,
            self.num_classes,
            self.class_start,
            sample_rate=self.sample_rate,
            chunk_size=self.chunk_size,
            process_group=self.process_group,
            gradient_scale=None if self.compensate_ddp_average else 1.0,
        )
        self.sampled_classes = None if sampled is None else sampled + self.class_start
        return loss

    def logits(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """``[B, num_classes]`` logits of this rank's embeddings over all classes, as the wrapped head's.

        Sharded, only inference logits (``labels=None``) are available; each rank computes its classes' columns
        for every rank's rows and an all-to-all returns each rank its rows (``B x num_classes`` per rank).
        """
        self._check_world()
        if self.world_size == 1:
            return self.head.logits(embeddings, labels)
        if labels is not None:
            raise ValueError("a sharded head returns inference logits only (labels=None); the loss applies the margin")
        sizes = check_inputs_on_every_rank(
            embeddings, torch.zeros(embeddings.shape[0], dtype=torch.long, device=embeddings.device),
            self.embedding_size, self.num_classes, self.process_group, name=type(self).__name__,
        )  # fmt: skip
        with torch.no_grad():
            gathered = all_gather_rows(embeddings, sizes, self.process_group)
            local = self.head.logits(gathered)  # [sum(sizes), local classes], no margin without labels
        widths = [end - start for start, end in self._all_bounds()]
        received = local.new_empty(sizes[self.rank] * self.num_classes)
        dist.all_to_all_single(
            received,
            local.contiguous().flatten(),
            output_split_sizes=[sizes[self.rank] * width for width in widths],
            input_split_sizes=[size * self.local_classes for size in sizes],
            group=self.process_group,
        )
        blocks = received.split([sizes[self.rank] * width for width in widths])
        return torch.cat([block.view(sizes[self.rank], width) for block, width in zip(blocks, widths, strict=True)], 1)

    def _all_bounds(self) -> list[tuple[int, int]]:
        return [shard_bounds(self.num_classes, self.world_size, rank) for rank in range(self.world_size)]

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def gather_rows(self, local: Tensor) -> Tensor:
        """The full ``[num_classes * k, ...]`` tensor from every rank's rows of a class-major tensor (collective)."""
        if self.world_size == 1:
            return local
        rows_per_class = local.shape[0] // self.local_classes
        sizes = [(end - start) * rows_per_class for start, end in self._all_bounds()]
        return all_gather_rows(local, sizes, self.process_group)

    def local_rows(self, tensor: Tensor, rows_per_class: int = 1, name: str = "tensor") -> Tensor:
        """This rank's rows of a class-major tensor given in full, or ``tensor`` itself if it already is a shard."""
        full, mine = self.num_classes * rows_per_class, self.local_classes * rows_per_class
        if tensor.ndim > 0 and tensor.shape[0] == full:
            return class_rows(tensor, slice(self.class_start, self.class_end), rows_per_class)
        if tensor.ndim > 0 and tensor.shape[0] == mine:
            return tensor
        rows = tensor.shape[0] if tensor.ndim else "no"
        raise ValueError(
            f"{name} has {rows} rows: neither the full {full} rows of {self.num_classes} classes nor this rank's "
            f"{mine} rows (classes [{self.class_start}, {self.class_end}))"
        )

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Make ``optimizer.state_dict()`` hold the full per-row state of this head's parameters (gathered) and
        ``load_state_dict`` keep this rank's rows: momentum and Adam moments then survive a change of world size.

        Call it on every rank once the optimizer exists (e.g. at the end of ``configure_optimizers``).
        """
        optimizer.register_state_dict_post_hook(self._optimizer_state_dict_post_hook)
        optimizer.register_load_state_dict_pre_hook(self._optimizer_load_state_dict_pre_hook)
        return optimizer

    def _head_parameter_ids(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[int, Tensor]:
        ours = {id(getattr(self.head, name)): getattr(self.head, name) for name in self._row_parameter_names()}
        found = {}
        for live, saved in zip(optimizer.param_groups, state_dict["param_groups"], strict=True):
            for parameter, key in zip(live["params"], saved["params"], strict=True):
                if id(parameter) in ours:
                    found[key] = parameter
        return found

    def _optimizer_state_dict_post_hook(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]):
        if self.world_size == 1:
            return state_dict
        state = dict(state_dict["state"])
        for key, parameter in sorted(self._head_parameter_ids(optimizer, state_dict).items()):
            if key in state:
                state[key] = {
                    name: self.gather_rows(value) if _is_row_state(value, parameter) else value
                    for name, value in state[key].items()
                }
        return {**state_dict, "state": state}

    def _optimizer_load_state_dict_pre_hook(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]):
        state = dict(state_dict["state"])
        for key, parameter in self._head_parameter_ids(optimizer, state_dict).items():
            if key in state:
                state[key] = {
                    name: self.local_rows(value, parameter.shape[0] // self.local_classes, f"optimizer state {name!r}")
                    if isinstance(value, Tensor) and value.ndim == parameter.ndim and value.ndim > 0
                    else value
                    for name, value in state[key].items()
                }
        return {**state_dict, "state": state}

    # ---- hyperparameters of the wrapped head (callbacks set e.g. `lambda_` or `margin` on the module's head) ---

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            head = self._modules.get("head")
            if head is not None and name in head._hyperparameter_names():
                return getattr(head, name)
            raise

    def __setattr__(self, name: str, value: Any) -> None:
        head = self.__dict__.get("_modules", {}).get("head")
        if head is not None and name in head._hyperparameter_names():
            setattr(head, name, value)
        else:
            super().__setattr__(name, value)

    def extra_repr(self) -> str:
        parts = [
            f"num_classes={self.num_classes}",
            f"classes=[{self.class_start}, {self.class_end}) on rank {self.rank} of {self.world_size}",
        ]
        if self.sample_rate < 1.0:
            parts.append(f"sample_rate={self.sample_rate}")
        if self.chunk_size is not None:
            parts.append(f"chunk_size={self.chunk_size}")
        return ", ".join(parts)


def _is_row_state(value: Any, parameter: Tensor) -> bool:
    return isinstance(value, Tensor) and value.shape == parameter.shape


def _state_dict_post_hook(module: ShardedMarginHead, state_dict: dict[str, Any], prefix: str, local_metadata) -> None:
    # Store the wrapped head's entries under the wrapper's own prefix, with full rows: the same keys and shapes as
    # an unsharded head, so a sharded run's checkpoint loads into a plain head (export, evaluation) and back.
    inner = prefix + "head."
    row_names = module._row_parameter_names()
    for key in [key for key in state_dict if key.startswith(inner)]:
        name = key[len(inner) :]
        value = state_dict.pop(key)
        if name in row_names and module.full_state_dict:
            value = module.gather_rows(value)
        state_dict[prefix + name] = value


def _load_state_dict_pre_hook(
    module: ShardedMarginHead, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    row_names = module._row_parameter_names()
    for name in module.head.state_dict():
        key = prefix + name
        if key not in state_dict:
            continue
        value = state_dict.pop(key)
        if name in row_names:
            value = module.local_rows(value, module._rows_per_class(name, module.local_classes), key)
        state_dict[prefix + "head." + name] = value


def ignore_sharded_parameters(module: nn.Module) -> list[str]:
    """Tell DistributedDataParallel to leave the shards of every sharded head inside ``module`` alone.

    Each rank's shard is different: DDP must neither broadcast rank 0's values at start-up nor average the
    gradients. Call this on the module DDP will wrap (the LightningModule) before it is wrapped, e.g. in
    ``configure_model`` right after :meth:`ShardedMarginHead.shard`. Returns the ignored parameter names.

    Example:
        >>> model = torch.nn.ModuleDict({"head": ShardedMarginHead("cosface", embedding_size=8, num_classes=10)})
        >>> ignore_sharded_parameters(model)  # one process: nothing is sharded
        []
    """
    names = [
        ".".join(filter(None, (prefix, "head", name)))
        for prefix, child in module.named_modules()
        if isinstance(child, ShardedMarginHead) and child.world_size > 1
        for name in child._row_parameter_names()
    ]
    existing = list(getattr(module, "_ddp_params_and_buffers_to_ignore", []))
    merged = existing + [name for name in names if name not in existing]
    if merged:
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, merged)
    return names
