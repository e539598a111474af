"""Finding the head inside a LightningModule: what every head-aware callback needs."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch import nn

__all__ = ["resolve_head"]


def resolve_head(pl_module: pl.LightningModule, head_path: str, caller: str) -> nn.Module:
    """The module at the dotted ``head_path`` of ``pl_module`` (``"head"`` for MarginModule, ``"head.head"``, ...).

    ``ValueError`` naming ``caller`` and the missing attribute otherwise.
    """
    module: Any = pl_module
    for part in head_path.split("."):
        if not hasattr(module, part):
            raise ValueError(
                f"{caller}: {type(pl_module).__name__} has no `{head_path}` (no attribute {part!r} on "
                f"{type(module).__name__}); set `head_path`"
            )
        module = getattr(module, part)
    return module
