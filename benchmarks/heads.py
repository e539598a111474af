"""Forward+backward time and peak memory of every margin head against ``nn.Linear`` + ``F.cross_entropy``.

Issue 2's benchmark: ``B=256, D=512, C in {10k, 100k}``, every registered head, the same shapes and the same
run as the baseline (a bias-free ``nn.Linear`` followed by ``F.cross_entropy``). Each repetition times the
baseline and the head back to back (interleaved, so both see the same machine load) and the table reports
medians. Peak memory is the largest total of tensor storages alive at once during one forward+backward,
counted by :class:`~lightning_margin.parallel.TensorMemoryTracker` in a separate, untimed pass (parameters and
inputs, which exist before the step, are not counted; the parameter gradients are).

Usage::

    python benchmarks/heads.py                      # the heads as committed
    python benchmarks/heads.py --path engine        # each head wrapped in ShardedMarginHead (one process)
    python benchmarks/heads.py --threads 1 --cpu-time --classes 10000 --heads arcface cosface  # busy machine
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_margin.heads import create_head, list_heads
from lightning_margin.parallel import ShardedMarginHead, TensorMemoryTracker

__all__ = [
    "CLOCK",
    "Step",
    "add_machine_arguments",
    "apply_machine_arguments",
    "machine_line",
    "measure",
    "peak_bytes",
    "time_interleaved",
]

MIB = 2**20
TARGET_RATIO = 1.15
# What the timings read: wall time by default, process CPU time with --cpu-time (steadier on a busy machine).
CLOCK = {"read": time.perf_counter, "name": "wall time"}


def add_machine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--cpu-time``, shared by every benchmark here."""
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process's CPU time instead of the wall clock (less sensitive to other processes)",
    )


def apply_machine_arguments(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        CLOCK.update(read=time.process_time, name="CPU time")


class Step:
    """One training step's forward+backward of ``loss_fn`` (parameter gradients reset first, as zero_grad does)."""

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor], module: nn.Module, embeddings, labels) -> None:
        self.loss_fn, self.module, self.embeddings, self.labels = loss_fn, module, embeddings, labels

    def __call__(self) -> None:
        self.embeddings.grad = None
        for parameter in self.module.parameters():
            parameter.grad = None
        self.loss_fn(self.embeddings, self.labels).backward()

    def release(self) -> None:
        """Drop the gradients so that they do not count as live memory in the next measurement."""
        self.embeddings.grad = None
        for parameter in self.module.parameters():
            parameter.grad = None


def time_interleaved(steps: dict[str, Step], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each step; the steps alternate within every repetition."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = CLOCK["read"]()
            step()
            times[name].append(CLOCK["read"]() - start)
    for step in steps.values():
        step.release()
    return {name: statistics.median(values) for name, values in times.items()}


def peak_bytes(step: Step) -> int:
    """Peak bytes of tensors created during one call of ``step`` (see TensorMemoryTracker)."""
    step.release()
    with TensorMemoryTracker() as tracker:
        step()
    step.release()
    return tracker.peak_bytes


def measure(steps: dict[str, Step], repeats: int, warmup: int) -> dict[str, tuple[float, int]]:
    """``{name: (median seconds, peak bytes)}``."""
    seconds = time_interleaved(steps, repeats, warmup)
    return {name: (seconds[name], peak_bytes(step)) for name, step in steps.items()}


def machine_line() -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"load average {load}; timing: median {CLOCK['name']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--heads", nargs="+", default=list_heads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--path",
        choices=["committed", "engine"],
        default="committed",
        help="the heads as committed, or each run by ShardedMarginHead",
    )
    add_machine_arguments(parser)
    args = parser.parse_args()
    apply_machine_arguments(args)

    print(f"# heads vs nn.Linear(bias=False) + F.cross_entropy: B={args.batch_size}, D={args.embedding_size}")
    print(f"# {machine_line()}; path: {args.path}; median of {args.repeats} (+{args.warmup} warm-up)")
    print(f"# time: forward+backward; memory: peak tensor bytes of one step (target <= {TARGET_RATIO}x)")
    header = "| head | C | linear+CE ms | head ms | time ratio | linear+CE MiB | head MiB | memory ratio |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for num_classes in args.classes:
        torch.manual_seed(0)
        embeddings = torch.randn(args.batch_size, args.embedding_size, requires_grad=True)
        labels = torch.randint(0, num_classes, (args.batch_size,))
        linear = nn.Linear(args.embedding_size, num_classes, bias=False)
        baseline = Step(lambda x, y, linear=linear: F.cross_entropy(linear(x), y), linear, embeddings, labels)
        for name in args.heads:
            head = create_head(name, args.embedding_size, num_classes)
            loss_fn = ShardedMarginHead(head) if args.path == "engine" else head
            steps = {"linear": baseline, "head": Step(loss_fn, head, embeddings, labels)}
            results = measure(steps, args.repeats, args.warmup)
            (base_s, base_b), (head_s, head_b) = results["linear"], results["head"]
            print(
                f"| {name} | {num_classes:,} | {base_s * 1e3:.0f} | {head_s * 1e3:.0f} | {head_s / base_s:.2f} | "
                f"{base_b / MIB:.0f} | {head_b / MIB:.0f} | {head_b / base_b:.2f} |",
                flush=True,
            )
            del head


if __name__ == "__main__":
    main()
