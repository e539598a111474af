"""Verification metrics against independent computations: scikit-learn's ROC/AUC/KFold, brute force, hand-made sets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve
from sklearn.model_selection import KFold

from lightning_margin.metrics import (
    EER,
    TARAtFAR,
    VerificationAccuracy,
    VerificationAUC,
    VerificationMetrics,
    cosine_scores,
    equal_error_rate,
    roc_auc,
    roc_curve,
    tar_at_far,
    tar_at_far_key,
    verification_accuracy,
    verification_metrics,
)


# ------------------------------------------------------------------------------------------------------------------
# Independent reference implementations (numpy / scikit-learn, no code shared with the library)
# ------------------------------------------------------------------------------------------------------------------
def reference_kfold_accuracy(scores: np.ndarray, issame: np.ndarray, num_folds: int) -> dict[str, float]:
    """insightface's protocol by brute force: sklearn KFold(shuffle=False), every candidate threshold tried.

    Candidates, ascending: the set's lowest score (accept all), the midpoint between each two consecutive distinct
    training scores, and the float just above the set's top score (accept none). Accepted: score >= threshold.
    Ties in training accuracy go to the largest candidate.
    """
    accuracies, thresholds = [], []
    for train, test in KFold(n_splits=num_folds, shuffle=False).split(scores):
        distinct = np.unique(scores[train])
        midpoints = distinct[:-1] + (distinct[1:] - distinct[:-1]) / 2
        candidates = [scores.min(), *midpoints, np.nextafter(scores.max(), np.inf)]
        best_accuracy, best_threshold = -1.0, None
        for threshold in candidates:
            accuracy = np.mean((scores[train] >= threshold) == issame[train])
            if accuracy >= best_accuracy:  # ascending candidates: ">=" keeps the largest of tied thresholds
                best_accuracy, best_threshold = accuracy, threshold
        accuracies.append(np.mean((scores[test] >= best_threshold) == issame[test]))
        thresholds.append(best_threshold)
    return {"accuracy": np.mean(accuracies), "accuracy_std": np.std(accuracies), "threshold": np.mean(thresholds)}


def reference_tar_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> float:
    fpr, tpr, _ = sklearn_roc_curve(issame, scores, drop_intermediate=False)
    return float(tpr[fpr <= far + 1e-12].max())


def reference_eer(scores: np.ndarray, issame: np.ndarray) -> float:
    """Walk sklearn's ROC segment by segment; intersect the first one that reaches the line TAR = 1 - FAR."""
    fpr, tpr, _ = sklearn_roc_curve(issame, scores, drop_intermediate=False)
    for x0, y0, x1, y1 in zip(fpr[:-1], tpr[:-1], fpr[1:], tpr[1:], strict=True):
        if x1 + y1 >= 1:  # the end point is on or beyond the anti-diagonal
            t = (1 - x0 - y0) / ((x1 - x0) + (y1 - y0))
            return float(x0 + t * (x1 - x0))
    raise AssertionError("the ROC always reaches (1, 1)")


def random_pairs(num_pairs: int, separation: float = 1.0, seed: int = 0, decimals: int | None = None):
    generator = np.random.default_rng(seed)
    issame = generator.random(num_pairs) < 0.5
    scores = generator.normal(size=num_pairs) + separation * issame
    if decimals is not None:  # coarse scores: many ties
        scores = np.round(scores, decimals)
    return scores, issame


def as_tensors(scores: np.ndarray, issame: np.ndarray, dtype=torch.float64):
    return torch.tensor(scores, dtype=dtype), torch.tensor(issame)


# ------------------------------------------------------------------------------------------------------------------
# k-fold accuracy
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num_pairs", "num_folds", "decimals", "seed"),
    [(600, 10, None, 0), (203, 10, 1, 1), (57, 10, None, 2), (100, 3, 0, 3), (1000, 10, 2, 4)],
)
def test_accuracy_matches_sklearn_kfold_brute_force(num_pairs, num_folds, decimals, seed):
    scores, issame = random_pairs(num_pairs, seed=seed, decimals=decimals)
    expected = reference_kfold_accuracy(scores, issame, num_folds)
    result = verification_accuracy(*as_tensors(scores, issame), num_folds=num_folds)
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, abs=1e-12), key


