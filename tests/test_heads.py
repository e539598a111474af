"""Independent tests of the margin heads against reference implementations written here from the papers.

The references below use only ``torch`` and ``math``; they never call ``lightning_margin.functional`` or any other
helper of the package. Only the public head classes and the registry are exercised. Formulas (θ_j is the angle
between the embedding ``x`` and the weight row ``W_j``, ``y`` the label):

* ψ(θ) = (−1)^k cos(mθ) − 2k on [kπ/m, (k+1)π/m] (SphereFace / L-Softmax, Liu et al. 2016/2017).
* f(θ) = cos(m1 θ + m2) − m3 up to θ* = (π − m2)/m1, then the continuous continuation cos θ − cos θ* − 1 − m3
  (combined margin of ArcFace, Deng et al. 2019; ArcFace is m1=1, m2=m, m3=0; CosFace m1=1, m2=0, m3=m).
* CurricularFace (Huang et al. 2020), AdaFace (Kim et al. 2022), MagFace (Meng et al. 2021) as in the
  project's heads contract.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import lightning_margin.heads as heads_module
from lightning_margin.heads import create_head, list_heads

PI = math.pi

# The registry names the contract promises, with their class names.
CLASS_NAMES = {
    "softmax": "Softmax",
    "modified_softmax": "ModifiedSoftmax",
    "normface": "NormFace",
    "lsoftmax": "LSoftmax",
    "sphereface": "SphereFace",
    "cosface": "CosFace",
    "arcface": "ArcFace",
    "combined": "CombinedMargin",
    "subcenter_arcface": "SubCenterArcFace",
    "curricularface": "CurricularFace",
    "adaface": "AdaFace",
    "magface": "MagFace",
}

# Default hyperparameters from the contract's table; the references read these, never the head's attributes.
DEFAULTS: dict[str, dict] = {
    "softmax": {"bias": True},
    "modified_softmax": {},
    "normface": {"scale": 16.0},
    "lsoftmax": {"margin": 4, "lambda_": 0.0},
    "sphereface": {"margin": 4, "lambda_": 0.0},
    "cosface": {"scale": 64.0, "margin": 0.35},
    "arcface": {"scale": 64.0, "margin": 0.5, "easy_margin": False, "gradient": "exact"},
    "combined": {"scale": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2, "gradient": "exact"},
    "subcenter_arcface": {"scale": 64.0, "margin": 0.5, "num_subcenters": 3, "gradient": "exact"},
    "curricularface": {"scale": 64.0, "margin": 0.5, "momentum": 0.01, "gradient": "exact"},
    "adaface": {"scale": 64.0, "margin": 0.4, "concentration": 0.333, "momentum": 0.01},
    "magface": {
        "scale": 64.0,
        "lower_norm": 10.0,
        "upper_norm": 110.0,
        "lower_margin": 0.45,
        "upper_margin": 0.8,
        "regularizer_weight": 35.0,
    },
}

# Non-default values for every constructor argument, so a head that ignores one fails.
CUSTOM: dict[str, dict] = {
    "softmax": {"bias": False},
    "modified_softmax": {},
    "normface": {"scale": 10.0},
    "lsoftmax": {"margin": 3, "lambda_": 1.5},
    "sphereface": {"margin": 2, "lambda_": 0.5},
    "cosface": {"scale": 30.0, "margin": 0.2},
    # gradient changes the backward pass only: the logits must not move (tests/test_heads_gradient.py checks it).
    "arcface": {"scale": 30.0, "margin": 0.3, "easy_margin": True, "gradient": "straight_through"},
    "combined": {"scale": 32.0, "m1": 1.35, "m2": 0.25, "m3": 0.1, "gradient": "straight_through"},
    "subcenter_arcface": {"scale": 32.0, "margin": 0.3, "num_subcenters": 2, "gradient": "straight_through"},
    "curricularface": {"scale": 32.0, "margin": 0.3, "momentum": 0.2, "gradient": "straight_through"},
    "adaface": {"scale": 32.0, "margin": 0.3, "concentration": 0.5, "momentum": 0.2},
    "magface": {
        "scale": 32.0,
        "lower_norm": 5.0,
        "upper_norm": 50.0,
        "lower_margin": 0.3,
        "upper_margin": 0.6,
        "regularizer_weight": 10.0,
    },
}

CONFIGS = {"defaults": {}, "custom": None}  # None -> CUSTOM[name]
SCALED_HEADS = [name for name, hp in DEFAULTS.items() if "scale" in hp]


def all_names() -> list[str]:
    """The registered heads: a head added later is parametrized here and fails loudly without a reference."""
    return list_heads()


def hyperparameters(name: str, config: str) -> tuple[dict, dict]:
    """(constructor kwargs, full hyperparameters the reference uses)."""
    if name not in DEFAULTS:
        pytest.fail(f"head {name!r} is registered but tests/test_heads.py has no reference for it; add one")
    kwargs = dict(CUSTOM[name]) if config == "custom" else {}
    return kwargs, {**DEFAULTS[name], **kwargs}


def rows_per_class(name: str, hp: dict) -> int:
    return int(hp.get("num_subcenters", 1))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add overhead (30x the CPU time on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# Reference implementations, straight from the formulas
# ---------------------------------------------------------------------------------------------------------------


def ref_psi(theta: torch.Tensor, m: int) -> torch.Tensor:
    """ψ(θ) = (−1)^k cos(mθ) − 2k for θ in [kπ/m, (k+1)π/m]."""
    k = torch.floor(theta * m / PI).clamp(0, m - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * torch.cos(m * theta) - 2.0 * k


def ref_combined(theta: torch.Tensor, m1, m2, m3) -> torch.Tensor:
    """cos(m1 θ + m2) − m3 up to θ* = (π − m2)/m1; beyond, cos θ − cos θ* − 1 − m3. m2, m3 may be per-sample."""
    m2 = torch.as_tensor(m2, dtype=theta.dtype)
    theta_star = (PI - m2) / m1
    inside = torch.cos((m1 * theta + m2).clamp(min=0.0)) - m3
    beyond = torch.cos(theta) - torch.cos(theta_star) - 1.0 - m3
    return torch.where(theta <= theta_star, inside, beyond)


def reference_logits(
    name: str,
    hp: dict,
    theta: torch.Tensor,
    x_norm: torch.Tensor,
    w_norm: torch.Tensor | None,
    labels: torch.Tensor | None,
    state: dict,
) -> torch.Tensor:
    """Logits from angles ``theta [B, C]`` (for sub-centres: the smallest angle over a class's sub-centres).

    ``x_norm [B]`` are the embedding norms, ``w_norm [C]`` the class weight norms, ``state`` the head's
    bias / running buffers.
    """
    cos = torch.cos(theta)
    scale = hp.get("scale")
    if name == "softmax":
        out = x_norm[:, None] * w_norm[None, :] * cos
        return out + state["bias"][None, :] if hp["bias"] else out
    if name == "modified_softmax":
        return x_norm[:, None] * cos
    if name == "normface":
        return scale * cos
    if name == "lsoftmax":
        base = x_norm[:, None] * w_norm[None, :] * cos
    elif name == "sphereface":
        base = x_norm[:, None] * cos
    else:
        base = scale * cos
    if labels is None:
        return base

    onehot = F.one_hot(labels, theta.shape[1]).bool()
    theta_y = theta.gather(1, labels[:, None]).squeeze(1)
    cos_y = torch.cos(theta_y)
    if name in ("lsoftmax", "sphereface"):
        lam = hp["lambda_"]
        target = (lam * cos_y + ref_psi(theta_y, int(hp["margin"]))) / (1.0 + lam)
        factor = x_norm * (w_norm[labels] if name == "lsoftmax" else 1.0)
        true_logit = factor * target
    elif name == "cosface":
        true_logit = scale * (cos_y - hp["margin"])
    elif name == "arcface":
        margin = hp["margin"]
        if hp["easy_margin"]:
            true_logit = scale * torch.where(cos_y > 0, torch.cos(theta_y + margin), cos_y)
        else:
            true_logit = scale * ref_combined(theta_y, 1.0, margin, 0.0)
    elif name == "combined":
        true_logit = scale * ref_combined(theta_y, hp["m1"], hp["m2"], hp["m3"])
    elif name == "subcenter_arcface":
        true_logit = scale * ref_combined(theta_y, 1.0, hp["margin"], 0.0)
    elif name == "curricularface":
        f_y = ref_combined(theta_y, 1.0, hp["margin"], 0.0)
        true_logit = scale * f_y
        hard = (cos > f_y[:, None]) & ~onehot
        base = torch.where(hard, scale * cos * (state["t"] + cos), base)
    elif name == "adaface":
        # The paper stops the gradient through the feature norm.
        norm = x_norm.detach().clamp(0.001, 100.0)
        z = ((norm - state["batch_mean"]) / (state["batch_std"] + 1e-3) * hp["concentration"]).clamp(-1.0, 1.0)
        g_angle = -hp["margin"] * z
        g_add = hp["margin"] * z + hp["margin"]
        theta_star = PI - g_angle
        inside = torch.cos((theta_y + g_angle).clamp(min=0.0)) - g_add
        beyond = cos_y - torch.cos(theta_star) - 1.0 - g_add
        true_logit = scale * torch.where(theta_y <= theta_star, inside, beyond)
    elif name == "magface":
        norm = x_norm.clamp(hp["lower_norm"], hp["upper_norm"])
        margin = (hp["upper_margin"] - hp["lower_margin"]) / (hp["upper_norm"] - hp["lower_norm"]) * (
            norm - hp["lower_norm"]
        ) + hp["lower_margin"]
        true_logit = scale * ref_combined(theta_y, 1.0, margin, 0.0)
    else:  # pragma: no cover - guarded by hyperparameters()
        raise AssertionError(name)
    return torch.where(onehot, true_logit[:, None], base)


def reference_regularizer(name: str, hp: dict, x_norm: torch.Tensor) -> torch.Tensor | float:
    """MagFace's g(a) = 1/a + a/u², weighted and averaged; 0 for the other heads."""
    if name != "magface":
        return 0.0
    norm = x_norm.clamp(hp["lower_norm"], hp["upper_norm"])
    return hp["regularizer_weight"] * (1.0 / norm + norm / hp["upper_norm"] ** 2).mean()


def head_state(head: torch.nn.Module) -> dict:
    state = {}
    for key in ("bias", "t", "batch_mean", "batch_std"):
        value = getattr(head, key, None)
        if isinstance(value, torch.Tensor):
            state[key] = value.detach().to(torch.float64)
    return state


def angles_from_vectors(name: str, hp: dict, x: torch.Tensor, weight: torch.Tensor):
    """θ [B, C], ‖x‖ [B], ‖W_j‖ [C] computed from the vectors: cos θ = x·W / (‖x‖‖W‖)."""
    x_norm = x.norm(dim=1)
    w_norm = weight.norm(dim=1)
    cos = (x @ weight.T) / (x_norm[:, None] * w_norm[None, :])
    k = rows_per_class(name, hp)
    if k > 1:
        cos = cos.view(x.shape[0], -1, k).amax(dim=2)
        w_norm = None
    return torch.acos(cos.clamp(-1.0, 1.0)), x_norm, w_norm


def reference_from_head(name, hp, head, x, labels):
    """Reference logits for embeddings ``x`` with the head's current weight / bias / buffers, in float64."""
    x64 = x.to(torch.float64)
    theta, x_norm, w_norm = angles_from_vectors(name, hp, x64, head.weight.detach().to(torch.float64))
    return reference_logits(name, hp, theta, x_norm, w_norm, labels, head_state(head))


# ---------------------------------------------------------------------------------------------------------------
# Fixtures / builders
# ---------------------------------------------------------------------------------------------------------------

EMBEDDING_SIZE = 3  # few dimensions: random angles spread over [0, π], reaching every branch
NUM_CLASSES = 5
BATCH = 32


def build(name: str, config: str = "defaults", embedding_size: int = EMBEDDING_SIZE, num_classes: int = NUM_CLASSES):
    kwargs, hp = hyperparameters(name, config)
    head = create_head(name, embedding_size=embedding_size, num_classes=num_classes, **kwargs)
    return head, hp


def randomize(head: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weight rows of varied norms, a random bias, and buffers away from their initial values."""
    with torch.no_grad():
        weight = torch.randn(head.weight.shape, generator=generator, dtype=torch.float64)
        weight *= torch.empty(weight.shape[0], 1, dtype=torch.float64).uniform_(0.5, 2.0, generator=generator)
        head.weight.copy_(weight)
        if isinstance(getattr(head, "bias", None), torch.Tensor):
            head.bias.copy_(torch.randn(head.bias.shape, generator=generator, dtype=torch.float64))
        if isinstance(getattr(head, "t", None), torch.Tensor):
            head.t.fill_(0.4)
        if isinstance(getattr(head, "batch_mean", None), torch.Tensor):
            # With norms from 0.5 to 150, ẑ reaches both clamps (−1 and 1).
            head.batch_mean.fill_(50.0)
            head.batch_std.fill_(15.0)


def random_batch(generator: torch.Generator, embedding_size=EMBEDDING_SIZE, num_classes=NUM_CLASSES, batch=BATCH):
    directions = torch.randn(batch, embedding_size, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    norms = torch.tensor([0.5, 2.0, 7.0, 15.0, 35.0, 60.0, 95.0, 150.0], dtype=torch.float64)
    x = directions * norms.repeat(batch // len(norms) + 1)[:batch, None]
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    return x, labels


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


def test_registry_lists_the_contracted_heads():
    assert set(CLASS_NAMES) <= set(list_heads())
    assert list_heads() == sorted(list_heads())


@pytest.mark.parametrize("name", all_names())
def test_every_registered_head_has_a_reference(name):
    assert name in DEFAULTS, f"add a reference for head {name!r} to tests/test_heads.py"


@pytest.mark.parametrize("name", sorted(CLASS_NAMES))
def test_create_head_builds_the_exported_class(name):
    head = create_head(name, embedding_size=6, num_classes=4)
    assert type(head) is getattr(heads_module, CLASS_NAMES[name])
    assert isinstance(head, torch.nn.Module)
    assert isinstance(head.weight, torch.nn.Parameter)
    assert head.weight.shape == (4 * rows_per_class(name, DEFAULTS[name]), 6)


def test_heads_are_reexported_from_the_package():
    import lightning_margin

    assert lightning_margin.create_head is create_head
    assert lightning_margin.list_heads is list_heads
    for class_name in CLASS_NAMES.values():
        assert getattr(lightning_margin, class_name) is getattr(heads_module, class_name)


def test_unknown_head_name_lists_the_allowed_names():
    with pytest.raises(ValueError) as info:
        create_head("arcfase", embedding_size=4, num_classes=3)
    message = str(info.value)
    assert "arcfase" in message
    for name in list_heads():
        assert name in message


@pytest.mark.parametrize("name", all_names())
def test_misspelt_hyperparameter_lists_the_accepted_ones(name):
    hyperparameters(name, "defaults")
    with pytest.raises(ValueError) as info:
        create_head(name, embedding_size=4, num_classes=3, not_a_hyperparameter=1)
    message = str(info.value)
    assert "not_a_hyperparameter" in message
    for accepted in DEFAULTS[name]:
        assert accepted in message
    assert "kwargs" not in message, f"lists a hyperparameter that does not exist: {message}"


def test_subcenter_rows_are_grouped_by_class():
    """Rows j*K .. j*K+K-1 belong to class j: an embedding along row 4 (K=3) is class 1."""
    head = create_head("subcenter_arcface", embedding_size=8, num_classes=3, num_subcenters=3)
    with torch.no_grad():
        head.weight.copy_(torch.randn(9, 8) * 0.01)
        head.weight[4] = torch.ones(8)  # exactly parallel to the embedding: the largest cosine
    prediction = head.logits(torch.ones(1, 8)).argmax(dim=1)
    assert prediction.item() == 1


# ---------------------------------------------------------------------------------------------------------------
# Logits against the reference
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_labels", [True, False], ids=["labels", "inference"])
@pytest.mark.parametrize("config", ["defaults", "custom"])
@pytest.mark.parametrize("name", all_names())
def test_logits_match_reference_float64(name, config, with_labels):
    generator = torch.Generator().manual_seed(1)
    head, hp = build(name, config)
    head = head.double().eval()
    randomize(head, generator)
    x, labels = random_batch(generator)
    labels = labels if with_labels else None
    logits = head.logits(x, labels)
    assert logits.dtype == torch.float64
    assert logits.shape == (BATCH, NUM_CLASSES)
    expected = reference_from_head(name, hp, head, x, labels)
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", all_names())
def test_logits_match_reference_float32(name):
    generator = torch.Generator().manual_seed(2)
    head, hp = build(name, "custom")
    head.eval()
    randomize(head, generator)
    x, labels = random_batch(generator)
    x = x.float()
    logits = head.logits(x, labels)
    assert logits.dtype == torch.float32
    expected = reference_from_head(name, hp, head, x, labels)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=0.02)


def angular_distance(a_deg: float, b_deg: float) -> float:
    diff = abs(a_deg - b_deg) % 360.0
    return min(diff, 360.0 - diff)


# Hand-built 2-D geometry: class 0 at 0°, class 1 at 90° (sub-centres spread around them); embeddings at 10°,
# 45°, 170° (θ + m > π for class 0) and 280° (170° from class 1).
EMBEDDING_ANGLES = [10.0, 45.0, 170.0, 280.0]
EMBEDDING_NORMS = [2.0, 30.0, 60.0, 150.0]
KNOWN_LABELS = [0, 0, 0, 1]
CLASS_ANGLES = [[0.0, 345.0, 15.0], [90.0, 80.0, 100.0]]
CLASS_NORMS = [1.5, 0.5]


@pytest.mark.parametrize("with_labels", [True, False], ids=["labels", "inference"])
@pytest.mark.parametrize("config", ["defaults", "custom"])
@pytest.mark.parametrize("name", all_names())
def test_logits_at_known_angles(name, config, with_labels):
    head, hp = build(name, config, embedding_size=2, num_classes=2)
    head = head.double().eval()
    k = rows_per_class(name, hp)
    rows = []
    for angles, norm in zip(CLASS_ANGLES, CLASS_NORMS, strict=True):
        for angle in angles[:k]:
            rows.append([norm * math.cos(math.radians(angle)), norm * math.sin(math.radians(angle))])
    state = {}
    with torch.no_grad():
        head.weight.copy_(torch.tensor(rows, dtype=torch.float64))
        if isinstance(getattr(head, "bias", None), torch.Tensor):
            head.bias.copy_(torch.tensor([0.25, -0.75]))
            state["bias"] = torch.tensor([0.25, -0.75], dtype=torch.float64)
        if isinstance(getattr(head, "t", None), torch.Tensor):
            head.t.fill_(0.3)
            state["t"] = 0.3
        if isinstance(getattr(head, "batch_mean", None), torch.Tensor):
            head.batch_mean.fill_(40.0)
            head.batch_std.fill_(30.0)
            state["batch_mean"], state["batch_std"] = 40.0, 30.0
    x = torch.tensor(
        [
            [n * math.cos(math.radians(a)), n * math.sin(math.radians(a))]
            for a, n in zip(EMBEDDING_ANGLES, EMBEDDING_NORMS, strict=True)
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor(KNOWN_LABELS) if with_labels else None
    # The angles are known exactly; no cosine is computed from the vectors here.
    theta = torch.tensor(
        [
            [math.radians(min(angular_distance(a, c) for c in angles[:k])) for angles in CLASS_ANGLES]
            for a in EMBEDDING_ANGLES
        ],
        dtype=torch.float64,
    )
    expected = reference_logits(
        name,
        hp,
        theta,
        torch.tensor(EMBEDDING_NORMS, dtype=torch.float64),
        torch.tensor(CLASS_NORMS, dtype=torch.float64),
        labels,
        state,
    )
    torch.testing.assert_close(head.logits(x, labels), expected, rtol=1e-9, atol=1e-9)


def unit_embeddings(angles_rad, norm: float = 1.0) -> torch.Tensor:
    angles = torch.as_tensor(angles_rad, dtype=torch.float64)
    return norm * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def two_class_head(name: str, **kwargs):
    """A float64 head in 2-D with class 0 along 0° and class 1 along 90° (all sub-centres on them), unit rows."""
    head = create_head(name, embedding_size=2, num_classes=2, **kwargs).double()
    k = head.weight.shape[0] // 2
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]] * k + [[0.0, 1.0]] * k, dtype=torch.float64))
        if isinstance(getattr(head, "bias", None), torch.Tensor):
            head.bias.zero_()
    return head


def test_arcface_continuation_known_values():
    """Beyond θ + m = π, ArcFace continues as s (cos θ + cos m − 1), equal to −s at θ = π − m."""
    head = two_class_head("arcface", scale=64.0, margin=0.5).eval()
    angles = [math.radians(170.0), PI - 0.5, math.radians(120.0)]
    logits = head.logits(unit_embeddings(angles), torch.zeros(3, dtype=torch.long))[:, 0]
    expected = torch.tensor(
        [
            64.0 * (math.cos(math.radians(170.0)) + math.cos(0.5) - 1.0),
            -64.0,
            64.0 * math.cos(math.radians(120.0) + 0.5),
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


def test_combined_continuation_known_values():
    """θ* = (π − m2)/m1: value s(−1 − m3) there, s(cos θ − cos θ* − 1 − m3) beyond."""
    m1, m2, m3 = 1.5, 0.3, 0.2
    theta_star = (PI - m2) / m1
    head = two_class_head("combined", scale=10.0, m1=m1, m2=m2, m3=m3).eval()
    angles = [theta_star, math.radians(150.0), math.radians(60.0)]
    logits = head.logits(unit_embeddings(angles), torch.zeros(3, dtype=torch.long))[:, 0]
    expected = torch.tensor(
        [
            10.0 * (-1.0 - m3),
            10.0 * (math.cos(math.radians(150.0)) - math.cos(theta_star) - 1.0 - m3),
            10.0 * (math.cos(m1 * math.radians(60.0) + m2) - m3),
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


def test_arcface_easy_margin_known_values():
    """easy_margin: cos(θ + m) while cos θ > 0, plain cos θ beyond 90°."""
    head = two_class_head("arcface", scale=2.0, margin=0.4, easy_margin=True).eval()
    angles = [math.radians(30.0), math.radians(100.0), math.radians(175.0)]
    logits = head.logits(unit_embeddings(angles), torch.zeros(3, dtype=torch.long))[:, 0]
    expected = 2.0 * torch.tensor(
        [math.cos(math.radians(30.0) + 0.4), math.cos(math.radians(100.0)), math.cos(math.radians(175.0))],
        dtype=torch.float64,
    )
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


# One angle in each branch k = 0..3 of ψ for m = 4, with ψ written out by hand.
PSI_M4_ANGLES_DEG = [20.0, 60.0, 100.0, 160.0]
PSI_M4_VALUES = [
    math.cos(math.radians(80.0)),  # k=0: cos 4θ
    -math.cos(math.radians(240.0)) - 2.0,  # k=1: −cos 4θ − 2 = −1.5
    math.cos(math.radians(400.0)) - 4.0,  # k=2: cos 4θ − 4
    -math.cos(math.radians(640.0)) - 6.0,  # k=3: −cos 4θ − 6
]


@pytest.mark.parametrize("lambda_", [0.0, 1.0])
def test_sphereface_psi_every_branch(lambda_):
    head = two_class_head("sphereface", margin=4, lambda_=lambda_).eval()
    angles = [math.radians(a) for a in PSI_M4_ANGLES_DEG]
    x = unit_embeddings(angles, norm=3.0)
    logits = head.logits(x, torch.zeros(4, dtype=torch.long))
    expected_true = torch.tensor(
        [3.0 * (lambda_ * math.cos(a) + psi) / (1.0 + lambda_) for a, psi in zip(angles, PSI_M4_VALUES, strict=True)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(logits[:, 0], expected_true, rtol=1e-9, atol=1e-9)
    # The other class keeps ‖x‖ cos θ (class 1 lies at 90°).
    expected_other = torch.tensor([3.0 * math.cos(math.radians(90.0) - a) for a in angles], dtype=torch.float64)
    torch.testing.assert_close(logits[:, 1], expected_other, rtol=1e-9, atol=1e-9)


def test_lsoftmax_psi_every_branch_with_weight_norms():
    head = create_head("lsoftmax", embedding_size=2, num_classes=2, margin=4).double().eval()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64))
    angles = [math.radians(a) for a in PSI_M4_ANGLES_DEG]
    x = unit_embeddings(angles, norm=3.0)
    logits = head.logits(x, torch.zeros(4, dtype=torch.long))
    expected_true = torch.tensor([2.0 * 3.0 * psi for psi in PSI_M4_VALUES], dtype=torch.float64)
    torch.testing.assert_close(logits[:, 0], expected_true, rtol=1e-9, atol=1e-9)
    expected_other = torch.tensor([0.5 * 3.0 * math.sin(a) for a in angles], dtype=torch.float64)  # W_1·x
    torch.testing.assert_close(logits[:, 1], expected_other, rtol=1e-9, atol=1e-9)
    # Inference: plain W_j·x.
    torch.testing.assert_close(head.logits(x), x @ head.weight.detach().T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", all_names())
def test_true_class_logit_is_continuous_and_strictly_decreasing_in_theta(name):
    """On [0, π] the true-class logit falls strictly and without jumps (ψ, the continuation rules, ...)."""
    hyperparameters(name, "defaults")
    head = two_class_head(name).eval()
    step = PI / 2000
    angles = torch.arange(0, 2001, dtype=torch.float64) * step
    norm = 60.0 if name == "magface" else 1.0
    logits = head.logits(unit_embeddings(angles, norm), torch.zeros(len(angles), dtype=torch.long))[:, 0]
    diffs = logits.diff()
    assert (diffs < 0).all(), f"not strictly decreasing at θ = {angles[1:][diffs >= 0][:5].tolist()}"
    # Continuous: every step is bounded by the largest slope the formulas allow (4 for ψ with m=4), times scale.
    scale = DEFAULTS[name]["scale"] if name in SCALED_HEADS else norm  # rows have unit norm
    bound = 4.0 * scale * step * 1.01
    assert diffs.abs().max() <= bound, f"jump of {diffs.abs().max():.4f} > {bound:.4f}"


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("config", ["defaults", "custom"])
@pytest.mark.parametrize("name", all_names())
def test_loss_is_cross_entropy_of_reference_logits(name, config, training):
    generator = torch.Generator().manual_seed(3)
    head, hp = build(name, config)
    head = head.double().train(training)
    randomize(head, generator)
    x, labels = random_batch(generator)
    loss = head(x, labels)
    assert loss.ndim == 0
    # Buffers are updated before the logits are computed, so the reference uses their values after the call.
    expected = F.cross_entropy(reference_from_head(name, hp, head, x, labels), labels)
    expected = expected + reference_regularizer(name, hp, x.norm(dim=1))
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)


def test_magface_regularizer_by_hand():
    """loss − CE = λ_g · mean(1/a + a/u²) with a = clamp(‖x‖, l, u): norms 5 (clamped to 10), 50, 200 (to 110)."""
    head = create_head("magface", embedding_size=2, num_classes=2).double().eval()
    x = unit_embeddings([0.3, 1.0, 2.0]) * torch.tensor([[5.0], [50.0], [200.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    regularizer = 35.0 * ((1 / 10 + 10 / 110**2) + (1 / 50 + 50 / 110**2) + (1 / 110 + 110 / 110**2)) / 3
    cross_entropy = F.cross_entropy(head.logits(x, labels), labels)
    torch.testing.assert_close(head(x, labels) - cross_entropy, torch.tensor(regularizer, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# Hyperparameters are plain attributes (schedulers / callbacks change them between steps)
# ---------------------------------------------------------------------------------------------------------------

MUTATIONS = [
    ("normface", {"scale": 7.0}),
    ("cosface", {"scale": 20.0, "margin": 0.1}),
    ("arcface", {"scale": 20.0, "margin": 0.2}),
    ("combined", {"m1": 1.2, "m2": 0.1, "m3": 0.3}),
    ("sphereface", {"margin": 3, "lambda_": 2.0}),
    ("lsoftmax", {"margin": 2, "lambda_": 0.5}),
    ("subcenter_arcface", {"scale": 10.0, "margin": 0.1}),
    ("curricularface", {"scale": 10.0, "margin": 0.2}),
    ("adaface", {"scale": 10.0, "margin": 0.2}),
    ("magface", {"scale": 10.0}),
]


@pytest.mark.parametrize(("name", "changes"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_changing_hyperparameter_attributes_changes_the_logits(name, changes):
    generator = torch.Generator().manual_seed(4)
    head, hp = build(name)
    head = head.double().eval()
    randomize(head, generator)
    x, labels = random_batch(generator)
    for key, value in changes.items():
        setattr(head, key, value)
    hp = {**hp, **changes}
    torch.testing.assert_close(head.logits(x, labels), reference_from_head(name, hp, head, x, labels))


# ---------------------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------------------


def gradcheck_batch(name: str, generator: torch.Generator):
    """Small float64 batch away from cos θ = ±1 and from the kinks; norms inside MagFace's [l, u]."""
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * torch.linspace(1.5, 4.0, 6, dtype=torch.float64)[:, None]
    if name == "magface":
        x = x * 15.0
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    return x, labels


@pytest.mark.parametrize("name", all_names())
def test_gradcheck(name):
    hyperparameters(name, "defaults")
    generator = torch.Generator().manual_seed(5)
    head = create_head(name, embedding_size=4, num_classes=3).double().eval()
    randomize(head, generator)
    x, labels = gradcheck_batch(name, generator)
    param_names = [key for key, _ in head.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in head.named_parameters()]

    def loss_fn(embeddings, *weights):
        return functional_call(head, dict(zip(param_names, weights, strict=True)), (embeddings, labels))

    if name == "adaface":
        # AdaFace stops the gradient through ‖x‖ (a numeric derivative would see it): check the parameters with
        # gradcheck, and the embeddings' gradient against autograd on the reference. Statistics chosen so that ẑ
        # stays inside (−1, 1), where a gradient through the norm would show.
        with torch.no_grad():
            head.batch_mean.fill_(3.0)
            head.batch_std.fill_(1.0)
        x_const = x.clone()
        assert torch.autograd.gradcheck(lambda *w: loss_fn(x_const, *w), params)
        x_grad = x.clone().requires_grad_(True)
        head(x_grad, labels).backward()
        x_ref = x.clone().requires_grad_(True)
        hp = {**DEFAULTS[name]}
        theta, x_norm, _ = angles_from_vectors(name, hp, x_ref, head.weight.detach())
        ref_loss = F.cross_entropy(reference_logits(name, hp, theta, x_norm, None, labels, head_state(head)), labels)
        ref_loss.backward()
        torch.testing.assert_close(x_grad.grad, x_ref.grad)
        return
    x = x.requires_grad_(True)
    assert torch.autograd.gradcheck(loss_fn, (x, *params))
    assert torch.autograd.gradcheck(lambda e: head.logits(e, labels), (x,))


def parallel_batch(head: torch.nn.Module, name: str, dtype: torch.dtype):
    """Embeddings exactly parallel / antiparallel to their own class row (cos θ = ±1), and one along another class.

    Rows are bf16/fp16-exact so the cosines are ±1 up to rounding in every precision.
    """
    k = head.weight.shape[0] // 3
    class_rows = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.5, -0.25, 0.75, 0.125]])
    rows = []
    for j in range(3):
        rows.append(class_rows[j])
        for extra in range(1, k):  # distinct, farther sub-centres
            rows.append(torch.tensor([0.0, 0.0, (-1.0) ** extra, 0.5 * extra]))
    with torch.no_grad():
        head.weight.copy_(torch.stack(rows))
    factor = 20.0 if name == "magface" else 1.0
    x = torch.stack(
        [
            2.0 * factor * class_rows[0],
            -3.0 * factor * class_rows[1],
            3.0 * factor * class_rows[2],
            -2.0 * factor * class_rows[2],
            factor * class_rows[0],
        ]
    ).to(dtype)
    labels = torch.tensor([0, 1, 2, 2, 1])
    return x.requires_grad_(True), labels


