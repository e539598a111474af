"""Regenerate the figures README.md shows, from this library's own heads and models.

    python docs/make_figures.py            # writes docs/*.png (about a minute on one CPU core)
    python docs/make_figures.py --steps 200 --out-dir /tmp/figures   # a quick look

Every figure is drawn by :mod:`lightning_margin.plots`; the θ distribution comes from a real training run of
:class:`~lightning_margin.MarginModule` (ArcFace, a small MLP on scikit-learn's digits) with the
:class:`~lightning_margin.callbacks.theta_distribution.ThetaDistribution` callback. The PNGs are re-encoded with a
256-colour palette to keep the repository small.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_margin import MarginModule
from lightning_margin.callbacks.theta_distribution import ThetaDistribution
from lightning_margin.plots import (
    load_digits_subset,
    plot_decision_boundaries,
    plot_geometry,
    plot_target_logits,
    train_geometry_models,
)


def shrink(path: Path) -> None:
    """Re-encode a PNG with an adaptive 256-colour palette (plots have few colours; about 3x smaller)."""
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    palette.save(path, optimize=True)


def theta_distribution(path: Path, steps: int, seed: int) -> None:
    """Train ArcFace on the ten digit classes with a 32-D embedding and record θ at the start, middle and end."""
    features, labels, _ = load_digits_subset(tuple(range(10)))
    # MarginModule takes images: the 8x8 digits as 3-channel images, flattened again by the backbone.
    images = features.view(-1, 1, 8, 8).expand(-1, 3, -1, -1).contiguous()
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 256), nn.PReLU(256))
    pl.seed_everything(seed, verbose=False)
    model = MarginModule(
        backbone,
        num_classes=10,
        embedding_size=32,
        head="arcface",
        head_kwargs={"scale": 32.0, "margin": 0.5},
        neck="fc_bn",
        input_size=8,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
    )
    loader = DataLoader(TensorDataset(images, labels), batch_size=64, shuffle=True, drop_last=True)
    recorder = ThetaDistribution(num_batches=10)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(model, loader)
    figure = recorder.plot()
    figure.axes[0].set_title(f"θ distribution during training (ArcFace, 32-D, digits, {steps} steps)")
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each geometry model")
    parser.add_argument("--theta-steps", type=int, default=600, help="training steps of the θ-distribution run")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    arguments.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: threads only add overhead

    def done(name: str, start: float) -> None:
        path = arguments.out_dir / name
        shrink(path)
        print(f"{path} ({path.stat().st_size / 1024:.0f} KiB, {time.perf_counter() - start:.1f} s)")

    start = time.perf_counter()
    plot_target_logits(path=arguments.out_dir / "target_logits.png")
    done("target_logits.png", start)

    start = time.perf_counter()
    plot_decision_boundaries(path=arguments.out_dir / "decision_boundaries.png")
    done("decision_boundaries.png", start)

    for size in (2, 3):
        start = time.perf_counter()
        results = train_geometry_models(embedding_size=size, steps=arguments.steps, seed=arguments.seed)
        title = f"{size}-D embeddings of held-out digits 0-4, one model per loss ({arguments.steps} steps each)"
        plot_geometry(results, arguments.out_dir / f"geometry_{size}d.png", max_points_per_class=120, title=title)
        done(f"geometry_{size}d.png", start)
        for result in results.values():
            print(f"  {result.label}: {result.split} accuracy {result.accuracy:.1%}")

    start = time.perf_counter()
    theta_distribution(arguments.out_dir / "theta_distribution.png", arguments.theta_steps, arguments.seed)
    done("theta_distribution.png", start)


if __name__ == "__main__":
    main()
