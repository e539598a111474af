"""Draw docs/alignment.png: the ArcFace template, and drawn faces before and after ``norm_crop``.

    python docs/make_alignment_figure.py                       # writes docs/alignment.png (a few seconds)
    python docs/make_alignment_figure.py --out /tmp/align.png  # elsewhere

The faces are drawn here (a cartoon face whose eyes, nose tip and mouth corners sit on the template, placed in three
"photos" at another size, angle and place), so the figure holds no real person's photo: LFW's images must not be
committed. Their landmarks are known exactly (where they were drawn), and the bottom row shows the crops
:func:`~lightning_margin.align.norm_crop` makes from them, with the template's points on top: each drawn landmark
lands on its template point. ``lightning-margin data align`` makes the same crops from real photos.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lightning_margin.align import ARCFACE_TEMPLATE, norm_crop

SCALE = 4  # the face is drawn at 4x and warped down: smooth edges
NAMES = ("left eye", "right eye", "nose tip", "left mouth corner", "right mouth corner")


def drawn_face() -> Image.Image:
    """A cartoon face on a transparent 448x448 canvas: its landmarks are ARCFACE_TEMPLATE (x4)."""
    canvas = Image.new("RGBA", (112 * SCALE, 112 * SCALE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)

    def box(x: float, y: float, rx: float, ry: float) -> list[float]:
        return [SCALE * (x - rx), SCALE * (y - ry), SCALE * (x + rx), SCALE * (y + ry)]

    draw.ellipse(box(56, 62, 40, 52), fill=(236, 196, 160, 255))  # head
    draw.pieslice(box(56, 44, 42, 36), 180, 360, fill=(92, 60, 40, 255))  # hair
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = ARCFACE_TEMPLATE
    for x, y in ((lx, ly), (rx, ry)):
        draw.ellipse(box(x, y, 7, 4.5), fill=(255, 255, 255, 255))
        draw.ellipse(box(x, y, 3, 3), fill=(60, 40, 30, 255))
        draw.line(
            [SCALE * (x - 8), SCALE * (y - 9), SCALE * (x + 8), SCALE * (y - 10)], fill=(92, 60, 40, 255), width=8
        )
    draw.line(
        [SCALE * nx, SCALE * (ny - 18), SCALE * (nx - 4), SCALE * ny, SCALE * (nx + 3), SCALE * ny],
        fill=(170, 120, 90, 255),
        width=6,
    )
    middle = ((mlx + mrx) / 2, (mly + mry) / 2 + 5)
    draw.line(
        [SCALE * mlx, SCALE * mly, SCALE * middle[0], SCALE * middle[1], SCALE * mrx, SCALE * mry],
        fill=(170, 60, 60, 255),
        width=10,
        joint="curve",
    )
    return canvas


def photo(
    face: Image.Image, scale: float, angle: float, shift: tuple[float, float], seed: int
) -> tuple[Image.Image, np.ndarray]:
    """The face placed in a 250x250 "photo" by the similarity (scale, angle, shift); its five landmarks there."""
    cos, sin = math.cos(angle), math.sin(angle)
    forward = np.array(
        [[scale * cos, -scale * sin, shift[0]], [scale * sin, scale * cos, shift[1]]]
    )  # template -> photo
    linear = np.linalg.inv(forward[:, :2])
    backward = np.hstack([linear, -linear @ forward[:, 2:]]) * SCALE  # photo -> canvas pixels
    placed = face.transform((250, 250), Image.Transform.AFFINE, tuple(backward.ravel()), Image.Resampling.BICUBIC)
    generator = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 250)[None, :, None]
    colours = generator.uniform(60, 200, (2, 3))
    background = (colours[0] * (1 - ramp) + colours[1] * ramp).repeat(250, axis=0).astype(np.uint8)
    scene = Image.fromarray(background).convert("RGBA")
    scene.alpha_composite(placed)
    return scene.convert("RGB"), ARCFACE_TEMPLATE @ forward[:, :2].T + forward[:, 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("alignment.png"))
    arguments = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    face = drawn_face()
    scenes = [
        photo(face, 1.3, 0.35, (70, 20), 1),
        photo(face, 0.9, -0.5, (60, 120), 2),
        photo(face, 1.7, 0.1, (40, 30), 3),
    ]
    colours = plt.cm.tab10(np.arange(5))
    figure = plt.figure(figsize=(11, 5.2), layout="constrained")
    grid = figure.add_gridspec(2, 4, width_ratios=[1.25, 1, 1, 1])
    template_axes = figure.add_subplot(grid[:, 0])
    template_axes.add_patch(plt.Rectangle((0, 0), 112, 112, fill=False, lw=1.5))
    # Label offsets in points (up is positive): eyes above, nose to the right, mouth corners below and outwards.
    offsets = (((0, 9), "center", "bottom"), ((0, 9), "center", "bottom"), ((9, 0), "left", "center"))
    offsets += (((-3, -9), "right", "top"), ((3, -9), "left", "top"))
    for (x, y), name, colour, (offset, ha, va) in zip(ARCFACE_TEMPLATE, NAMES, colours, offsets, strict=True):
        template_axes.plot(x, y, "o", color=colour, ms=8)
        label = f"{name}\n({x:.1f}, {y:.1f})"
        template_axes.annotate(label, (x, y), offset, textcoords="offset points", ha=ha, va=va, fontsize=8)
    template_axes.set(xlim=(-4, 116), ylim=(116, -4), aspect="equal", title="ArcFace template, 112x112 crop")
    template_axes.set_xticks([0, 56, 112])
    template_axes.set_yticks([0, 56, 112])
    for column, (image, landmarks) in enumerate(scenes, start=1):
        top = figure.add_subplot(grid[0, column])
        top.imshow(image)
        top.scatter(*landmarks.T, c=colours, s=18, edgecolors="white", linewidths=0.6)
        top.set_title(f"drawn photo {column}, 5 landmarks", fontsize=9)
        bottom = figure.add_subplot(grid[1, column])
        bottom.imshow(norm_crop(image, landmarks), extent=(-0.5, 111.5, 111.5, -0.5))
        bottom.scatter(*ARCFACE_TEMPLATE.T, c=colours, marker="+", s=70, linewidths=1.5)
        bottom.set_title("norm_crop (+: the template)", fontsize=9)
        for axes in (top, bottom):
            axes.set_xticks([])
            axes.set_yticks([])
    figure.savefig(arguments.out, dpi=90)
    with Image.open(arguments.out) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    palette.save(arguments.out, optimize=True)
    print(f"wrote {arguments.out} ({arguments.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