PRECISIONS = {
    "fp32": (torch.float32, None),
    "bf16-autocast": (torch.bfloat16, torch.bfloat16),
    "fp16-autocast": (torch.float16, torch.float16),
}


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("name", all_names())
def test_gradients_finite_at_cos_plus_minus_one(name, precision):
    hyperparameters(name, "defaults")
    dtype, autocast_dtype = PRECISIONS[precision]
    head = create_head(name, embedding_size=4, num_classes=3).train()
    x, labels = parallel_batch(head, name, dtype)
    context = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else torch.autocast("cpu", enabled=False)
    with context:
        logits = head.logits(x, labels)
        loss = head(x, labels)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all(), x.grad
    assert torch.isfinite(head.weight.grad).all(), head.weight.grad


@pytest.mark.parametrize("name", all_names())
def test_zero_embedding_row_gives_finite_loss_and_gradients(name):
    """An all-zero embedding (e.g. a dead ReLU backbone output) is finite input and must not produce NaN."""
    hyperparameters(name, "defaults")
    head = create_head(name, embedding_size=4, num_classes=3).train()
    x = torch.randn(3, 4)
    x[1] = 0.0
    x.requires_grad_(True)
    loss = head(x, torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(head.weight.grad).all()
    assert torch.isfinite(head.logits(x.detach())).all()


@pytest.mark.parametrize("name", all_names())
def test_training_batch_of_one_keeps_buffers_finite(name):
    """A last batch of one sample: the unbiased std of one norm is undefined, yet loss and buffers stay finite."""
    hyperparameters(name, "defaults")
    head = create_head(name, embedding_size=4, num_classes=3).train()
    loss = head(torch.randn(1, 4), torch.tensor([2]))
    assert torch.isfinite(loss)
    for key, buffer in head.named_buffers():
        assert torch.isfinite(buffer).all(), key


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", all_names())
def test_autocast_logits_are_float32_and_exact(name, autocast_dtype):
    """Under autocast the head still computes in float32: same logits as without autocast.

    A bf16 matmul would be off by ~1e-2 in cos θ, i.e. ~0.5 in a scale-64 logit.
    """
    hyperparameters(name, "defaults")
    generator = torch.Generator().manual_seed(6)
    head = create_head(name, embedding_size=16, num_classes=5).eval()
    randomize(head, generator)
    x, labels = random_batch(generator, embedding_size=16)
    x = x.float()
    expected = head.logits(x, labels)
    with torch.autocast("cpu", dtype=autocast_dtype):
        got = head.logits(x, labels)
        got_half = head.logits(x.to(autocast_dtype), labels)
    assert got.dtype == torch.float32
    assert got_half.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_half, head.logits(x.to(autocast_dtype).float(), labels), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Decision boundaries
# ---------------------------------------------------------------------------------------------------------------


def bisect_boundary(head: torch.nn.Module, norm: float = 1.0) -> float:
    """Angle φ of an embedding from class 0 (at 0°; class 1 at 90°) where, labelled 0, both logits are equal."""

    @torch.no_grad()
    def gap(phi: float) -> float:
        logits = head.logits(unit_embeddings([phi], norm), torch.zeros(1, dtype=torch.long))
        return float(logits[0, 0] - logits[0, 1])

    low, high = 0.0, PI / 2
    assert gap(low) > 0 > gap(high)
    for _ in range(80):
        middle = (low + high) / 2
        low, high = (middle, high) if gap(middle) > 0 else (low, middle)
    return (low + high) / 2


def combined_boundary(m2: float, m3: float) -> float:
    """cos(φ + m2) − m3 = cos(π/2 − φ) solved by hand for m1 = 1: φ = π/4 − m2/2 − asin(m3 / (2 sin(π/4 + m2/2)))."""
    return PI / 4 - m2 / 2 - math.asin(m3 / (2 * math.sin(PI / 4 + m2 / 2)))


MAGFACE_MARGIN_AT_60 = (0.8 - 0.45) / (110 - 10) * (60 - 10) + 0.45
BOUNDARIES = [
    # (name, kwargs, embedding norm, boundary angle φ from class 0 predicted by the paper)
    ("softmax", {}, 1.0, PI / 4),  # θ1 = θ2
    ("modified_softmax", {}, 1.0, PI / 4),
    ("normface", {}, 1.0, PI / 4),
    ("arcface", {"margin": 0.5}, 1.0, (PI / 2 - 0.5) / 2),  # θ1 + m = θ2
    ("arcface", {"margin": 0.3}, 1.0, (PI / 2 - 0.3) / 2),
    ("subcenter_arcface", {"margin": 0.5}, 1.0, (PI / 2 - 0.5) / 2),
    ("cosface", {"margin": 0.35}, 1.0, math.acos(0.35 / math.sqrt(2)) - PI / 4),  # cos θ1 − m = cos θ2
    ("cosface", {"margin": 0.1}, 1.0, math.acos(0.1 / math.sqrt(2)) - PI / 4),
    ("sphereface", {"margin": 4}, 1.0, PI / 10),  # m θ1 = θ2 = π/2 − θ1
    ("sphereface", {"margin": 2}, 1.0, PI / 6),
    ("lsoftmax", {"margin": 4}, 1.0, PI / 10),
    ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2}, 1.0, combined_boundary(0.3, 0.2)),
    ("combined", {"m1": 1.0, "m2": 0.0, "m3": 0.35}, 1.0, math.acos(0.35 / math.sqrt(2)) - PI / 4),
    ("combined", {"m1": 2.0, "m2": 0.0, "m3": 0.0}, 1.0, PI / 6),  # 2 θ1 = θ2
    ("magface", {}, 60.0, (PI / 2 - MAGFACE_MARGIN_AT_60) / 2),  # ArcFace with m(a)
    ("adaface", {"margin": 0.4}, 1.0, math.acos(0.4 / math.sqrt(2)) - PI / 4),  # ẑ = 0: CosFace with m
]


