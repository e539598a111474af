"""Scale and speed of the margin loss at 10k to 1M identities: plain, chunked and Partial FC heads.

Issue 6's benchmarks in one command (``python benchmarks/scale.py``), printed as Markdown tables:

1. Forward+backward time and peak memory of ArcFace, ``B=128, D=512, C in {10k, 100k, 1M}``, for
   ``nn.Linear`` + ``F.cross_entropy`` (the baseline), the committed head,
   :class:`~lightning_margin.parallel.ChunkedMarginHead` and :class:`~lightning_margin.parallel.PartialFC`
   (``sample_rate=0.1``, plain and chunked); steps are interleaved within each repetition, medians reported.
   Peak memory: tensor storages created during one step (TensorMemoryTracker; parameter gradients included,
   the parameters themselves not).
2. The largest ``num_classes`` that trains with SGD + momentum in this machine's memory, per mode: the measured
   peaks at the two largest class counts give bytes per class (plus weight and momentum, 8 bytes per float of a
   weight row), extrapolated to the machine's total memory less a reserve. Sharded over ``W`` ranks, each rank
   needs the memory of ``C / W`` classes.
3. ArcFace, CosFace and SphereFace against pytorch-metric-learning (skipped unless importable; see
   vs_pytorch_metric_learning.py).
4. Lightning overhead: ``MarginModule`` trained by ``Trainer.fit`` against a bare PyTorch loop doing the same
   work (same backbone, neck, head, optimizer, data), median time per step.

Usage::

    python benchmarks/scale.py                              # everything (about 15 minutes on 2 CPU cores)
    python benchmarks/scale.py --classes 10000 100000 --skip lightning pml
    PYTHONPATH=/tmp/pml python benchmarks/scale.py --only pml
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics

import torch
import torch.nn.functional as F
from heads import (
    CLOCK,
    MIB,
    Step,
    add_machine_arguments,
    apply_machine_arguments,
    machine_line,
    measure,
)
from torch import nn

from lightning_margin.heads import ArcFace
from lightning_margin.parallel import ChunkedMarginHead, PartialFC

__all__ = ["lightning_overhead", "memory_limits", "scale_table"]

GIB = 2**30
SECTIONS = ("modes", "limits", "pml", "lightning")


def _modes(head: ArcFace, chunk_size: int) -> dict[str, nn.Module]:
    return {
        "arcface (committed)": head,
        f"chunked ({chunk_size})": ChunkedMarginHead(head, chunk_size=chunk_size),
        "partial_fc 0.1": PartialFC(head, sample_rate=0.1),
        f"partial_fc 0.1 + chunked ({chunk_size})": PartialFC(head, sample_rate=0.1, chunk_size=chunk_size),
    }


def scale_table(
    batch_size: int, embedding_size: int, classes: list[int], repeats: int, warmup: int, chunk_size: int
) -> dict[int, dict[str, tuple[float, int]]]:
    """Print table 1; returns ``{num_classes: {mode: (seconds, peak bytes)}}``."""
    print(f"# ArcFace forward+backward: B={batch_size}, D={embedding_size}; median of {repeats} (+{warmup} warm-up)")
    print(f"# {machine_line()}")
    print("| C | mode | ms | x linear+CE | peak MiB | x committed head memory | speed-up vs committed head |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    results = {}
    for num_classes in classes:
        torch.manual_seed(0)
        embeddings = torch.randn(batch_size, embedding_size, requires_grad=True)
        labels = torch.randint(0, num_classes, (batch_size,))
        linear = nn.Linear(embedding_size, num_classes, bias=False)
        head = ArcFace(embedding_size, num_classes)
        steps = {
            "linear+CE": Step(lambda x, y, linear=linear: F.cross_entropy(linear(x), y), linear, embeddings, labels)
        }
        steps.update({name: Step(mode, head, embeddings, labels) for name, mode in _modes(head, chunk_size).items()})
        measured = measure(steps, repeats, warmup)
        base_s, _ = measured["linear+CE"]
        head_s, head_b = measured["arcface (committed)"]
        for name, (seconds, peak) in measured.items():
            print(
                f"| {num_classes:,} | {name} | {seconds * 1e3:.0f} | {seconds / base_s:.2f} | {peak / MIB:,.0f} | "
                f"{peak / head_b:.2f} | {head_s / seconds:.1f} |",
                flush=True,
            )
        results[num_classes] = measured
        del steps, linear, head
        gc.collect()
    largest = max(classes)
    row = results[largest]
    committed_s, committed_b = row["arcface (committed)"]
    chunked = next(value for key, value in row.items() if key.startswith("chunked"))
    print(f"\n# targets at C={largest:,}:")
    print(
        f"# - margin overhead vs linear+CE (<= 1.15): {committed_s / row['linear+CE'][0]:.2f}\n"
        f"# - chunked peak memory vs plain (<= 0.5): {chunked[1] / committed_b:.2f}\n"
        f"# - partial_fc 0.1 speed-up vs full head (>= 4): {committed_s / row['partial_fc 0.1'][0]:.1f}x\n"
    )
    return results


def _total_memory() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def memory_limits(results: dict[int, dict[str, tuple[float, int]]], embedding_size: int, reserve: float) -> None:
    """Print table 2 from the peaks of table 1 at its two largest class counts."""
    if len(results) < 2:
        print("# largest num_classes: needs two class counts in table 1\n")
        return
    small, large = sorted(results)[-2:]
    budget = _total_memory() - reserve * GIB
    persistent = 2 * 4 * embedding_size  # the weight row and its SGD momentum, float32
    print(
        f"# largest num_classes that trains (B and D as above, SGD with momentum, float32) in "
        f"{budget / GIB:.1f} GiB = MemTotal {_total_memory() / GIB:.1f} GiB - {reserve:g} GiB reserve;"
    )
    print(
        f"# extrapolated linearly from the peaks at C={small:,} and C={large:,} (not run to the limit: the "
        "machine is shared)"
    )
    print("| mode | step bytes per class | + weight & momentum | largest num_classes | sharded over 8 ranks |")
    print("|---|---:|---:|---:|---:|")
    for name in results[large]:
        if name == "linear+CE":
            continue
        slope = (results[large][name][1] - results[small][name][1]) / (large - small)
        intercept = results[large][name][1] - slope * large
        per_class = slope + persistent
        limit = int((budget - intercept) / per_class)
        print(f"| {name} | {slope:,.0f} | {per_class:,.0f} | {limit:,} | {8 * limit:,} |")
    print()


class _TinyBackbone(nn.Module):
    """A small CNN: the benchmark measures the training loop around the model, not the model."""

    def __init__(self) -> None:
        super().__init__()
        layers, width = [], 3
        for out in (32, 64, 128):
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images):
        return self.features(images)


def lightning_overhead(batch_size: int, num_classes: int, steps: int, warmup: int, rounds: int = 2) -> None:
    """Print table 4: median seconds per training step, MarginModule in Trainer.fit vs a bare loop."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_margin.module import MarginModule, default_optimizer

    input_size, embedding_size = 56, 512
    torch.manual_seed(0)
    total = (steps + warmup) * batch_size
    data = TensorDataset(torch.randn(total, 3, input_size, input_size), torch.randint(0, num_classes, (total,)))

    def make_module() -> MarginModule:
        torch.manual_seed(0)
        return MarginModule(
            backbone=_TinyBackbone(),
            num_classes=num_classes,
            embedding_size=embedding_size,
            head="arcface",
            neck="linear",
            input_size=input_size,
            flip_test=False,
        )

    class Times(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.starts.append(CLOCK["read"]())

        def on_train_end(self, trainer, pl_module) -> None:
            self.starts.append(CLOCK["read"]())

    def lightning_run() -> list[float]:
        times = Times()
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps + warmup,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[times],
            num_sanity_val_steps=0,
        )
        trainer.fit(make_module(), DataLoader(data, batch_size=batch_size))
        return [b - a for a, b in itertools.pairwise(times.starts)][warmup:]

    def bare_run() -> list[float]:
        module = make_module()  # the same backbone, neck, head and parameter groups, driven by hand
        head_ids = {id(p) for p in module.head.parameters()}
        body = [p for p in module.parameters() if id(p) not in head_ids]
        optimizer = default_optimizer([{"params": body}, {"params": list(module.head.parameters())}])
        module.train()
        starts = []
        for images, labels in DataLoader(data, batch_size=batch_size):
            starts.append(CLOCK["read"]())
            optimizer.zero_grad()
            loss = module.head(module.neck(module.backbone(images)), labels)
            loss.backward()
            optimizer.step()
        starts.append(CLOCK["read"]())
        return [b - a for a, b in itertools.pairwise(starts)][warmup:]

    lightning_times, bare_times = [], []
    for _ in range(rounds):  # alternate, so that both see the same machine load
        lightning_times += lightning_run()
        bare_times += bare_run()
    lightning_s, bare_s = statistics.median(lightning_times), statistics.median(bare_times)
    setup = f"B={batch_size}, 3x{input_size}x{input_size} images, small CNN, linear neck, ArcFace C={num_classes:,}"
    print(f"# training step: MarginModule + Trainer.fit vs a bare PyTorch loop; {setup}, SGD; ")
    print(f"# median of {len(bare_times)} steps per loop, {CLOCK['name']}")
    print("# (Trainer: logger=False, no checkpointing, no progress bar; the module logs train/loss every step)")
    print("| loop | ms per step | ratio |")
    print("|---|---:|---:|")
    print(f"| bare PyTorch | {bare_s * 1e3:.1f} | 1.00 |")
    print(f"| MarginModule + Trainer (target <= 1.05) | {lightning_s * 1e3:.1f} | {lightning_s / bare_s:.3f} |\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reserve-gib", type=float, default=2.0, help="memory left for the OS and Python")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[])
    add_machine_arguments(parser)
    args = parser.parse_args()
    apply_machine_arguments(args)
    sections = [s for s in args.only if s not in args.skip]
    print(f"# benchmarks/scale.py, pid {os.getpid()}\n")

    if "modes" in sections or "limits" in sections:
        results = scale_table(
            args.batch_size, args.embedding_size, sorted(args.classes), args.repeats, args.warmup, args.chunk_size
        )
        if "limits" in sections:
            memory_limits(results, args.embedding_size, args.reserve_gib)
    if "pml" in sections:
        from vs_pytorch_metric_learning import compare

        compare(args.batch_size, args.embedding_size, [c for c in args.classes if c <= 100_000], args.repeats, 1)
        print()
    if "lightning" in sections:
        lightning_overhead(args.batch_size, num_classes=10_000, steps=15, warmup=3)


if __name__ == "__main__":
    main()
