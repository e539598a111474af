"""``gradient="exact" | "straight_through"`` on the additive-angular heads, against the derivatives by hand.

insightface's ArcFace / CombinedMarginLoss add the angular margin under ``torch.no_grad()``: the backward pass sees
the plain cosine, so ``d loss / d cos theta_y = s (p_y - 1)`` and ``d loss / d cos theta_j = s p_j``. The exact
derivative of ``s cos(m1 theta + m2)`` carries the factor ``m1 sin(m1 theta + m2) / sin theta`` on the true class
(3.6 at theta = 10 degrees and 0.19 at 145 degrees for ArcFace's m = 0.5). The references below are written from these
formulas and the derivative of a cosine, ``d cos(x, w) / dx = (w / |w| - cos x / |x|) / |x|``; never from the heads.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_margin.heads import ArcFace, CombinedMargin, CurricularFace, SubCenterArcFace, create_head
from lightning_margin.heads.base import MARGIN_GRADIENTS
from lightning_margin.parallel import ChunkedMarginHead


def _exact_factor(m1: float, m2: float):
    """m1 sin(m1 θ + m2) / sin θ while m1 θ + m2 <= pi; 1 beyond, where the heads continue linearly in cos θ."""

    def factor(theta: torch.Tensor) -> torch.Tensor:
        inside = m1 * theta + m2 <= math.pi
        return torch.where(inside, m1 * torch.sin(m1 * theta + m2) / torch.sin(theta), torch.ones_like(theta))

    return factor


# The heads whose true-class logit has an additive angular margin: their arguments and exact factor.
ANGULAR = {
    "arcface": ({"margin": 0.5}, _exact_factor(1.0, 0.5)),
    "subcenter_arcface": ({"margin": 0.5, "num_subcenters": 2}, _exact_factor(1.0, 0.5)),
    "combined": ({"m1": 1.2, "m2": 0.3, "m3": 0.1}, _exact_factor(1.2, 0.3)),  # 145 degrees is past (pi - m2) / m1
    "curricularface": ({"margin": 0.5}, _exact_factor(1.0, 0.5)),
}


def _target_slope(name: str, gradient: str, theta_degrees: float, scale: float = 64.0) -> float:
    """d(true-class logit) / d(cos θ_y) at one angle, through the head's own target logit."""
    kwargs, _ = ANGULAR[name]
    head = create_head(name, embedding_size=4, num_classes=3, scale=scale, gradient=gradient, **kwargs).double()
    cos = torch.tensor([[math.cos(math.radians(theta_degrees))]], dtype=torch.float64, requires_grad=True)
    head.target_logits(cos, torch.ones(1, 4, dtype=torch.float64), torch.tensor([0])).sum().backward()
    return float(cos.grad)


@pytest.mark.parametrize("name", sorted(ANGULAR))
@pytest.mark.parametrize("theta_degrees", [10.0, 60.0, 100.0, 145.0])
def test_straight_through_target_slope_is_the_scale_and_exact_carries_the_sine_ratio(name, theta_degrees):
    theta = torch.tensor(math.radians(theta_degrees), dtype=torch.float64)
    factor = float(ANGULAR[name][1](theta))
    assert _target_slope(name, "straight_through", theta_degrees) == pytest.approx(64.0, rel=1e-12)
    assert _target_slope(name, "exact", theta_degrees) == pytest.approx(64.0 * factor, rel=1e-9)


def test_the_exact_factor_has_the_published_values():
    """The issue's figures for ArcFace (m = 0.5): 3.6 at 10 degrees, 0.19 at 145 degrees."""
    assert _target_slope("arcface", "exact", 10.0, scale=1.0) == pytest.approx(3.596, abs=1e-3)
    assert _target_slope("arcface", "exact", 145.0, scale=1.0) == pytest.approx(0.1928, abs=1e-3)


def _cosine_jacobians(x, weight):
    """d cos(x_b, w_j) / d x_b, ``[B, C, D]``, and d cos / d w_j, ``[B, C, D]``: the derivative of a cosine."""
    x_norm, w_norm = x.norm(dim=1, keepdim=True), weight.norm(dim=1, keepdim=True)
    x_hat, w_hat = x / x_norm, weight / w_norm
    cos = x_hat @ w_hat.T
    d_x = (w_hat[None, :, :] - cos[:, :, None] * x_hat[:, None, :]) / x_norm[:, :, None]
    d_w = (x_hat[:, None, :] - cos[:, :, None] * w_hat[None, :, :]) / w_norm.T[:, :, None]
    return cos, d_x, d_w