@pytest.mark.parametrize(("name", "kwargs", "norm", "expected"), BOUNDARIES, ids=[f"{b[0]}-{b[1]}" for b in BOUNDARIES])
def test_decision_boundary_matches_the_paper(name, kwargs, norm, expected):
    head = two_class_head(name, **kwargs)
    if name == "adaface":
        # ẑ = (‖x‖ − μ)/(σ + 1e-3) · h = 0 for unit embeddings: g_angle = 0, g_add = m; eval keeps the buffers.
        with torch.no_grad():
            head.batch_mean.fill_(1.0)
            head.batch_std.fill_(1.0)
        head.eval()
    else:
        head.train()
    if name in ("normface", "cosface", "arcface", "subcenter_arcface", "combined", "magface"):
        head.scale = 100.0  # a large scale, as in training; the boundary does not depend on it
    assert bisect_boundary(head, norm) == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# Running buffers
# ---------------------------------------------------------------------------------------------------------------


def test_curricularface_t_follows_the_ema_and_eval_freezes_it():
    generator = torch.Generator().manual_seed(7)
    head = create_head("curricularface", embedding_size=3, num_classes=5, momentum=0.1).double()
    assert float(head.t) == 0.0
    randomize(head, generator)
    with torch.no_grad():
        head.t.zero_()
    x, labels = random_batch(generator)
    cos_y = ((x @ head.weight.detach().T) / (x.norm(dim=1)[:, None] * head.weight.detach().norm(dim=1)))[
        torch.arange(BATCH), labels
    ]
    head.train()
    head(x, labels)
    expected = 0.1 * cos_y.mean()
    torch.testing.assert_close(head.t.double().reshape(()), expected)
    head(x, labels)
    expected = 0.9 * expected + 0.1 * cos_y.mean()
    torch.testing.assert_close(head.t.double().reshape(()), expected)
    head.eval()
    head(x, labels)
    head.logits(x, labels)
    torch.testing.assert_close(head.t.double().reshape(()), expected)


