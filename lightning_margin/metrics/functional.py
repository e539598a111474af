"""Face-verification metrics as pure functions of pair scores: k-fold accuracy, TAR@FAR, EER, ROC and its AUC.

Every function takes ``scores`` (one similarity per pair, higher = more alike; e.g. the cosine of two L2-normalised
embeddings from :func:`cosine_scores`) and ``issame`` (one bool per pair). The ROC-based metrics build on
torchmetrics' exact binary ROC (:func:`torchmetrics.functional.classification.binary_roc`); the k-fold accuracy
follows the LFW protocol as insightface's ``verification.py`` computes it, with an exact threshold search where
insightface tries a grid of distances 0.01 apart.

Conventions shared by all functions:

- A pair is predicted "same" when ``score >= threshold`` (the convention of torchmetrics' and scikit-learn's ROC).
- Squared L2 distance between unit vectors is ``2 - 2 * cosine``, so it orders pairs exactly like the cosine;
  a cosine threshold ``t`` corresponds to the distance threshold ``2 - 2 * t`` that insightface reports.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_roc

__all__ = [
    "DEFAULT_FAR",
    "MAIN_METRIC",
    "cosine_scores",
    "equal_error_rate",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "tar_at_far_key",
    "verification_accuracy",
    "verification_metrics",
]

#: The false accept rate(s) TAR@FAR is reported at unless told otherwise: training logs, ``verify``, ``publish`` and
#: the model cards (whose ``tar@far=1e-3`` column every zoo card records) all use this one default.
DEFAULT_FAR: tuple[float, ...] = (1e-3,)
#: The key of :func:`verification_metrics` a verification set is known by (LFW's 10-fold accuracy): the one training
#: shows in its progress bar.
MAIN_METRIC = "accuracy"


# ----------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------
def _check_pairs(scores: Tensor, issame: Tensor) -> tuple[Tensor, Tensor]:
    """Validate one score and one label per pair; return ``(scores, issame as bool)`` as 1-D tensors."""
    if not isinstance(scores, Tensor) or not isinstance(issame, Tensor):
        raise ValueError(
            f"`scores` and `issame` must be tensors, got {type(scores).__name__} and {type(issame).__name__}"
        )
    if scores.ndim != 1 or issame.ndim != 1:
        raise ValueError(
            f"`scores` and `issame` must be 1-D (one value per pair), got shapes {tuple(scores.shape)} "
            f"and {tuple(issame.shape)}"
        )
    if scores.numel() != issame.numel():
        raise ValueError(
            f"`scores` and `issame` must have the same length, got {scores.numel()} scores and {issame.numel()} labels"
        )
    if not scores.is_floating_point():
        raise ValueError(f"`scores` must be a floating-point tensor, got dtype {scores.dtype}")
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise ValueError(f"`scores` must be finite; pair {bad} has score {scores[bad].item()}")
    if issame.dtype != torch.bool:
        if issame.is_floating_point() or issame.is_complex():
            raise ValueError(f"`issame` must be a bool or integer tensor of 0/1, got dtype {issame.dtype}")
        if bool(((issame != 0) & (issame != 1)).any()):
            raise ValueError(f"`issame` must hold only 0/1 (or True/False), got values {issame.unique().tolist()}")
        issame = issame.bool()
    num_same = int(issame.sum())
    if num_same == 0 or num_same == issame.numel():
        kind = "no" if num_same == 0 else "only"
        raise ValueError(
            f"`issame` has {kind} same-identity pairs ({num_same} of {issame.numel()}); verification metrics need "
            "both same and different pairs"
        )
    return scores, issame


def _result_dtype(scores: Tensor) -> torch.dtype:
    """Metrics come back in the dtype of the scores, at least float32."""
    return torch.promote_types(scores.dtype, torch.float32)


def _check_far(far: float | Sequence[float]) -> tuple[list[float], bool]:
    """Return the target false-accept rates as a list, and whether a single number was given."""
    scalar = isinstance(far, (int, float)) and not isinstance(far, bool)
    values = [far] if scalar else list(far)  # type: ignore[list-item,arg-type]
    if not values:
        raise ValueError("`far` must hold at least one false-accept rate in (0, 1]")
    for value in values:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not 0 < value <= 1:
            raise ValueError(f"`far` values must be numbers in (0, 1], got {value!r}")
    return [float(value) for value in values], scalar


def _check_num_folds(num_folds: int, num_pairs: int | None = None) -> int:
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"`num_folds` must be an integer >= 2, got {num_folds!r}")
    if num_pairs is not None and num_pairs < num_folds:
        raise ValueError(
            f"{num_pairs} pairs cannot be split into `num_folds`={num_folds} folds; need at least that many"
        )
    return num_folds


# ----------------------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------------------
def cosine_scores(embeddings1: Tensor, embeddings2: Tensor) -> Tensor:
    """Cosine similarity of each pair of embeddings, after L2 normalisation (the score every metric here takes).

    Args:
        embeddings1: ``(num_pairs, embedding_size)`` first image of each pair.
        embeddings2: ``(num_pairs, embedding_size)`` second image of each pair.

    Returns:
        ``(num_pairs,)`` scores in ``[-1, 1]``; half-precision inputs are scored in float32.

    Example:
        >>> cosine_scores(torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]]))
        tensor([1.])
    """
    if embeddings1.ndim != 2 or embeddings1.shape != embeddings2.shape:
        raise ValueError(
            "`embeddings1` and `embeddings2` must both have shape (num_pairs, embedding_size), got "
            f"{tuple(embeddings1.shape)} and {tuple(embeddings2.shape)}"
        )
    # Half precision loses ~3 digits of the cosine, enough to reorder close pairs: score in float32 at least.
    dtype = torch.promote_types(embeddings1.dtype, torch.float32)
    first = F.normalize(embeddings1.to(dtype), dim=1)
    second = F.normalize(embeddings2.to(dtype), dim=1)
    return (first * second).sum(dim=1)


def _distinct(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted distinct scores and, for every pair, the index of its score among them (one sort, shared)."""
    return torch.unique(scores, sorted=True, return_inverse=True)