@pytest.mark.filterwarnings("ignore:verification_accuracy. folds")  # tiny random sets: one-class folds are common
@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.sampled_from([-1.0, -0.25, 0.0, 0.3, 0.3001, 0.7, 1.0]), st.booleans()), min_size=4, max_size=40
    ),
    num_folds=st.integers(2, 4),
)
def test_accuracy_matches_brute_force_on_tie_heavy_sets(data, num_folds):
    scores = np.array([score for score, _ in data])
    issame = np.array([same for _, same in data])
    if issame.all() or not issame.any():
        with pytest.raises(ValueError, match="both same and different"):
            verification_accuracy(*as_tensors(scores, issame), num_folds=num_folds)
        return
    expected = reference_kfold_accuracy(scores, issame, num_folds)
    result = verification_accuracy(*as_tensors(scores, issame), num_folds=num_folds)
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, abs=1e-12), key


def test_accuracy_hand_made_threshold_known_by_construction():
    # Ten folds of [same 0.8, same 0.6, different 0.5, different 0.3]: every training set is separated best by a
    # threshold in (0.5, 0.6], whose midpoint is 0.55. Fold 0 has one hard same pair at 0.4, which 0.55 rejects:
    # that fold scores 3/4, the nine others 4/4 (the hard pair costs less in training than moving the threshold).
    fold = [(0.8, True), (0.6, True), (0.5, False), (0.3, False)]
    pairs = [(0.8, True), (0.4, True), (0.5, False), (0.3, False)] + fold * 9
    scores = torch.tensor([score for score, _ in pairs])
    issame = torch.tensor([same for _, same in pairs])
    result = verification_accuracy(scores, issame, num_folds=10)
    fold_accuracies = [0.75] + [1.0] * 9
    assert result["accuracy"].item() == pytest.approx(0.975)
    # Population standard deviation (ddof=0), as numpy's default and insightface: sqrt(0.05625 / 10) = 0.075.
    assert result["accuracy_std"].item() == pytest.approx(0.075)
    assert result["accuracy_std"].item() == pytest.approx(float(np.std(fold_accuracies)))
    assert result["accuracy_std"].item() != pytest.approx(float(np.std(fold_accuracies, ddof=1)))
    assert result["threshold"].item() == pytest.approx(0.55)


def test_accuracy_tie_rule_takes_the_midpoint_of_the_highest_maximising_interval():
    # In every training set, thresholds in (0.7, 0.9] and in (0.3, 0.5] both classify 3 of 4 pairs right: the
    # higher interval wins and its midpoint 0.8 is the threshold, which rejects the same pair at 0.5.
    pairs = [(0.9, True), (0.7, False), (0.5, True), (0.3, False)] * 5
    scores = torch.tensor([score for score, _ in pairs])
    issame = torch.tensor([same for _, same in pairs])
    result = verification_accuracy(scores, issame, num_folds=5)
    assert result["threshold"].item() == pytest.approx(0.8)
    assert result["accuracy"].item() == pytest.approx(0.75)


def test_accuracy_warns_about_one_class_folds():
    # LFW View 1 lists (pairsDevTest.txt) give all same pairs first: consecutive folds then hold one class each.
    scores, _ = random_pairs(1000, seed=13)
    same_first = np.arange(1000) < 500
    with pytest.warns(UserWarning, match=r"folds \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] of 10 hold only same or only"):
        verification_accuracy(*as_tensors(scores, same_first))
    interleaved = np.arange(1000) % 2 == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verification_accuracy(*as_tensors(scores, interleaved))


