"""The margin functions of the angular-margin losses, as pure functions of cosines.

Every function here maps the cosine of the angle between an embedding and its own class centre to the
margin-penalised value that the softmax sees for the true class (before scaling). The heads in
:mod:`lightning_margin.heads` compute cosines, call these, and scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_margin.functional.angles import safe_arccos

__all__ = [
    "adaface_margins",
    "arcface_margin",
    "chebyshev_cos_multiple",
    "combined_margin",
    "cosface_margin",
    "curricular_negatives",
    "magface_margin",
    "magface_regularizer",
    "replace_target_logits",
    "sphereface_psi",
    "straight_through",
]


def cosface_margin(cos: Tensor, margin: float | Tensor) -> Tensor:
    """CosFace / AM-Softmax (Wang et al., 2018): additive cosine margin ``cos(theta) - m``.

    Example:
        >>> cosface_margin(torch.tensor([1.0, 0.5]), 0.35)
        tensor([0.6500, 0.1500])
    """
    return cos - margin


def combined_margin(
    cos: Tensor, m1: float | Tensor = 1.0, m2: float | Tensor = 0.0, m3: float | Tensor = 0.0
) -> Tensor:
    """The combined margin of ArcFace (Deng et al., 2019, eq. 4): ``cos(m1 * theta + m2) - m3``.

    ``m1 * theta + m2`` must not pass pi, where ``cos`` turns back up and the loss would *reward* a larger
    angle. Beyond ``theta* = (pi - m2) / m1`` this function continues as ``cos(theta) - cos(theta*) - 1 - m3``:
    continuous at ``theta*`` (both sides equal ``-1 - m3``), strictly decreasing, with the derivative of plain
    softmax. insightface instead switches to ``cos(theta) - m * sin(m)``, which jumps at ``theta*``; a continuous
    rule keeps the loss continuous in the weights. A negative ``m2`` (AdaFace's high-quality samples) is
    clamped so the angle never goes below 0. ``m2`` and ``m3`` may be per-sample ``[B]`` tensors.

    Example:
        >>> theta = torch.tensor([0.0, 1.0, 3.0])
        >>> combined_margin(torch.cos(theta), m2=0.5)  # ArcFace, m = 0.5; 3.0 > pi - 0.5 continues linearly in cos
        tensor([ 0.8776,  0.0707, -1.1124])
    """
    if not isinstance(m1, Tensor) and not isinstance(m2, Tensor) and m1 == 1.0 and m2 == 0.0:
        return cos - m3  # purely additive: no angle needed, exact gradient everywhere
    theta = safe_arccos(cos)
    m2 = torch.as_tensor(m2, dtype=cos.dtype, device=cos.device)
    theta_star = ((math.pi - m2) / m1).clamp(max=math.pi)
    inside = torch.cos((m1 * theta + m2).clamp(min=0.0)) - m3
    outside = cos - torch.cos(theta_star) - 1.0 - m3
    return torch.where(theta <= theta_star, inside, outside)


def straight_through(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` in the forward pass with the gradient of ``surrogate`` in the backward pass (a straight-through
    estimator, Bengio et al., 2013): ``surrogate + (value - surrogate).detach()``.

    insightface's ArcFace / CombinedMarginLoss add the angular margin under ``torch.no_grad()``, so their backward
    treats ``cos theta_y -> cos(theta_y + m)`` as the identity: with ``surrogate = cos theta_y`` this gives
    ``d loss / d cos theta_y = s (p_y - 1)`` instead of the exact derivative, which carries the factor
    ``sin(theta_y + m) / sin(theta_y)``.

    Example:
        >>> cos = torch.tensor([0.5], requires_grad=True)
        >>> out = straight_through(arcface_margin(cos, 0.5), cos)
        >>> out.backward()
        >>> out.detach(), cos.grad
        (tensor([0.0236]), tensor([1.]))
    """
    return surrogate + (value - surrogate).detach()


def arcface_margin(cos: Tensor, margin: float | Tensor, easy_margin: bool = False) -> Tensor:
    """ArcFace (Deng et al., 2019): additive angular margin ``cos(theta + m)``.

    With ``easy_margin`` the margin applies only where ``cos(theta) > 0`` (angles under 90 degrees), else the
    continuation rule of :func:`combined_margin` applies past ``pi - m``.

    Example:
        >>> arcface_margin(torch.tensor([1.0]), 0.5)
        tensor([0.8776])
    """
    penalised = combined_margin(cos, m2=margin)
    if easy_margin:
        return torch.where(cos > 0, penalised, cos)
    return penalised


def chebyshev_cos_multiple(cos: Tensor, multiple: int) -> Tensor:
    """``cos(m * theta)`` as the Chebyshev polynomial ``T_m(cos theta)``: exact and smooth on [-1, 1].

    This is how L-Softmax and SphereFace evaluate the multiplicative margin: unlike ``cos(m * acos(x))`` its
    gradient is finite at ``x = +-1``.

    Example:
        >>> chebyshev_cos_multiple(torch.tensor([0.5]), 2)  # cos(2 * 60 deg)
        tensor([-0.5000])
    """
    previous, current = torch.ones_like(cos), cos
    if multiple == 0:
        return previous
    for _ in range(multiple - 1):
        previous, current = current, 2 * cos * current - previous
    return current


def sphereface_psi(cos: Tensor, margin: int) -> Tensor:
    """SphereFace / L-Softmax (Liu et al., 2017 / 2016): ``psi(theta) = (-1)^k cos(m theta) - 2k``.

    ``k = floor(m theta / pi)`` in ``{0, ..., m-1}`` picks the branch that makes ``psi`` monotonically decreasing
    on [0, pi] (from 1 to ``1 - 2m``). ``psi`` is continuous across branches, so the rounding of ``k`` near a
    branch point changes nothing. Gradients flow through the Chebyshev polynomial only; ``k`` is piecewise
    constant.

    Example:
        >>> sphereface_psi(torch.tensor([1.0, 0.0, -1.0]), 4)
        tensor([ 1., -3., -7.])
    """
    with torch.no_grad():
        theta = torch.acos(cos.clamp(-1.0, 1.0))
        k = torch.floor(margin * theta / math.pi).clamp(0, margin - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * chebyshev_cos_multiple(cos, margin) - 2.0 * k


def curricular_negatives(cos: Tensor, target: Tensor, t: Tensor | float) -> Tensor:
    """CurricularFace (Huang et al., 2020): modulate hard negatives, ``cos_j -> cos_j (t + cos_j)``.

    A negative is hard when its cosine exceeds the margin-penalised target cosine of its row. ``cos`` is the
    ``[B, C]`` cosine matrix, ``target`` the ``[B]`` penalised target cosines, ``t`` the running mean of the
    target cosine (the curriculum: early ``t ~ 0`` down-weights hard negatives, later ``t -> 1`` up-weights them).
    The true-class column must be overwritten afterwards (see :func:`replace_target_logits`).
    """
    hard = cos > target.unsqueeze(1)
    return torch.where(hard, cos * (t + cos), cos)


def adaface_margins(
    norms: Tensor, batch_mean: Tensor, batch_std: Tensor, margin: float, concentration: float, eps: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """AdaFace (Kim et al., 2022): per-sample angular and additive margins from the feature norm.

    ``z = clip((norm - mean) / (std + eps) * h, -1, 1)`` measures image quality by the norm relative to its
    running statistics; ``g_angle = -m z`` and ``g_add = m z + m``. The target logit is then
    ``cos(theta + g_angle) - g_add``, i.e. :func:`combined_margin` with ``m2 = g_angle``, ``m3 = g_add``.
    Norms are detached: the margin adapts to quality, it does not push the norm.

    Returns:
        ``(g_angle, g_add)``, each ``[B]``.
    """
    z = ((norms.detach() - batch_mean) / (batch_std + eps) * concentration).clamp(-1.0, 1.0)
    return -margin * z, margin * z + margin


def magface_margin(
    norms: Tensor, lower_norm: float, upper_norm: float, lower_margin: float, upper_margin: float
) -> Tensor:
    """MagFace (Meng et al., 2021): margin growing linearly with the clamped feature norm ``a`` in [l_a, u_a]."""
    a = norms.clamp(lower_norm, upper_norm)
    return (upper_margin - lower_margin) / (upper_norm - lower_norm) * (a - lower_norm) + lower_margin


def magface_regularizer(norms: Tensor, lower_norm: float, upper_norm: float) -> Tensor:
    """MagFace's norm regulariser ``g(a) = 1/a + a/u_a^2`` (convex, minimal at ``a = u_a``), per sample."""
    a = norms.clamp(lower_norm, upper_norm)
    return 1.0 / a + a / upper_norm**2


def replace_target_logits(logits: Tensor, labels: Tensor, new_target: Tensor, old_target: Tensor) -> Tensor:
    """Swap the true-class logit ``old_target`` for ``new_target`` in ``logits`` (``[B, C]``), in place.

    Adds ``new_target - old_target`` at each row's label rather than copying the whole matrix: the gradient of a
    ``scatter_add_`` with respect to the matrix is the identity, so neither forward nor backward makes an extra
    ``[B, C]`` pass. ``old_target`` must be the value at that position (computed independently of ``logits``).
    """
    delta = (new_target - old_target).to(logits.dtype)
    return logits.scatter_add_(1, labels.unsqueeze(1), delta.unsqueeze(1))
