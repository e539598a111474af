"""A head is its documented pieces: sharded, chunked and Partial FC give every registered head's own loss and
gradients, and so they do for a head a user registers with ``@register_head`` without touching the engine.

The user's head (``UserHead`` in tests/scripts/parallel_heads_contract.py) overrides only MarginHead's public
pieces; its one-device loss is first checked against its formula written out here, then every path against it.
Sharded runs on 2 gloo ranks in a subprocess (the script registers the head there too).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_margin.heads import create_head, list_heads, registry
from lightning_margin.parallel import ChunkedMarginHead, PartialFC
from tests.helpers import ROOT, run_rank_script
from tests.scripts.parallel_heads_contract import (
    CALLS,
    NUM_CLASSES,
    USER_HEAD,
    VARIANTS,
    make_problem,
    rank_rows,
    register_user_head,
)

CLOSE = {"rtol": 1e-9, "atol": 1e-10}  # float64 on both sides: only summation order differs
HEADS = [*list_heads(), USER_HEAD]  # the built-in heads at collection time, then the user's


@pytest.fixture(scope="module", autouse=True)
def user_head():
    """Register the user's head for this module's tests only, so other tests' ``list_heads()`` never see it."""
    register_user_head()
    yield USER_HEAD
    registry._HEADS.pop(USER_HEAD)  # no public unregister: a registered head is meant to stay
    assert USER_HEAD not in list_heads()


def calls(loss_fn, head, embeddings, labels) -> list[dict]:
    """``CALLS`` training-mode forward+backward passes: loss, embedding and parameter gradients, buffers after."""
    results = []
    for _ in range(CALLS):
        x = embeddings.clone().requires_grad_()
        head.zero_grad()
        loss = loss_fn(x, labels)
        loss.backward()
        results.append(
            {
                "loss": loss.detach(),
                "embedding_grad": x.grad,
                "grads": {n: p.grad.clone() for n, p in head.named_parameters()},
                "buffers": {n: b.clone() for n, b in head.named_buffers()},
            }
        )
    return results


def assert_same(got: list[dict], expected: list[dict], rows: slice = slice(None), classes: slice = slice(None)):
    for call, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        where = f"call {call}"
        torch.testing.assert_close(mine["loss"], theirs["loss"], **CLOSE, msg=f"{where}: loss")
        torch.testing.assert_close(mine["embedding_grad"], theirs["embedding_grad"][rows], **CLOSE, msg=where)
        assert mine["grads"].keys() == theirs["grads"].keys()
        for key, grad in theirs["grads"].items():
            k = grad.shape[0] // NUM_CLASSES
            expected_rows = grad[classes.start * k : classes.stop * k] if classes.start is not None else grad
            torch.testing.assert_close(mine["grads"][key], expected_rows, **CLOSE, msg=f"{where}: gradient of {key}")
        for key, buffer in theirs["buffers"].items():
            torch.testing.assert_close(mine["buffers"][key], buffer, **CLOSE, msg=f"{where}: buffer {key}")


def plain_calls(name: str) -> list[dict]:
    head, embeddings, labels = make_problem(name)
    return calls(head, head, embeddings, labels)


def test_the_user_head_computes_its_own_formula_on_one_device():
    head, embeddings, labels = make_problem(USER_HEAD)
    s, m, shift = head.scale, head.margin, head.shift
    weight = head.weight.detach().clone().requires_grad_()
    mean_cos = 0.0
    for call in plain_calls(USER_HEAD):
        x = embeddings.clone().requires_grad_()
        cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
        true_cos = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
        mean_cos = 0.5 * mean_cos + 0.5 * float(true_cos.detach().mean())  # updated before the logits
        target = s * (true_cos - m * (1 + mean_cos) / 2)
        others = torch.where(s * cos > target.detach().unsqueeze(1), s * cos + s * shift, s * cos)
        logits = others.scatter(1, labels.unsqueeze(1), target.unsqueeze(1))
        loss = F.cross_entropy(logits, labels)
        embedding_grad, weight_grad = torch.autograd.grad(loss, (x, weight))
        torch.testing.assert_close(call["loss"], loss.detach(), **CLOSE)
        torch.testing.assert_close(call["embedding_grad"], embedding_grad, **CLOSE)
        torch.testing.assert_close(call["grads"]["weight"], weight_grad, **CLOSE)
        torch.testing.assert_close(call["buffers"]["mean_cos"], torch.tensor(mean_cos, dtype=torch.float64), **CLOSE)
    assert bool((others.detach() > s * cos.detach()).any())  # the hard-negative penalty took part


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("chunk_size", [1, 4])
def test_chunked_gives_the_heads_own_loss_gradients_and_statistics(name, chunk_size):
    head, embeddings, labels = make_problem(name)
    got = calls(ChunkedMarginHead(head, chunk_size=chunk_size), head, embeddings, labels)
    assert_same(got, plain_calls(name))


@pytest.mark.parametrize("name", HEADS)
def test_partial_fc_at_rate_one_gives_the_heads_own_loss_gradients_and_statistics(name):
    head, embeddings, labels = make_problem(name)
    partial = PartialFC(head, sample_rate=1.0)
    got = calls(partial, head, embeddings, labels)
    assert partial.sampled_classes is None
    assert_same(got, plain_calls(name))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    outdir = tmp_path_factory.mktemp("heads_contract")
    script = ROOT / "tests/scripts/parallel_heads_contract.py"
    return run_rank_script(script, outdir, timeout=240, weights_only=False)


@pytest.mark.parametrize("wrapper", [wrapper for wrapper, _ in VARIANTS])
@pytest.mark.parametrize("name", HEADS)
def test_two_ranks_give_the_heads_own_loss_gradients_and_statistics(ranks, name, wrapper):
    expected = plain_calls(name)
    for rank, (start, end) in enumerate([(0, 6), (6, 11)]):
        result = ranks[rank][(name, wrapper)]
        assert result["class_range"] == (start, end)
        assert_same(result["calls"], expected, rows=rank_rows(rank), classes=slice(start, end))


def test_the_user_head_is_built_by_name_through_the_registry():
    head = create_head(USER_HEAD, embedding_size=4, num_classes=3)
    assert type(head).__name__ == "UserHead" and head.head_name == USER_HEAD
