"""Training with a margin head gives more angularly separated features than plain softmax (issue 2).

A small MLP embeds synthetic Gaussian clusters; the same model, data, seed and optimiser are trained once with the
``softmax`` head and once with each margin head. Margin losses are not comparable in absolute value (they add
margins and scale by 64), so every model is measured in the same units, on L2-normalised embeddings, with class
prototypes (normalised class means of the training embeddings) as the class directions:

* ``min_angle``: the smallest angle between two class prototypes (inter-class separation);
* ``train_loss``: cross-entropy of the cosine logits ``16 · cos(x, prototype_j)`` on the training set, i.e. the
  no-margin loss at one common scale;
* ``heldout_gap``: on held-out data, the mean of (angle to the nearest other prototype − angle to the own one),
  the angular margin the features keep on unseen samples;
* ``heldout_loss`` / ``heldout_accuracy``: the same cosine cross-entropy and nearest-prototype accuracy, held out.

In this tiny regime the margin heads drive the training cosine loss to ~0 and open the class angles by 5-25
degrees, but they also fit the training noise: the held-out cosine loss is not lower for every seed (nor, for
AdaFace, clearly lower on average), so only the slow multi-seed test checks it, as "no worse".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_margin.heads import create_head, list_heads

# Heads with no margin; every other registered head is a margin head and must beat softmax.
NON_MARGIN_HEADS = {"softmax", "modified_softmax", "normface"}
MARGIN_HEADS = [name for name in list_heads() if name not in NON_MARGIN_HEADS]
COMMON_SCALE = 16.0
INPUT_SIZE = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add overhead (30x the CPU time on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Measurement:
    min_angle: float
    train_loss: float
    heldout_gap: float
    heldout_loss: float
    heldout_accuracy: float


@dataclass(frozen=True)
class Setup:
    num_classes: int
    embedding_size: int
    per_class: int
    spread: float
    steps: int


FAST = Setup(num_classes=8, embedding_size=16, per_class=32, spread=0.7, steps=200)
THOROUGH = Setup(num_classes=16, embedding_size=32, per_class=64, spread=0.7, steps=400)


def gaussian_clusters(setup: Setup, seed: int):
    """Class centres ~ N(0, I) in 16-D, samples = centre + spread · N(0, I); disjoint train and held-out draws."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(setup.num_classes, INPUT_SIZE, generator=generator)

    def draw():
        labels = torch.arange(setup.num_classes).repeat_interleave(setup.per_class)
        return centres[labels] + setup.spread * torch.randn(len(labels), INPUT_SIZE, generator=generator), labels

    return draw(), draw()


def anneal_lambda(step: int) -> float:
    """SphereFace / L-Softmax's λ = max(λ_min, base · (1 + γ·step)^−power), compressed to a short run.

    Without it the m=4 margin is too hard to start from (both papers anneal); it ends near λ = 2.
    """
    return max(0.0, 1000.0 * (1.0 + 0.1 * step) ** -2)


def train_and_measure(name: str, setup: Setup, seed: int) -> Measurement:
    (x_train, y_train), (x_test, y_test) = gaussian_clusters(setup, seed)
    torch.manual_seed(seed)  # same initial MLP for every head
    model = nn.Sequential(nn.Linear(INPUT_SIZE, 64), nn.ReLU(), nn.Linear(64, setup.embedding_size))
    head = create_head(name, embedding_size=setup.embedding_size, num_classes=setup.num_classes)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-2)
    head.train()
    for step in range(setup.steps):
        if hasattr(head, "lambda_"):
            head.lambda_ = anneal_lambda(step)
        loss = head(model(x_train), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        train_embeddings = F.normalize(model(x_train), dim=1)
        test_embeddings = F.normalize(model(x_test), dim=1)
        prototypes = torch.stack([train_embeddings[y_train == c].mean(dim=0) for c in range(setup.num_classes)])
        prototypes = F.normalize(prototypes, dim=1)
        between = (prototypes @ prototypes.T).clamp(-1.0, 1.0)
        off_diagonal = ~torch.eye(setup.num_classes, dtype=torch.bool)
        min_angle = math.degrees(math.acos(float(between[off_diagonal].max())))

        train_cos = train_embeddings @ prototypes.T
        test_cos = test_embeddings @ prototypes.T
        angles = torch.rad2deg(torch.acos(test_cos.clamp(-1.0, 1.0)))
        own = angles.gather(1, y_test[:, None]).squeeze(1)
        nearest_other = angles.masked_fill(F.one_hot(y_test, setup.num_classes).bool(), math.inf).min(dim=1).values
        return Measurement(
            min_angle=min_angle,
            train_loss=float(F.cross_entropy(COMMON_SCALE * train_cos, y_train)),
            heldout_gap=float((nearest_other - own).mean()),
            heldout_loss=float(F.cross_entropy(COMMON_SCALE * test_cos, y_test)),
            heldout_accuracy=float((test_cos.argmax(dim=1) == y_test).float().mean()),
        )


@pytest.fixture(scope="module")
def softmax_fast() -> Measurement:
    return train_and_measure("softmax", FAST, seed=0)


def test_softmax_baseline_learns(softmax_fast):
    """The comparison means something only if the baseline itself learned the task."""
    assert softmax_fast.heldout_accuracy > 0.9
    assert softmax_fast.train_loss < 0.1


@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_margin_head_separates_classes_more_than_softmax(name, softmax_fast):
    result = train_and_measure(name, FAST, seed=0)
    assert result.heldout_accuracy > 0.9, result
    # Larger inter-class angles (softmax: ~65 degrees here).
    assert result.min_angle > softmax_fast.min_angle + 3.0, (result, softmax_fast)
    # Lower loss in common units: the no-margin cosine cross-entropy at scale 16 on the training data.
    assert result.train_loss < 0.5 * softmax_fast.train_loss, (result, softmax_fast)
    # The features keep a larger angular margin on held-out samples.
    assert result.heldout_gap > softmax_fast.heldout_gap + 1.0, (result, softmax_fast)


SEEDS = range(5)


def mean_over_seeds(name: str) -> Measurement:
    runs = [train_and_measure(name, THOROUGH, seed) for seed in SEEDS]
    return Measurement(
        *(sum(getattr(run, field) for run in runs) / len(runs) for field in Measurement.__dataclass_fields__)
    )


@pytest.fixture(scope="module")
def softmax_thorough() -> Measurement:
    return mean_over_seeds("softmax")


@pytest.mark.slow
@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_margin_head_beats_softmax_over_seeds(name, softmax_thorough):
    """16 classes, 32-D embeddings, 400 steps, averaged over 5 seeds; the held-out cosine loss is also no worse.

    Measured (mean of 5 seeds): softmax min angle 48.7°, gap 32.7°, held-out loss 0.0678; the margin heads
    72-77°, 44-49°, 0.053-0.067. AdaFace's held-out loss is only ~1% below softmax's, hence the 2% allowance.
    """
    result = mean_over_seeds(name)
    assert result.min_angle > softmax_thorough.min_angle + 5.0, (result, softmax_thorough)
    assert result.train_loss < 0.5 * softmax_thorough.train_loss, (result, softmax_thorough)
    assert result.heldout_gap > softmax_thorough.heldout_gap + 2.0, (result, softmax_thorough)
    assert result.heldout_loss < 1.02 * softmax_thorough.heldout_loss, (result, softmax_thorough)