def test_adaface_norm_statistics_follow_the_ema_and_eval_freezes_them():
    generator = torch.Generator().manual_seed(8)
    head = create_head("adaface", embedding_size=3, num_classes=5, momentum=0.2).double()
    assert float(head.batch_mean) == 20.0
    assert float(head.batch_std) == 100.0
    x, labels = random_batch(generator)  # norms up to 150: clamped to 100
    norms = x.norm(dim=1).clamp(0.001, 100.0)
    head.train()
    head(x, labels)
    mean = 0.8 * 20.0 + 0.2 * norms.mean()
    std = 0.8 * 100.0 + 0.2 * norms.std(unbiased=True)
    torch.testing.assert_close(head.batch_mean.double().reshape(()), mean)
    torch.testing.assert_close(head.batch_std.double().reshape(()), std)
    head(x, labels)
    mean = 0.8 * mean + 0.2 * norms.mean()
    std = 0.8 * std + 0.2 * norms.std(unbiased=True)
    torch.testing.assert_close(head.batch_mean.double().reshape(()), mean)
    torch.testing.assert_close(head.batch_std.double().reshape(()), std)
    head.eval()
    head(x, labels)
    head.logits(x, labels)
    torch.testing.assert_close(head.batch_mean.double().reshape(()), mean)
    torch.testing.assert_close(head.batch_std.double().reshape(()), std)