# ----------------------------------------------------------------------------------------------------------------
# ROC family
# ----------------------------------------------------------------------------------------------------------------
def _roc_from_distinct(issame: Tensor, values: Tensor, inverse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """torchmetrics' exact binary ROC, with thresholds expressed in score units.

    torchmetrics passes scores outside ``[0, 1]`` through a sigmoid, which saturates in floating point and would merge
    distinct large scores (and report thresholds in sigmoid units). Feeding it each pair's rank among the distinct
    scores, scaled into ``[0, 1]`` in float64, keeps every distinct score distinct and every tie tied, so the curve is
    exactly the ROC of the raw scores; the rank is then mapped back to the score it stands for.
    """
    top = max(values.numel() - 1, 1)
    ranks = inverse.to(torch.float64) / top
    fpr, tpr, rank_thresholds = binary_roc(ranks, issame.long(), thresholds=None, validate_args=False)
    thresholds = torch.empty(rank_thresholds.shape, dtype=values.dtype, device=values.device)
    # The first point (0, 0) accepts nothing: its threshold lies above every score (scikit-learn also uses +inf).
    thresholds[0] = math.inf
    thresholds[1:] = values[torch.round(rank_thresholds[1:] * top).long()]
    return fpr, tpr, thresholds


def roc_curve(scores: Tensor, issame: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Receiver operating characteristic of a verification set: false and true accept rates at every distinct score.

    Computed by torchmetrics' exact binary ROC (no threshold grid). Pairs with ``score >= thresholds[i]`` are accepted
    at point ``i``; the first point, ``(0, 0)``, has threshold ``+inf`` (as in scikit-learn) and the last accepts all.

    Args:
        scores: ``(num_pairs,)`` similarity of each pair, higher = more alike.
        issame: ``(num_pairs,)`` whether each pair shows one identity.

    Returns:
        ``(fpr, tpr, thresholds)``: FAR and TAR (float32, non-decreasing) and the thresholds (decreasing, in score
        units) of the ``num_distinct_scores + 1`` points of the curve.

    Example:
        >>> scores, issame = torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([True, False, True, False])
        >>> fpr, tpr, thresholds = roc_curve(scores, issame)
        >>> fpr, tpr
        (tensor([0.0000, 0.0000, 0.0000, 0.5000, 1.0000]), tensor([0.0000, 0.5000, 1.0000, 1.0000, 1.0000]))
        >>> thresholds
        tensor([   inf, 0.9000, 0.6000, 0.4000, 0.2000])
    """
    scores, issame = _check_pairs(scores, issame)
    return _roc_from_distinct(issame, *_distinct(scores))


def roc_auc(scores: Tensor, issame: Tensor) -> Tensor:
    """Area under the ROC curve (trapezoidal, ties counted as half), by torchmetrics' ``binary_auroc``.

    Equals the probability that a random same-identity pair scores above a random different-identity pair.

    Example:
        >>> roc_auc(torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([True, False, False, True]))
        tensor(0.7500)
    """
    scores, issame = _check_pairs(scores, issame)
    values, inverse = _distinct(scores)
    # Same rank trick as in `roc_curve`: AUC only depends on the order, which the ranks keep exactly.
    ranks = inverse.to(torch.float64) / max(values.numel() - 1, 1)
    return binary_auroc(ranks, issame.long(), validate_args=False).to(_result_dtype(scores))


def _accept_counts(fpr: Tensor, tpr: Tensor, issame: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """Recover the integer counts of accepted different / same pairs at each ROC point from the float32 rates."""
    num_same = int(issame.sum())
    num_different = issame.numel() - num_same
    false_accepts = torch.round(fpr.double() * num_different)
    true_accepts = torch.round(tpr.double() * num_same)
    return false_accepts, true_accepts, num_different, num_same


def _tar_at_far_from_roc(fpr: Tensor, tpr: Tensor, issame: Tensor, far: list[float]) -> Tensor:
    false_accepts, true_accepts, num_different, num_same = _accept_counts(fpr, tpr, issame)
    # Counts, not float rates: at FAR = 3/3000 the float32 rate need not compare equal to 1e-3, the counts do.
    # The relative tolerance only absorbs the rounding of `far * num_different` itself.
    allowed = torch.tensor(far, dtype=torch.float64, device=fpr.device) * num_different * (1 + 1e-9)
    # The curve's false accepts never decrease, so the last point within the budget has the highest TAR.
    last = torch.searchsorted(false_accepts, allowed, right=True) - 1
    return true_accepts[last] / num_same


def tar_at_far(scores: Tensor, issame: Tensor, far: float | Sequence[float] = DEFAULT_FAR) -> Tensor:
    """True accept rate at a false accept rate: the highest TAR of any threshold whose FAR is at most ``far``.

    The ROC is taken from torchmetrics (:func:`roc_curve`); no interpolation between its points, so the operating
    point is one a deployed threshold can reach. A target FAR below ``1 / num_different_pairs`` can only be met by
    accepting no different pair at all: the result is then the TAR at FAR = 0.

    Args:
        scores: ``(num_pairs,)`` similarity of each pair, higher = more alike.
        issame: ``(num_pairs,)`` whether each pair shows one identity.
        far: one target false-accept rate in ``(0, 1]`` or a sequence of them.

    Returns:
        A 0-d tensor for one ``far``, otherwise one TAR per entry of ``far``.

    Example:
        >>> tar_at_far(torch.tensor([0.9, 0.8, 0.7, 0.4, 0.3, 0.2]), torch.tensor([1, 1, 0, 1, 0, 0]), far=0.5)
        tensor(1.)
    """
    scores, issame = _check_pairs(scores, issame)
    far_values, scalar = _check_far(far)
    fpr, tpr, _ = _roc_from_distinct(issame, *_distinct(scores))
    result = _tar_at_far_from_roc(fpr, tpr, issame, far_values).to(_result_dtype(scores))
    return result[0] if scalar else result


def _eer_from_roc(fpr: Tensor, tpr: Tensor, issame: Tensor) -> Tensor:
    false_accepts, true_accepts, num_different, num_same = _accept_counts(fpr, tpr, issame)
    false_accept_rate = false_accepts / num_different
    false_reject_rate = 1 - true_accepts / num_same
    gap = false_reject_rate - false_accept_rate  # 1 at the first point, -1 at the last, never increasing
    crossing = int(torch.nonzero(gap <= 0)[0])  # >= 1 because gap[0] == 1
    before, after = gap[crossing - 1], gap[crossing]
    # Where the straight segment between the two ROC points crosses FAR == FRR.
    weight = before / (before - after)
    return false_accept_rate[crossing - 1] + weight * (false_accept_rate[crossing] - false_accept_rate[crossing - 1])


def equal_error_rate(scores: Tensor, issame: Tensor) -> Tensor:
    """Equal error rate: the rate at which false accepts and false rejects are equal, on torchmetrics' ROC.

    Found on the ROC of :func:`roc_curve`, where the segment between two consecutive points crosses
    FAR == 1 - TAR (linear interpolation between the two points; exact when a point lies on the line).

    Example:
        >>> equal_error_rate(torch.tensor([0.9, 0.8, 0.7, 0.4, 0.3, 0.2]), torch.tensor([1, 1, 0, 1, 0, 0]))
        tensor(0.3333)
    """
    scores, issame = _check_pairs(scores, issame)
    fpr, tpr, _ = _roc_from_distinct(issame, *_distinct(scores))
    return _eer_from_roc(fpr, tpr, issame).to(_result_dtype(scores))


def tar_at_far_key(far: float) -> str:
    """The metric name of a TAR@FAR value, with the FAR in short scientific notation.

    Example:
        >>> tar_at_far_key(1e-3), tar_at_far_key(0.1), tar_at_far_key(2.5e-4)
        ('tar@far=1e-3', 'tar@far=1e-1', 'tar@far=2.5e-4')
    """
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"tar@far={mantissa}e{int(exponent)}"


# ----------------------------------------------------------------------------------------------------------------
# k-fold accuracy (LFW protocol)
# ----------------------------------------------------------------------------------------------------------------
def _fold_bounds(num_pairs: int, num_folds: int) -> list[tuple[int, int]]:
    """Consecutive folds without shuffling; the first ``num_pairs % num_folds`` folds get one extra pair.

    The same split as scikit-learn's ``KFold(n_splits=num_folds, shuffle=False)``, which insightface uses.
    """
    bounds, start = [], 0
    for fold in range(num_folds):
        stop = start + num_pairs // num_folds + (1 if fold < num_pairs % num_folds else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _at_or_above(indices: Tensor, weights: Tensor, num_values: int) -> Tensor:
    """Per distinct score ``j`` (row ``num_values``: above them all), the summed ``weights`` of pairs at or above it."""
    totals = torch.zeros(num_values + 1, dtype=weights.dtype, device=weights.device).index_add_(0, indices, weights)
    return totals.flip(0).cumsum(0).flip(0)


def _accuracy_from_distinct(issame: Tensor, values: Tensor, inverse: Tensor, num_folds: int) -> dict[str, Tensor]:
    num_values = values.numel()
    values64 = values.double()
    # A threshold accepting the pairs at or above distinct score j makes (accepted same) - (accepted different) + (all
    # different pairs) correct decisions: the signed count at or above j ranks every threshold exactly, no grid.
    sign = issame.long() * 2 - 1
    net_all = _at_or_above(inverse, sign, num_values)
    count_all = torch.bincount(inverse, minlength=num_values)
    fold_accuracy, thresholds, one_class_folds = [], [], []
    for fold, (start, stop) in enumerate(_fold_bounds(issame.numel(), num_folds)):
        held_inverse, held_issame = inverse[start:stop], issame[start:stop]
        if bool(held_issame.all()) or not bool(held_issame.any()):
            one_class_folds.append(fold)
        train_net = net_all - _at_or_above(held_inverse, sign[start:stop], num_values)
        # Every threshold between two consecutive training scores scores the same on the training folds, so the
        # maximisers form intervals. Tie rule: the highest maximising interval (fewest false accepts, the side
        # insightface's first maximum over ascending distances picks), threshold at its midpoint: the middle of
        # the gap between the training scores, not its edge, so held-out pairs inside the gap are split evenly.
        # The last maximal row is the interval's upper end, a training score (or "above every score").
        best = num_values - int(train_net.flip(0).argmax())
        if best == num_values:  # accepting nothing is best: a threshold above every score of the set
            threshold = torch.nextafter(values64[-1], values64.new_tensor(math.inf))
        else:
            in_training = count_all[:best] - torch.bincount(held_inverse, minlength=num_values)[:best] > 0
            below = torch.nonzero(in_training)
            if below.numel() == 0:  # accepting everything is best: the lowest score of the set
                threshold = values64[0]
            else:
                lower, upper = values64[int(below[-1])], values64[best]
                threshold = lower + (upper - lower) / 2
                if threshold <= lower:  # adjacent floats: no number lies strictly between them
                    threshold = upper
        accepted = values64[held_inverse] >= threshold
        fold_accuracy.append((accepted == held_issame).double().mean())
        thresholds.append(threshold)
    if one_class_folds:
        # Consecutive folds assume a set ordered like LFW View 2 (every fold mixes same and different pairs). A set
        # listing all same pairs first (LFW View 1 lists, some custom sets) gives one-class folds and a biased score.
        warnings.warn(
            f"verification_accuracy: folds {one_class_folds} of {num_folds} hold only same or only different pairs; "
            "the k-fold protocol expects every consecutive fold to mix both (order the pairs like LFW View 2, e.g. "
            "interleave same and different pairs)",
            UserWarning,
            stacklevel=3,
        )
    accuracy = torch.stack(fold_accuracy)
    dtype = _result_dtype(values)
    return {
        "accuracy": accuracy.mean().to(dtype),
        # Population standard deviation (numpy's default ddof=0), as insightface reports it.
        "accuracy_std": accuracy.std(correction=0).to(dtype),
        "threshold": torch.stack(thresholds).mean().to(dtype),
    }


def verification_accuracy(scores: Tensor, issame: Tensor, num_folds: int = 10) -> dict[str, Tensor]:
    """k-fold verification accuracy, the LFW protocol as insightface's ``verification.py`` evaluates it.

    The pairs are split into ``num_folds`` consecutive folds without shuffling (scikit-learn's
    ``KFold(shuffle=False)`` split). For each fold, the threshold that maximises accuracy on the other folds is found
    exactly, by trying every distinct score (not a grid), and applied to the held-out fold, where a pair counts as
    "same" when ``score >= threshold``.

    The folds should each mix same and different pairs, as LFW View 2 (``pairs.txt``) and insightface's ``.bin``
    sets are ordered; a set that lists all same pairs first gives one-class folds, and a ``UserWarning``.

    Tie rule: all thresholds between two consecutive distinct training scores classify the training folds alike, so
    the maximisers form intervals. The highest maximising interval is taken (fewest false accepts: the side that
    insightface's first maximum over ascending distance thresholds picks) and the threshold is its midpoint, halfway
    between the two training scores, so that held-out pairs falling in the gap are not all given to one side. When
    accepting every training pair is best, the threshold is the lowest score of the set; when accepting none is
    best, the next float above the highest score.

    Args:
        scores: ``(num_pairs,)`` similarity of each pair in the set's order, higher = more alike.
        issame: ``(num_pairs,)`` whether each pair shows one identity.
        num_folds: number of folds, at least 2 and at most ``num_pairs``.

    Returns:
        ``accuracy``: mean held-out accuracy over folds; ``accuracy_std``: its population standard deviation
        (ddof=0, as numpy and insightface compute it); ``threshold``: the mean of the per-fold best thresholds, in
        score units. 0-d tensors in the dtype of ``scores`` (at least float32).

    Example:
        >>> scores = torch.tensor([0.9, 0.2, 0.8, 0.3, 0.9, 0.2, 0.8, 0.3, 0.9, 0.2])
        >>> verification_accuracy(scores, scores > 0.5, num_folds=5)
        {'accuracy': tensor(1.), 'accuracy_std': tensor(0.), 'threshold': tensor(0.5500)}
    """
    scores, issame = _check_pairs(scores, issame)
    _check_num_folds(num_folds, scores.numel())
    return _accuracy_from_distinct(issame, *_distinct(scores), num_folds)


def verification_metrics(
    scores: Tensor, issame: Tensor, num_folds: int = 10, far: float | Sequence[float] = DEFAULT_FAR
) -> dict[str, Tensor]:
    """Every verification metric of one set from one sort: k-fold accuracy, TAR@FAR, EER and ROC AUC.

    Args:
        scores: ``(num_pairs,)`` similarity of each pair in the set's order, higher = more alike.
        issame: ``(num_pairs,)`` whether each pair shows one identity.
        num_folds: folds of :func:`verification_accuracy`.
        far: target false-accept rate(s) of :func:`tar_at_far`.

    Returns:
        A flat dict of 0-d tensors (dtype of ``scores``, at least float32) with the keys ``accuracy``,
        ``accuracy_std``, ``threshold``, one ``tar@far=<far>`` per target (named by :func:`tar_at_far_key`), ``eer``
        and ``auc``.

    Example:
        >>> scores = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.95, 0.05])
        >>> sorted(verification_metrics(scores, scores > 0.5, num_folds=5))
        ['accuracy', 'accuracy_std', 'auc', 'eer', 'tar@far=1e-3', 'threshold']
    """
    scores, issame = _check_pairs(scores, issame)
    _check_num_folds(num_folds, scores.numel())
    far_values, _ = _check_far(far)
    values, inverse = _distinct(scores)
    result = _accuracy_from_distinct(issame, values, inverse, num_folds)
    fpr, tpr, _ = _roc_from_distinct(issame, values, inverse)
    dtype = _result_dtype(scores)
    for key, tar in zip(far_values, _tar_at_far_from_roc(fpr, tpr, issame, far_values), strict=True):
        result[tar_at_far_key(key)] = tar.to(dtype)
    result["eer"] = _eer_from_roc(fpr, tpr, issame).to(dtype)
    # Same trapezoid rule as torchmetrics' binary_auroc, on the curve already computed.
    result["auc"] = torch.trapezoid(tpr.double(), fpr.double()).to(dtype)
    return result