def _batch(seed=0, batch=6, classes=5, dim=8):
    generator = torch.Generator().manual_seed(seed)
    x = 3.0 * torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    weight = torch.randn(classes, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return x, weight, labels


def _reference_gradients(x, weight, labels, scale, margin, gradient):
    """ArcFace's loss gradients by the chain rule: d loss / d cos_j = s (p_j - [j = y]) times the exact factor
    sin(θ_y + m) / sin θ_y on the true class (or 1 for straight-through), through d cos / d x and d cos / d w."""
    cos, d_x, d_w = _cosine_jacobians(x, weight)
    theta = torch.arccos(cos.clamp(-1, 1))
    onehot = F.one_hot(labels, weight.shape[0]).bool()
    logits = torch.where(onehot, scale * torch.cos(theta + margin), scale * cos)
    p = logits.softmax(dim=1)
    d_cos = scale * (p - onehot.double()) / x.shape[0]  # the loss is the batch mean
    if gradient == "exact":
        d_cos = torch.where(onehot, d_cos * torch.sin(theta + margin) / torch.sin(theta), d_cos)
    grad_x = (d_cos[:, :, None] * d_x).sum(dim=1)
    grad_w = (d_cos[:, :, None] * d_w).sum(dim=0)
    return grad_x, grad_w


@pytest.mark.parametrize("gradient", MARGIN_GRADIENTS)
@pytest.mark.parametrize("chunked", [False, True], ids=["one-device", "chunked"])
def test_arcface_loss_gradients_follow_the_chain_rule(gradient, chunked):
    x, weight, labels = _batch()
    # Angles well inside (0, pi - m): the continuation past pi - m is not part of the formula above.
    head = ArcFace(embedding_size=8, num_classes=5, scale=8.0, margin=0.5, gradient=gradient).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    loss_fn = ChunkedMarginHead(head, chunk_size=2) if chunked else head
    x_leaf = x.clone().requires_grad_(True)
    loss_fn(x_leaf, labels).backward()
    cos = F.normalize(x) @ F.normalize(weight).T
    assert cos.gather(1, labels[:, None]).max() < math.cos(0.2) and cos.min() > math.cos(math.pi - 0.6)
    grad_x, grad_w = _reference_gradients(x, weight, labels, 8.0, 0.5, gradient)
    torch.testing.assert_close(x_leaf.grad, grad_x, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, grad_w, rtol=1e-9, atol=1e-12)


def test_the_two_modes_share_the_forward_pass_and_differ_in_the_backward_pass():
    x, weight, labels = _batch(seed=3)
    results = {}
    for gradient in MARGIN_GRADIENTS:
        head = SubCenterArcFace(embedding_size=8, num_classes=5, num_subcenters=1, gradient=gradient).double()
        with torch.no_grad():
            head.weight.copy_(weight)
        x_leaf = x.clone().requires_grad_(True)
        loss = head(x_leaf, labels)
        loss.backward()
        results[gradient] = (loss.detach(), head.logits(x, labels).detach(), x_leaf.grad)
    torch.testing.assert_close(results["exact"][0], results["straight_through"][0], rtol=0, atol=0)
    torch.testing.assert_close(results["exact"][1], results["straight_through"][1], rtol=0, atol=0)
    assert not torch.allclose(results["exact"][2], results["straight_through"][2])


@pytest.mark.parametrize("cls", [ArcFace, SubCenterArcFace, CombinedMargin, CurricularFace])
def test_gradient_is_validated_recorded_and_shown(cls):
    with pytest.raises(ValueError, match=r"`gradient` must be one of 'exact', 'straight_through'; got 'identity'"):
        cls(embedding_size=4, num_classes=3, gradient="identity")
    head = cls(embedding_size=4, num_classes=3, gradient="straight_through")
    assert head.hparams["gradient"] == "straight_through"
    rebuilt = cls(embedding_size=4, num_classes=3, **head.hparams)
    assert rebuilt.gradient == "straight_through"
    assert "gradient='straight_through'" in repr(head)
    assert "gradient" not in repr(cls(embedding_size=4, num_classes=3))  # the default is not shown


def test_heads_without_an_additive_angular_margin_do_not_take_the_argument():
    for name in ("cosface", "adaface", "magface", "sphereface", "softmax"):
        with pytest.raises(ValueError, match="does not take 'gradient'"):
            create_head(name, embedding_size=4, num_classes=3, gradient="straight_through")
