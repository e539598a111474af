"""The cosine kernels of the sharded, Partial FC and chunked heads: the heads' own (lightning_margin.functional).

``fused_cosine_logits`` is :func:`lightning_margin.functional.cosine_logits` (cosines without a normalised
``[C, D]`` copy of the weight); ``_FusedCosineLogits.apply(features, weight, save_output)`` is its autograd function,
whose ``save_output=True`` computes the radial part of the weight gradient from the ``[B, C]`` output (for callers
that never modify the output in place).
"""

from lightning_margin.functional.angles import _CosineLogits as _FusedCosineLogits
from lightning_margin.functional.angles import cosine_logits as fused_cosine_logits
from lightning_margin.functional.angles import gather_rows, target_cosine

__all__ = ["_FusedCosineLogits", "fused_cosine_logits", "gather_rows", "target_cosine"]