def test_separable_and_random_scores():
    generator = np.random.default_rng(6)
    issame = generator.random(2000) < 0.5
    # Every same pair in [0.6, 1], every different pair in [-1, 0.4].
    separable = np.where(issame, generator.uniform(0.6, 1.0, 2000), generator.uniform(-1.0, 0.4, 2000))
    result = verification_metrics(*as_tensors(separable, issame), far=(1e-3, 1e-1))
    assert result["accuracy"].item() == 1.0
    assert result["accuracy_std"].item() == 0.0
    assert result["eer"].item() == 0.0
    assert result["auc"].item() == 1.0
    assert result["tar@far=1e-3"].item() == 1.0

    random_scores, random_issame = random_pairs(20000, separation=0.0, seed=7)
    chance = verification_metrics(*as_tensors(random_scores, random_issame))
    # With 20,000 pairs the sampling error of each is ~0.005; the tolerances are 4-6 sigma.
    assert chance["accuracy"].item() == pytest.approx(0.5, abs=0.03)
    assert chance["eer"].item() == pytest.approx(0.5, abs=0.03)
    assert chance["auc"].item() == pytest.approx(0.5, abs=0.03)


def test_reversed_scores_give_eer_one_and_auc_zero():
    scores, issame = random_pairs(500, separation=0.0, seed=8)
    reversed_scores = np.where(issame, -1.0 - np.abs(scores), 1.0 + np.abs(scores))
    assert equal_error_rate(*as_tensors(reversed_scores, issame)).item() == 1.0
    assert roc_auc(*as_tensors(reversed_scores, issame)).item() == 0.0


# ------------------------------------------------------------------------------------------------------------------
# ROC family
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("scale", "decimals"), [(1.0, None), (1.0, 1), (40.0, None)])
def test_roc_curve_matches_sklearn(scale, decimals):
    # Scale 40: scores far outside [0, 1], where a sigmoid would saturate in float32 and merge distinct scores.
    scores, issame = random_pairs(500, seed=9, decimals=decimals)
    scores = scores * scale
    fpr, tpr, thresholds = roc_curve(*as_tensors(scores, issame, dtype=torch.float32))
    expected_fpr, expected_tpr, expected_thresholds = sklearn_roc_curve(
        issame, scores.astype(np.float32), drop_intermediate=False
    )
    np.testing.assert_allclose(fpr.numpy(), expected_fpr, atol=1e-6)
    np.testing.assert_allclose(tpr.numpy(), expected_tpr, atol=1e-6)
    assert math.isinf(thresholds[0].item()) and math.isinf(expected_thresholds[0])
    np.testing.assert_array_equal(thresholds[1:].numpy(), expected_thresholds[1:])


@pytest.mark.parametrize("decimals", [None, 1])
def test_auc_matches_sklearn(decimals):
    scores, issame = random_pairs(700, seed=10, decimals=decimals)
    expected = roc_auc_score(issame, scores)
    assert roc_auc(*as_tensors(scores, issame)).item() == pytest.approx(expected, abs=1e-6)
    assert verification_metrics(*as_tensors(scores, issame))["auc"].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("decimals", [None, 1])
def test_tar_at_far_and_eer_match_sklearn_roc(decimals):
    scores, issame = random_pairs(3000, separation=2.0, seed=11, decimals=decimals)
    far = (1e-1, 1e-2, 1e-3, 1e-4)
    expected = [reference_tar_at_far(scores, issame, value) for value in far]
    np.testing.assert_allclose(tar_at_far(*as_tensors(scores, issame), far=far).numpy(), expected, atol=1e-6)
    assert equal_error_rate(*as_tensors(scores, issame)).item() == pytest.approx(
        reference_eer(scores, issame), abs=1e-6
    )


def test_tar_at_far_exact_budget_of_false_accepts():
    # 1000 different pairs scoring 0.000 ... 0.999, and 100 same pairs: 50 above every different pair, 30 between
    # the top two different pairs (0.998 < 0.9985 < 0.999), 20 low. FAR 1e-3 allows exactly one false accept
    # (threshold 0.9985 accepts 0.999): TAR 0.8. Any FAR below 1e-3 allows none: TAR 0.5.
    different = np.arange(1000) / 1000
    same = np.array([1.5] * 50 + [0.9985] * 30 + [0.1] * 20)
    scores = torch.tensor(np.concatenate([same, different]), dtype=torch.float32)
    issame = torch.tensor([True] * 100 + [False] * 1000)
    result = tar_at_far(scores, issame, far=(1e-3, 9.99e-4, 1e-4, 2e-3))
    np.testing.assert_allclose(result.numpy(), [0.8, 0.5, 0.5, 0.8])
    assert tar_at_far(scores, issame, far=1e-3).shape == ()


