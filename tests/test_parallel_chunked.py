"""The memory-lean (chunked) loss equals the plain heads, and never materialises the [batch, classes] logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_margin.functional import angles
from lightning_margin.functional.angles import cosine_logits, target_cosine
from lightning_margin.heads import ArcFace, create_head, list_heads
from lightning_margin.parallel import ChunkedMarginHead, TensorMemoryTracker
from lightning_margin.parallel.functional import chunked_logsumexp
from tests.helpers import MARGIN_REGIME_HEAD_KWARGS

HEAD_KWARGS = MARGIN_REGIME_HEAD_KWARGS
CLOSE = {"rtol": 1e-9, "atol": 1e-10}


def grads_of(head, embeddings, labels, loss_fn):
    embeddings = embeddings.detach().clone().requires_grad_()
    head.zero_grad()
    loss = loss_fn(embeddings, labels)
    loss.backward()
    return loss.detach(), embeddings.grad, {n: p.grad.clone() for n, p in head.named_parameters()}


@pytest.mark.parametrize("name", list_heads())
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 64])
def test_chunked_loss_and_gradients_equal_the_plain_head(name, chunk_size):
    torch.manual_seed(0)
    plain = create_head(name, embedding_size=6, num_classes=13, **HEAD_KWARGS.get(name, {})).double()
    lean_head = create_head(name, embedding_size=6, num_classes=13, **HEAD_KWARGS.get(name, {})).double()
    lean_head.load_state_dict(plain.state_dict())
    lean = ChunkedMarginHead(lean_head, chunk_size=chunk_size)
    embeddings = 4 * torch.randn(9, 6, dtype=torch.float64)
    labels = torch.tensor([0, 12, 3, 3, 7, 12, 1, 5, 6])

    expected = grads_of(plain, embeddings, labels, plain)
    got = grads_of(lean_head, embeddings, labels, lean)
    torch.testing.assert_close(got[0], expected[0], **CLOSE)
    torch.testing.assert_close(got[1], expected[1], **CLOSE)
    assert got[2].keys() == expected[2].keys()
    for key in expected[2]:
        torch.testing.assert_close(got[2][key], expected[2][key], **CLOSE, msg=f"gradient of {key}")
    for (key, buffer), other in zip(plain.named_buffers(), lean_head.buffers(), strict=True):
        torch.testing.assert_close(other, buffer, **CLOSE, msg=f"running buffer {key}")


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 5])
def test_chunked_logsumexp_equals_an_explicit_masked_logsumexp_and_passes_gradcheck(chunk_size):
    torch.manual_seed(1)
    features = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 2, 3, 6, 7])  # a Partial FC sample of 5 of the 8 classes
    excluded = torch.tensor([1, -1, 4, 0, -1])  # rows 1 and 4: nothing left out (their class is elsewhere)
    gather = torch.tensor([2, 5, 7, 0, 1])

    def lean(features, weight, bias):
        lse, (weight_rows, bias_rows) = chunked_logsumexp(
            lambda f, w, b: f @ w.T + b, features, [weight, bias], num_classes=5, chunk_size=chunk_size,
            class_index=index, rows_per_class=[1, 1], exclude_columns=excluded, gather_classes=gather,
        )  # fmt: skip
        # The gathered rows take part in the result, so gradcheck also checks their gradient path.
        return lse + (weight_rows**2).sum(dim=1) + bias_rows

    logits = (features @ weight[index].T + bias[index]).clone()
    for row, column in enumerate(excluded.tolist()):
        if column >= 0:
            logits[row, column] = float("-inf")
    expected = torch.logsumexp(logits, dim=1) + (weight[gather] ** 2).sum(dim=1) + bias[gather]
    torch.testing.assert_close(lean(features, weight, bias), expected, **CLOSE)
    assert torch.autograd.gradcheck(lean, (features, weight, bias))


@pytest.mark.parametrize("save_output", [False, True])
@pytest.mark.parametrize("blocks", [8, 1 << 20])  # elements per block in backward: several blocks, or one
def test_fused_cosine_logits_equal_normalised_products_with_the_same_gradients(monkeypatch, save_output, blocks):
    monkeypatch.setattr(angles, "_BLOCK_ELEMENTS", blocks)  # the kernel lives in lightning_margin.functional
    torch.manual_seed(2)
    embeddings = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 5, dtype=torch.float64)
    weight[3] = 0.0  # a zero row: F.normalize keeps it zero and gives it the gradient of x / eps
    weight.requires_grad_()
    scale = torch.rand(4, dtype=torch.float64) + 0.5
    grad = torch.randn(4, 7, dtype=torch.float64)

    reference = (F.normalize(embeddings, dim=1) * scale.unsqueeze(1)) @ F.normalize(weight, dim=1).T
    expected = torch.autograd.grad(reference, (embeddings, weight), grad)
    features = F.normalize(embeddings, dim=1) * scale.unsqueeze(1)
    fused = angles._CosineLogits.apply(features, weight, save_output)
    torch.testing.assert_close(fused, reference, **CLOSE)
    for got, want in zip(torch.autograd.grad(fused, (embeddings, weight), grad), expected, strict=True):
        torch.testing.assert_close(got, want, **CLOSE)
    nonzero = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    fused_fn = angles._CosineLogits.apply
    leaf = features.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: fused_fn(x, w, save_output), (leaf, nonzero))
    torch.testing.assert_close(cosine_logits(embeddings, weight, scale), reference, **CLOSE)


def test_sparse_row_target_cosine_equals_the_dense_formula_and_accumulates_into_a_dense_gradient():
    torch.manual_seed(4)
    embeddings = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 8, 8, 3, 0, 5])  # repeated labels: their row gradients must add up
    expected = (F.normalize(embeddings, dim=1) * F.normalize(weight[labels], dim=1)).sum(dim=1)

    def dense_use():  # a dense path into the same weight, as the cosine logits are
        return (weight**2).sum()

    expected_grads = torch.autograd.grad(expected.sum() + dense_use(), (embeddings, weight))
    got = target_cosine(embeddings, weight, labels)
    torch.testing.assert_close(got, expected, **CLOSE)
    got_grads = torch.autograd.grad(got.sum() + dense_use(), (embeddings, weight))
    assert not got_grads[1].is_sparse
    for grad, want in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, want, **CLOSE)


def test_the_chunked_loss_never_allocates_the_batch_by_classes_logits():
    # B > D, so the [B, C] logits are the largest tensor of the plain path (bigger than the [C, D] weight).
    batch, embedding_size, num_classes, chunk_size = 64, 16, 4096, 256
    torch.manual_seed(3)
    head = ArcFace(embedding_size, num_classes)
    lean = ChunkedMarginHead(head, chunk_size=chunk_size)
    embeddings = torch.randn(batch, embedding_size, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,))
    logits_bytes = batch * num_classes * 4

    measured = {}
    for mode, loss_fn in (("plain", head), ("chunked", lean)):
        with TensorMemoryTracker() as tracker:
            loss_fn(embeddings, labels).backward()
        measured[mode] = tracker
        head.weight.grad = embeddings.grad = None
    assert measured["plain"].largest_bytes >= logits_bytes  # the measurement does see [B, C] when it exists
    assert measured["chunked"].largest_bytes <= max(batch * chunk_size, num_classes * embedding_size) * 4
    assert measured["chunked"].peak_bytes < 0.5 * measured["plain"].peak_bytes


def test_tensor_memory_tracker_counts_known_allocations():
    with TensorMemoryTracker() as tracker:
        first = torch.zeros(1000)  # 4000 bytes
        view = first[:10]  # a view: no new storage
        second = torch.ones(500, dtype=torch.float64)  # 4000 bytes
        del first, view, second
        third = torch.empty(100, dtype=torch.int16)  # 200 bytes, after the others were freed
    assert tracker.peak_bytes == 8000
    assert tracker.largest_bytes == 4000
    assert tracker.current_bytes == third.nbytes == 200


def test_chunk_size_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="`chunk_size` must be an integer >= 1, got 0"):
        ChunkedMarginHead("arcface", embedding_size=4, num_classes=10, chunk_size=0)