@pytest.mark.parametrize("name", ["curricularface", "adaface"])
def test_buffers_are_saved_in_the_state_dict(name):
    head = create_head(name, embedding_size=3, num_classes=5)
    keys = {"curricularface": {"t"}, "adaface": {"batch_mean", "batch_std"}}[name]
    assert keys <= set(head.state_dict())


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_label", [-1, 4])
@pytest.mark.parametrize("name", all_names())
def test_labels_out_of_range_raise(name, bad_label):
    head = create_head(name, embedding_size=3, num_classes=4)
    x = torch.randn(3, 3)
    labels = torch.tensor([0, bad_label, 1])
    with pytest.raises(ValueError, match=r"(?i)label") as info:
        head(x, labels)
    assert "4" in str(info.value)
    with pytest.raises(ValueError, match=r"(?i)label"):
        head.logits(x, labels)


@pytest.mark.parametrize("name", all_names())
def test_wrong_embedding_width_raises(name):
    head = create_head(name, embedding_size=3, num_classes=4)
    with pytest.raises(ValueError, match="3") as info:
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    assert "5" in str(info.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", all_names())
def test_non_finite_embeddings_raise(name, value):
    head = create_head(name, embedding_size=3, num_classes=4)
    x = torch.randn(3, 3)
    x[1, 2] = value
    with pytest.raises(ValueError, match=r"(?i)nan|inf|finite"):
        head(x, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("name", ["sphereface", "lsoftmax"])
@pytest.mark.parametrize("margin", [2.5, 0, -1])
def test_sphereface_margin_must_be_a_positive_integer(name, margin):
    with pytest.raises(ValueError, match="margin"):
        create_head(name, embedding_size=3, num_classes=4, margin=margin)


@pytest.mark.parametrize("scale", [0.0, -1.0])
@pytest.mark.parametrize("name", SCALED_HEADS)
def test_non_positive_scale_raises(name, scale):
    with pytest.raises(ValueError, match="scale"):
        create_head(name, embedding_size=3, num_classes=4, scale=scale)
