"""Partial FC: sampling keeps the positives and is uniform over negatives; rate 1 is the full head; the sampled
loss is the softmax over the sampled columns; unsampled rows get no gradient and keep a consistent optimizer state."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_margin.heads import ArcFace, create_head
from lightning_margin.parallel import PartialFC
from lightning_margin.parallel.functional import num_sampled_classes, sample_classes

CLOSE = {"rtol": 1e-9, "atol": 1e-10}


def test_sampling_keeps_every_positive_and_fills_up_with_distinct_negatives():
    generator = torch.Generator().manual_seed(0)
    positives = torch.tensor([5, 97, 5, 42])
    index = sample_classes(positives, num_classes=100, sample_rate=0.1, generator=generator)
    assert len(index) == 10 and index.unique().numel() == 10
    assert torch.equal(index, index.sort().values)
    assert {5, 42, 97} <= set(index.tolist())
    assert index.min() >= 0 and index.max() < 100


def test_more_positives_than_the_sample_are_all_kept_and_rate_one_keeps_everything():
    positives = torch.arange(0, 40, 2)  # 20 distinct classes, more than 10% of 100
    assert sample_classes(positives, 100, 0.1).tolist() == list(range(0, 40, 2))
    assert sample_classes(torch.tensor([3]), 7, 1.0).tolist() == list(range(7))
    assert num_sampled_classes(1000, 0.1) == 100 and num_sampled_classes(1001, 0.1) == 101
    assert num_sampled_classes(5, 0.01) == 1


def test_negatives_are_drawn_uniformly():
    generator = torch.Generator().manual_seed(1)
    counts = torch.zeros(50)
    draws = 2000
    for _ in range(draws):
        counts[sample_classes(torch.tensor([0]), 50, 0.2, generator=generator)] += 1
    assert counts[0] == draws  # the positive, every time
    # Each of the 49 negatives fills 9 of the 49 free places: p = 9/49; 5 sigma of the binomial.
    p = 9 / 49
    sigma = math.sqrt(draws * p * (1 - p))
    assert (counts[1:] - draws * p).abs().max() < 5 * sigma


@pytest.mark.parametrize("rate", [0.0, -0.5, 1.01, float("nan"), True, "0.1"])
def test_sample_rate_outside_zero_one_is_rejected(rate):
    with pytest.raises(ValueError, match=r"`sample_rate` must lie in \(0, 1\]"):
        PartialFC("arcface", embedding_size=4, num_classes=10, sample_rate=rate)


@pytest.mark.parametrize("name", ["arcface", "cosface", "subcenter_arcface", "curricularface", "magface", "softmax"])
def test_rate_one_is_exactly_the_full_head(name):
    torch.manual_seed(0)
    full = create_head(name, embedding_size=6, num_classes=20).double()
    partial = PartialFC(create_head(name, embedding_size=6, num_classes=20).double(), sample_rate=1.0)
    partial.head.load_state_dict(full.state_dict())
    embeddings = 3 * torch.randn(7, 6, dtype=torch.float64)
    labels = torch.tensor([0, 19, 4, 4, 11, 2, 8])
    x_full, x_partial = embeddings.clone().requires_grad_(), embeddings.clone().requires_grad_()
    expected = full(x_full, labels)
    expected.backward()
    loss = partial(x_partial, labels)
    loss.backward()
    torch.testing.assert_close(loss, expected, **CLOSE)
    torch.testing.assert_close(x_partial.grad, x_full.grad, **CLOSE)
    for (key, expected), got in zip(full.named_parameters(), partial.head.parameters(), strict=True):
        torch.testing.assert_close(got.grad, expected.grad, **CLOSE, msg=key)
    assert partial.sampled_classes is None


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_sampled_loss_is_the_softmax_over_the_sampled_columns_and_unsampled_rows_get_no_gradient(chunk_size):
    torch.manual_seed(1)
    head = ArcFace(embedding_size=6, num_classes=40, scale=16.0).double()
    partial = PartialFC(head, sample_rate=0.25, chunk_size=chunk_size)
    embeddings = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([3, 3, 17, 29, 0, 39])
    loss = partial(embeddings, labels)
    loss.backward()
    classes = partial.sampled_classes
    assert len(classes) == 10 and set(labels.tolist()) <= set(classes.tolist())

    # Independent reference: the head's own margin logits, restricted to the sampled columns.
    reference_x = embeddings.detach().clone().requires_grad_()
    weight = head.weight.detach().clone().requires_grad_()
    reference_head = ArcFace(embedding_size=6, num_classes=40, scale=16.0).double()
    reference_head.weight = torch.nn.Parameter(weight)
    logits = reference_head.logits(reference_x, labels)[:, classes]
    expected = F.cross_entropy(logits, torch.searchsorted(classes, labels))
    expected.backward()
    torch.testing.assert_close(loss, expected, **CLOSE)
    torch.testing.assert_close(embeddings.grad, reference_x.grad, **CLOSE)
    torch.testing.assert_close(head.weight.grad, reference_head.weight.grad, **CLOSE)
    unsampled = torch.ones(40, dtype=torch.bool)
    unsampled[classes] = False
    assert torch.count_nonzero(head.weight.grad[unsampled]) == 0


def test_optimizer_state_stays_aligned_with_the_rows_across_steps():
    torch.manual_seed(2)
    head = ArcFace(embedding_size=5, num_classes=30, scale=16.0).double()
    partial = PartialFC(head, sample_rate=0.2)
    momentum = 0.9
    optimizer = torch.optim.SGD(partial.parameters(), lr=0.1, momentum=momentum)
    assert [p for p in optimizer.param_groups[0]["params"]] == [head.weight]  # one parameter, never swapped
    previous_weight, previous_buffer = head.weight.detach().clone(), torch.zeros_like(head.weight)
    for step in range(3):
        optimizer.zero_grad()
        labels = torch.tensor([step, step + 10])
        partial(torch.randn(2, 5, dtype=torch.float64), labels).backward()
        grad = head.weight.grad.clone()
        optimizer.step()
        buffer = optimizer.state[head.weight]["momentum_buffer"]
        # SGD's own rule, row by row: the sampled rows use their gradient, the unsampled ones a zero gradient.
        expected_buffer = grad if step == 0 else momentum * previous_buffer + grad
        torch.testing.assert_close(buffer, expected_buffer, **CLOSE)
        torch.testing.assert_close(head.weight.detach(), previous_weight - 0.1 * expected_buffer, **CLOSE)
        unsampled = torch.ones(30, dtype=torch.bool)
        unsampled[partial.sampled_classes] = False
        assert torch.count_nonzero(grad[unsampled]) == 0 and unsampled.sum() == 24
        previous_weight, previous_buffer = head.weight.detach().clone(), buffer.clone()
