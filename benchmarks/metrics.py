"""Time every verification metric on random pairs, with scikit-learn's ``roc_curve`` as a baseline in the same run.

Usage::

    python benchmarks/metrics.py                      # 6,000 (LFW size) and 1,000,000 (IJB scale) pairs, CPU
    python benchmarks/metrics.py --sizes 6000 --device cuda
    python benchmarks/metrics.py --threads 1 --cpu-time  # on a busy shared machine

Prints one Markdown row per metric: the median wall time in milliseconds per size, and its ratio to scikit-learn's
``roc_curve`` on the same scores (numpy arrays, already on the CPU). Scores are float32 cosines of random pairs
with a separation that gives an LFW-like EER of a few percent, so the ROC has ~one distinct score per pair.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from sklearn.metrics import roc_curve as sklearn_roc_curve

from lightning_margin.evaluation import format_table
from lightning_margin.metrics.functional import (
    equal_error_rate,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_accuracy,
    verification_metrics,
)


def median_seconds(
    function: Callable[[], object], repeats: int, synchronize: Callable[[], None], clock: Callable[[], float]
) -> float:
    function()  # warm-up: lazy initialisation, allocator, caches
    synchronize()
    times = []
    for _ in range(repeats):
        start = clock()
        function()
        synchronize()
        times.append(clock() - start)
    return statistics.median(times)


def random_pairs(num_pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    issame = torch.rand(num_pairs, generator=generator) < 0.5
    scores = (0.15 * torch.randn(num_pairs, generator=generator) + torch.where(issame, 0.6, 0.1)).clamp(-1, 1)
    return scores, issame


def time_metrics(
    num_pairs: int, device: torch.device, repeats: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Median seconds of each metric on one random set; the first entry is the scikit-learn baseline."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    far = (1e-1, 1e-2, 1e-3, 1e-4)
    scores, issame = random_pairs(num_pairs)
    scores_np, issame_np = scores.numpy(), issame.numpy()
    scores, issame = scores.to(device), issame.to(device)
    cases: dict[str, Callable[[], object]] = {
        "sklearn roc_curve (baseline)": lambda: sklearn_roc_curve(issame_np, scores_np),
        "verification_accuracy (10 folds)": lambda: verification_accuracy(scores, issame),
        "tar_at_far (4 FARs)": lambda: tar_at_far(scores, issame, far=far),
        "equal_error_rate": lambda: equal_error_rate(scores, issame),
        "roc_auc": lambda: roc_auc(scores, issame),
        "roc_curve": lambda: roc_curve(scores, issame),
        "verification_metrics (all of the above)": lambda: verification_metrics(scores, issame, far=far),
    }
    return {name: median_seconds(function, repeats, synchronize, clock) for name, function in cases.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[6_000, 1_000_000], help="numbers of pairs")
    parser.add_argument("--device", default="cpu", help="torch device for the library's metrics")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per cell (default: 20 small, 3 large)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="measure process CPU time instead of wall time (steadier on a shared machine; CPU only)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter

    rows: dict[str, dict[str, float]] = {}
    for num_pairs in args.sizes:
        repeats = args.repeats or (20 if num_pairs <= 100_000 else 3)
        timings = time_metrics(num_pairs, device, repeats, clock)
        baseline = next(iter(timings.values()))
        for name, seconds in timings.items():
            rows.setdefault(name, {})[f"{num_pairs:,} pairs [ms]"] = 1000 * seconds
            rows[name][f"{num_pairs:,}: x sklearn"] = seconds / baseline

    kind = "CPU time" if args.cpu_time else "wall time"
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads; median {kind}")
    print(format_table(rows, name_header="metric"))


if __name__ == "__main__":
    main()
