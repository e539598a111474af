"""Class-centre sharding over 2 gloo ranks equals the plain head on one process with the global batch.

One subprocess (tests/scripts/parallel_sharded_worker.py) runs every case on 2 ranks under
DistributedDataParallel; the tests here recompute each case in this process with the unsharded heads of
:mod:`lightning_margin.heads` and a plain SGD loop, and compare losses, updated weights, buffers, optimizer state,
checkpoints, logits and error messages.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_margin.parallel import ShardedMarginHead
from tests.helpers import ROOT, run_rank_script
from tests.scripts.parallel_sharded_worker import (
    BATCH_SIZES,
    CASES,
    NUM_CLASSES,
    STEPS,
    make_optimizer,
    make_problem,
    rank_rows,
)

CLOSE = {"rtol": 1e-9, "atol": 1e-10}  # float64 on both sides: only summation order differs


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    outdir = tmp_path_factory.mktemp("sharded")
    return run_rank_script(ROOT / "tests/scripts/parallel_sharded_worker.py", outdir, timeout=240, weights_only=False)


def single_process_run(name: str, options: dict, sampled: list[torch.Tensor | None]):
    """The reference: the full head, the global batch, one process; Partial FC = softmax over the sampled columns."""
    head, backbone, inputs, labels = make_problem(name)
    optimizer = make_optimizer([*backbone.parameters(), *head.parameters()])
    losses = []
    for step in range(STEPS):
        optimizer.zero_grad()
        embeddings, targets = backbone(inputs[step]), labels[step]
        if sampled[step] is None:
            loss = head(embeddings, targets)
        else:
            classes = sampled[step]
            logits = head.logits(embeddings, targets)[:, classes]  # margin on the true column, as in training
            loss = F.cross_entropy(logits, torch.searchsorted(classes, targets))
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses), head, backbone, optimizer, inputs


def case_id(case) -> str:
    name, options = case
    return "-".join([name, *(f"{k}={v}" for k, v in options.items())])


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(case) for case in CASES])
def test_two_rank_training_equals_one_process_with_the_full_head(ranks, index):
    name, options = CASES[index]
    rank0, rank1 = ranks[0]["cases"][index], ranks[1]["cases"][index]
    sampled = [None] * STEPS
    if options.get("sample_rate", 1.0) < 1.0:
        sampled = [torch.cat([rank0["sampled"][step], rank1["sampled"][step]]).sort().values for step in range(STEPS)]
    losses, head, backbone, optimizer, _ = single_process_run(name, options, sampled)

    for result in (rank0, rank1):
        torch.testing.assert_close(result["losses"], losses, **CLOSE, msg="loss differs")
        for key, value in backbone.state_dict().items():
            torch.testing.assert_close(result["backbone"][key], value, **CLOSE, msg=f"backbone {key} differs")
        start, end = result["class_range"]
        rows = head.weight.shape[0] // NUM_CLASSES
        torch.testing.assert_close(result["shard"], head.weight[start * rows : end * rows].detach(), **CLOSE)
        # The checkpoint holds the full weight and every buffer (AdaFace / CurricularFace statistics) in the
        # unsharded head's format.
        assert result["state_dict"].keys() == head.state_dict().keys()
        for key, value in head.state_dict().items():
            torch.testing.assert_close(result["state_dict"][key], value, **CLOSE, msg=f"checkpoint {key} differs")
        head_state = optimizer.state[head.weight]["momentum_buffer"]
        torch.testing.assert_close(result["optimizer"]["state"][2]["momentum_buffer"], head_state, **CLOSE)
    assert rank0["class_range"] == (0, 6) and rank1["class_range"] == (6, 11)
    assert rank0["ignored"] == rank1["ignored"] == [n for n in ("head.head.weight", "head.head.bias") if
                                                    n.split(".")[-1] in dict(head.named_parameters())]  # fmt: skip


@pytest.mark.parametrize("index", [i for i, (_, o) in enumerate(CASES) if o.get("sample_rate", 1.0) < 1.0])
def test_partial_fc_keeps_every_positive_and_samples_its_share_of_each_shard(ranks, index):
    _, options = CASES[index]
    _, _, _, labels = make_problem(CASES[index][0])
    for step in range(STEPS):
        for rank, (start, end) in enumerate([(0, 6), (6, 11)]):
            sampled = ranks[rank]["cases"][index]["sampled"][step]
            positives = {int(y) for y in labels[step] if start <= y < end}
            assert positives <= set(sampled.tolist())
            assert sampled.min() >= start and sampled.max() < end
            assert len(sampled) == max(len(positives), math.ceil(options["sample_rate"] * (end - start)))


def test_sharded_logits_are_the_full_heads_rows(ranks):
    index = next(i for i, (name, options) in enumerate(CASES) if name == "arcface" and not options)
    _, head, backbone, _, inputs = single_process_run("arcface", {}, [None] * STEPS)
    for rank in range(2):
        expected = head.logits(backbone(inputs[0][rank_rows(rank)]))
        torch.testing.assert_close(ranks[rank]["cases"][index]["logits"], expected.detach(), **CLOSE)
        assert ranks[rank]["cases"][index]["logits"].shape == (BATCH_SIZES[rank], NUM_CLASSES)


def test_a_full_checkpoint_reloads_each_ranks_rows_and_momentum(ranks):
    _, head, _, optimizer, _ = single_process_run("arcface", {}, [None] * STEPS)
    momentum = optimizer.state[head.weight]["momentum_buffer"]
    for rank, (start, end) in enumerate([(0, 6), (6, 11)]):
        reloaded = ranks[rank]["reloaded"]
        torch.testing.assert_close(reloaded["weight"], head.weight[start:end].detach(), **CLOSE)
        torch.testing.assert_close(reloaded["momentum"]["momentum_buffer"], momentum[start:end], **CLOSE)


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("label_too_large", f"rank 1: expects labels in [0, {NUM_CLASSES}), got values from 0 to {NUM_CLASSES + 4}"),
        ("negative_label", f"rank 0: expects labels in [0, {NUM_CLASSES}), got values from -1 to 3"),
        ("nan_embedding", "rank 1: got non-finite (NaN or inf) embeddings in 1 of 4 rows"),
        ("wrong_width", "rank 0: expects embeddings of shape [batch, 8]"),
        ("too_few_classes", "cannot shard num_classes=1 over world_size=2 ranks"),
        ("sample_rate_zero", "`sample_rate` must lie in (0, 1]"),
        ("sample_rate_above_one", "`sample_rate` must lie in (0, 1]"),
    ],
)
def test_bad_input_on_one_rank_raises_the_same_error_on_every_rank(ranks, problem, message):
    for rank in range(2):
        assert message in ranks[rank]["errors"][problem]
        assert ranks[rank]["errors"]["alive_ranks"] == "2"  # and no rank was left behind in a collective


def test_a_head_built_by_name_on_each_rank_draws_distinct_rows_and_leaves_the_random_state_alone(ranks):
    first, second = ranks[0]["built"], ranks[1]["built"]
    assert first["weight"].shape == (6, 8) and second["weight"].shape == (5, 8)
    assert not torch.allclose(first["weight"][:5], second["weight"])  # same seed, yet different centres
    torch.manual_seed(5)
    expected = torch.rand(3)  # what the next module would draw had the head not been built
    assert torch.equal(first["next_draw"], expected) and torch.equal(second["next_draw"], expected)


def test_one_process_wraps_the_head_itself_and_a_head_sharded_for_another_world_refuses_to_run():
    head, _, _, labels = make_problem("cosface")
    wrapped = ShardedMarginHead(head)
    assert wrapped.head is head and (wrapped.class_start, wrapped.class_end, wrapped.world_size) == (0, 11, 1)
    embeddings = torch.randn(4, 8, dtype=torch.float64)
    torch.testing.assert_close(wrapped(embeddings, labels[0][:4]), head(embeddings, labels[0][:4]), **CLOSE)
    # Hyperparameters of the wrapped head read and write through the wrapper (for schedulers and callbacks).
    wrapped.margin = 0.2
    assert head.margin == 0.2 and wrapped.margin == 0.2

    offline = ShardedMarginHead(make_problem("cosface")[0]).shard(rank=1, world_size=3)
    assert (offline.class_start, offline.class_end) == (4, 8)
    with pytest.raises(ValueError, match=r"sharded for 3 rank\(s\) but the process group has 1: call `.shard\(\)`"):
        offline(embeddings, labels[0][:4])
