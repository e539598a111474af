"""Pure functions behind the margin heads: cosines, angles and margin penalties (no parameters, no state)."""

from lightning_margin.functional.angles import (
    cosine_logits,
    gather_rows,
    normalized_linear,
    paired_cosines,
    row_ids,
    safe_arccos,
    scaled_directions,
    target_cosine,
)
from lightning_margin.functional.margins import (
    adaface_margins,
    arcface_margin,
    chebyshev_cos_multiple,
    combined_margin,
    cosface_margin,
    curricular_negatives,
    magface_margin,
    magface_regularizer,
    replace_target_logits,
    sphereface_psi,
    straight_through,
)
from lightning_margin.functional.schedules import SCHEDULES, sphereface_lambda, warmup_value

__all__ = [
    "SCHEDULES",
    "adaface_margins",
    "arcface_margin",
    "chebyshev_cos_multiple",
    "combined_margin",
    "cosface_margin",
    "cosine_logits",
    "curricular_negatives",
    "gather_rows",
    "magface_margin",
    "magface_regularizer",
    "normalized_linear",
    "paired_cosines",
    "replace_target_logits",
    "row_ids",
    "safe_arccos",
    "scaled_directions",
    "sphereface_lambda",
    "sphereface_psi",
    "straight_through",
    "target_cosine",
    "warmup_value",
]
