"""Our ArcFace / CosFace / SphereFace against pytorch-metric-learning's ArcFaceLoss / CosFaceLoss / SphereFaceLoss.

pytorch-metric-learning is not a dependency of this project: install it apart and point ``PYTHONPATH`` at it::

    pip install --target /tmp/pml --no-deps pytorch-metric-learning
    PYTHONPATH=/tmp/pml python benchmarks/vs_pytorch_metric_learning.py

Both sides get the same weights (theirs stores ``W`` as ``[D, C]``), embeddings and labels; the table shows the
median forward+backward time of each (interleaved), the ratio ours / theirs (target: below 1) and the difference
of the two losses as a check that the same function is timed. Without the package the comparison is skipped
with a message.
"""

from __future__ import annotations

import argparse
import math

import torch
from heads import MIB, Step, add_machine_arguments, apply_machine_arguments, machine_line, measure

from lightning_margin.heads import ArcFace, CosFace, SphereFace
from lightning_margin.parallel import ShardedMarginHead

__all__ = ["compare", "load_pytorch_metric_learning"]

SCALE = 64.0


def load_pytorch_metric_learning():
    """The ``pytorch_metric_learning.losses`` module, or None (with the reason printed) if it is not installed."""
    try:
        from pytorch_metric_learning import losses
    except ImportError as error:
        print(
            f"# skipped: pytorch-metric-learning is not importable ({error}); install it apart with "
            "`pip install --target /tmp/pml --no-deps pytorch-metric-learning` and run with PYTHONPATH=/tmp/pml"
        )
        return None
    return losses


def _pairs(losses, embedding_size: int, num_classes: int):
    margin = 0.5
    yield (
        "arcface",
        ArcFace(embedding_size, num_classes, scale=SCALE, margin=margin),
        losses.ArcFaceLoss(num_classes, embedding_size, margin=math.degrees(margin), scale=SCALE),
    )
    yield (
        "cosface",
        CosFace(embedding_size, num_classes, scale=SCALE, margin=0.35),
        losses.CosFaceLoss(num_classes, embedding_size, margin=0.35, scale=SCALE),
    )
    yield (
        "sphereface",
        SphereFace(embedding_size, num_classes, margin=4, lambda_=0.0),
        losses.SphereFaceLoss(num_classes, embedding_size, margin=4, scale=1),
    )


def compare(
    batch_size: int, embedding_size: int, classes: list[int], repeats: int, warmup: int, path: str = "committed"
) -> None:
    """Print the comparison table (or the reason it is skipped)."""
    losses = load_pytorch_metric_learning()
    if losses is None:
        return
    import pytorch_metric_learning

    print(
        f"# lightning_margin vs pytorch-metric-learning {pytorch_metric_learning.__version__}: B={batch_size}, "
        f"D={embedding_size}; path: {path}; median of {repeats} (+{warmup} warm-up)"
    )
    print(f"# {machine_line()}")
    print("| head | C | ours ms | theirs ms | ours / theirs | ours MiB | theirs MiB | loss difference |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for num_classes in classes:
        torch.manual_seed(0)
        embeddings = torch.randn(batch_size, embedding_size, requires_grad=True)
        labels = torch.randint(0, num_classes, (batch_size,))
        for name, ours, theirs in _pairs(losses, embedding_size, num_classes):
            with torch.no_grad():
                theirs.W.copy_(ours.weight.t())
                difference = abs(float(ours(embeddings, labels)) - float(theirs(embeddings, labels)))
            loss_fn = ShardedMarginHead(ours) if path == "engine" else ours
            steps = {
                "ours": Step(loss_fn, ours, embeddings, labels),
                "theirs": Step(theirs, theirs, embeddings, labels),
            }
            results = measure(steps, repeats, warmup)
            (our_s, our_b), (their_s, their_b) = results["ours"], results["theirs"]
            print(
                f"| {name} | {num_classes:,} | {our_s * 1e3:.0f} | {their_s * 1e3:.0f} | {our_s / their_s:.2f} | "
                f"{our_b / MIB:.0f} | {their_b / MIB:.0f} | {difference:.1e} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--path", choices=["committed", "engine"], default="committed")
    add_machine_arguments(parser)
    args = parser.parse_args()
    apply_machine_arguments(args)
    compare(args.batch_size, args.embedding_size, args.classes, args.repeats, args.warmup, args.path)


if __name__ == "__main__":
    main()