def test_eer_hand_made():
    # Threshold 0.7 accepts same 0.9, 0.8 and different 0.7: FAR = 1/3 and FRR = 1/3 at one point of the curve.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.4, 0.3, 0.2])
    issame = torch.tensor([True, True, False, True, False, False])
    assert equal_error_rate(scores, issame).item() == pytest.approx(1 / 3)


def test_tar_at_far_key():
    assert [tar_at_far_key(value) for value in (1e-1, 1e-3, 1e-4, 2.5e-3, 1.0)] == [
        "tar@far=1e-1",
        "tar@far=1e-3",
        "tar@far=1e-4",
        "tar@far=2.5e-3",
        "tar@far=1e0",
    ]


def test_verification_metrics_keys_and_consistency():
    scores, issame = random_pairs(600, seed=12)
    tensors = as_tensors(scores, issame)
    result = verification_metrics(*tensors, num_folds=10, far=(1e-3, 1e-2))
    assert list(result) == ["accuracy", "accuracy_std", "threshold", "tar@far=1e-3", "tar@far=1e-2", "eer", "auc"]
    assert result["eer"].item() == pytest.approx(reference_eer(scores, issame), abs=1e-6)
    assert result["tar@far=1e-2"].item() == pytest.approx(reference_tar_at_far(scores, issame, 1e-2), abs=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------
ALL_FUNCTIONS = [verification_accuracy, tar_at_far, equal_error_rate, roc_auc, roc_curve, verification_metrics]


@pytest.mark.parametrize("function", ALL_FUNCTIONS, ids=lambda function: function.__name__)
@pytest.mark.parametrize(
    ("scores", "issame", "match"),
    [
        (torch.rand(20), torch.ones(20, dtype=torch.bool), "only same-identity pairs"),
        (torch.rand(20), torch.zeros(20, dtype=torch.bool), "no same-identity pairs"),
        (torch.tensor([0.1, float("nan")] * 10), torch.arange(20) % 2 == 0, "pair 1 has score nan"),
        (torch.tensor([0.1, float("inf")] * 10), torch.arange(20) % 2 == 0, "must be finite"),
        (torch.rand(20), torch.arange(19) % 2 == 0, "20 scores and 19 labels"),
        (torch.rand(20), torch.full((20,), 0.5), "bool or integer"),
        (torch.rand(20), torch.arange(20) % 3, r"only 0/1"),
        (torch.rand(4, 5), torch.arange(20) % 2 == 0, "1-D"),
    ],
)
def test_bad_input_raises_value_error(function, scores, issame, match):
    with pytest.raises(ValueError, match=match):
        function(scores, issame)


def test_bad_folds_and_far():
    scores, issame = torch.rand(8), torch.arange(8) % 2 == 0
    with pytest.raises(ValueError, match="8 pairs cannot be split into `num_folds`=10"):
        verification_accuracy(scores, issame)
    with pytest.raises(ValueError, match="integer >= 2"):
        verification_accuracy(scores, issame, num_folds=1)
    for far in (0.0, 1.5, -1e-3, float("nan"), ()):
        with pytest.raises(ValueError, match="far"):
            tar_at_far(scores, issame, far=far)
    with pytest.raises(ValueError, match="integer >= 2"):
        VerificationMetrics(num_folds=0)
    with pytest.raises(ValueError, match="far"):
        TARAtFAR(far=(1e-3, 2.0))


# ------------------------------------------------------------------------------------------------------------------
# Metric classes
# ------------------------------------------------------------------------------------------------------------------
def random_embeddings(num_pairs: int, seed: int = 0, embedding_size: int = 16):
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(num_pairs, embedding_size, generator=generator)
    issame = torch.rand(num_pairs, generator=generator) < 0.5
    noise = torch.randn(num_pairs, embedding_size, generator=generator)
    # Same pairs: the first embedding plus noise; different pairs: noise only. Norms vary on purpose.
    second = torch.where(issame[:, None], first + noise, 3 * noise)
    return first, second, issame


def numpy_cosine(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    a, b = first.double().numpy(), second.double().numpy()
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return torch.tensor(cosine, dtype=torch.float32)


def test_cosine_scores_independent_of_norm():
    first, second, _ = random_embeddings(50)
    expected = numpy_cosine(first, second)
    torch.testing.assert_close(cosine_scores(first, second), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_scores(7 * first, 0.1 * second), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("make_metric", "function"),
    [
        (lambda: VerificationAccuracy(num_folds=10), lambda s, y: verification_accuracy(s, y, num_folds=10)),
        (lambda: TARAtFAR(far=(1e-1, 1e-2, 1e-3, 1e-4)), lambda s, y: tar_at_far(s, y, far=(1e-1, 1e-2, 1e-3, 1e-4))),
        (EER, equal_error_rate),
        (VerificationAUC, roc_auc),
        (lambda: VerificationMetrics(num_folds=10, far=(1e-3,)), verification_metrics),
    ],
    ids=["accuracy", "tar", "eer", "auc", "all"],
)
@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric .* was called before the ``update``")
def test_metric_classes_accumulate_batches_like_the_functions(make_metric, function):
    metric = make_metric()
    first, second, issame = random_embeddings(500, seed=1)
    for start in range(0, 500, 64):
        metric.update(first[start : start + 64], second[start : start + 64], issame[start : start + 64])
    expected = function(numpy_cosine(first, second), issame)
    result = metric.compute()
    if isinstance(expected, dict):
        assert list(result) == list(expected)
        for key in expected:
            torch.testing.assert_close(result[key], expected[key], atol=1e-6, rtol=0)
    else:
        torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)
    metric.reset()
    with pytest.raises(ValueError, match="no pairs"):
        metric.compute()


def test_verification_metrics_keys_and_roc_curve():
    first, second, issame = random_embeddings(300, seed=2)
    metric = VerificationMetrics(far=(1e-3, 1e-2))
    metric.update(first, second, issame)
    assert list(metric.compute()) == [
        "accuracy",
        "accuracy_std",
        "threshold",
        "tar@far=1e-3",
        "tar@far=1e-2",
        "eer",
        "auc",
    ]
    fpr, tpr, _ = metric.roc_curve()
    expected_fpr, expected_tpr, _ = sklearn_roc_curve(
        issame.numpy(), numpy_cosine(first, second).numpy(), drop_intermediate=False
    )
    np.testing.assert_allclose(fpr.numpy(), expected_fpr, atol=1e-6)
    np.testing.assert_allclose(tpr.numpy(), expected_tpr, atol=1e-6)


def test_pair_index_restores_order_and_drops_padding_repeats():
    first, second, issame = random_embeddings(203, seed=3)
    expected = verification_metrics(numpy_cosine(first, second), issame)
    # What two ranks of a DistributedSampler(shuffle=False) see: interleaved, the last pair padded with pair 0.
    index = torch.cat([torch.arange(203), torch.tensor([0])])
    metric = VerificationMetrics()
    for rank in (1, 0):
        shard = index[rank::2]
        metric.update(first[shard], second[shard], issame[shard], pair_index=shard)
    result = metric.compute()
    for key in expected:
        torch.testing.assert_close(result[key], expected[key], atol=1e-6, rtol=0)

    unordered = VerificationMetrics()
    for rank in (1, 0):
        shard = index[rank::2]
        unordered.update(first[shard], second[shard], issame[shard])
    # Without pair_index the pairs are taken as gathered (rank 1's shard first here, padding included).
    gathered = torch.cat([index[1::2], index[0::2]])
    expected_unordered = verification_metrics(numpy_cosine(first[gathered], second[gathered]), issame[gathered])
    result_unordered = unordered.compute()
    for key in expected_unordered:
        torch.testing.assert_close(result_unordered[key], expected_unordered[key], atol=1e-6, rtol=0)
    assert any(abs(result_unordered[key] - expected[key]) > 1e-6 for key in ("accuracy", "accuracy_std", "threshold"))


def test_update_rejects_inconsistent_input():
    first, second, issame = random_embeddings(10)
    metric = VerificationMetrics()
    with pytest.raises(ValueError, match="10 pairs of embeddings but 9"):
        metric.update(first, second, issame[:9])
    with pytest.raises(ValueError, match="shape"):
        metric.update(first, second[:, :4], issame)
    with pytest.raises(ValueError, match="only 0/1"):
        metric.update(first, second, torch.full((10,), 2))
    metric.update(first, second, issame, pair_index=torch.arange(10))
    with pytest.raises(ValueError, match="every update or to none"):
        metric.update(first, second, issame)


# ------------------------------------------------------------------------------------------------------------------
# DDP: two CPU processes (gloo) give the single-process numbers
# ------------------------------------------------------------------------------------------------------------------
DDP_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys, types
    import torch
    import torch.distributed as dist

    # The package's __init__ imports Lightning (seconds per process); the metrics need none of it, so register the
    # package as a bare namespace and import only lightning_margin.metrics.
    package = types.ModuleType("lightning_margin")
    package.__path__ = list(importlib.util.find_spec("lightning_margin").submodule_search_locations)
    sys.modules["lightning_margin"] = package
    from lightning_margin.metrics import VerificationMetrics
    assert "lightning" not in sys.modules

    rank, init_file, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    data = torch.load(sys.argv[4])
    first, second, issame = data["first"], data["second"], data["issame"]
    num_pairs = len(issame)
    # A: a DistributedSampler(shuffle=False) shard -- interleaved, padded by repeating pair 0 -- with pair_index.
    index = torch.cat([torch.arange(num_pairs), torch.arange(num_pairs % 2)])[rank::2]
    interleaved = VerificationMetrics(far=(1e-1, 1e-2))
    for start in range(0, len(index), 64):
        batch = index[start : start + 64]
        interleaved.update(first[batch], second[batch], issame[batch], pair_index=batch)
    # B: contiguous shards of unequal size, without pair_index: concatenation in rank order is the set's order.
    half = num_pairs // 2 + 1
    block = slice(0, half) if rank == 0 else slice(half, num_pairs)
    contiguous = VerificationMetrics(far=(1e-1, 1e-2))
    contiguous.update(first[block], second[block], issame[block])
    result = {
        "interleaved": {key: value.item() for key, value in interleaved.compute().items()},
        "contiguous": {key: value.item() for key, value in contiguous.compute().items()},
        "roc_points": len(interleaved.roc_curve()[0]),
        "local_pairs": sum(batch.numel() for batch in interleaved.scores),
    }
    with open(out, "w") as file:
        json.dump(result, file)
    dist.barrier()
    dist.destroy_process_group()
    """
)


def test_ddp_two_processes_equal_single_process(tmp_path: Path):
    first, second, issame = random_embeddings(1003, seed=4)
    torch.save({"first": first, "second": second, "issame": issame}, tmp_path / "data.pt")
    (tmp_path / "ddp_metrics.py").write_text(DDP_SCRIPT)
    outputs = [tmp_path / f"rank{rank}.json" for rank in range(2)]
    script, init_file, data = (str(tmp_path / name) for name in ("ddp_metrics.py", "init", "data.pt"))
    processes = [
        subprocess.Popen(
            [sys.executable, script, str(rank), init_file, str(output), data],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, output in enumerate(outputs)
    ]
    logs = []
    for process in processes:
        try:
            logs.append(process.communicate(timeout=180)[0])
        finally:
            process.kill()
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 0, log

    single = VerificationMetrics(far=(1e-1, 1e-2))
    single.update(first, second, issame)
    expected = {key: value.item() for key, value in single.compute().items()}
    expected_roc_points = len(single.roc_curve()[0])
    for output in outputs:
        result = json.loads(output.read_text())
        for layout in ("interleaved", "contiguous"):
            assert list(result[layout]) == list(expected)
            for key, value in expected.items():
                assert result[layout][key] == pytest.approx(value, abs=1e-7), (layout, key)
        assert result["roc_points"] == expected_roc_points
        assert result["local_pairs"] == 502  # each rank held half the (padded) set; compute() gathered all
