"""Figure plumbing shared by every plot: a pyplot-free Agg figure and PNG saving."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["CLASS_COLORS", "new_figure", "save_figure"]

# The default colour cycle, repeated by index so that class k has the same colour in every panel.
CLASS_COLORS = [f"C{index}" for index in range(10)]


def new_figure(width: float, height: float) -> Figure:
    """A figure attached to an Agg canvas.

    Built without :mod:`matplotlib.pyplot` on purpose: pyplot keeps every figure alive in a global registry
    (a leak in a training loop that draws every epoch) and may pick an interactive backend; an Agg canvas
    works headless, in threads and in DDP workers.
    """
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike[str] | None, *, dpi: int = 100) -> None:
    """Write ``figure`` as a PNG to ``path`` (parent folders are created); nothing when ``path`` is None."""
    if path is None:
        return
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are saved as PNG; `path` must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
