"""``lightning-margin plot``: draw the margin papers' figures from the command line.

Examples::

    lightning-margin plot target-logits --out target_logits.png
    lightning-margin plot target-logits --head softmax --head arcface:margin=0.3 --head cosface --out tl.png
    lightning-margin plot decision-boundaries --space cosine --out boundaries.png
    lightning-margin plot geometry --embedding-size 3 --steps 2000 --out geometry_3d.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "parse_head_spec"]


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_head_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"arcface:margin=0.5,scale=64"`` -> ``("arcface", {"margin": 0.5, "scale": 64})``.

    Values are read as bool (``true``/``false``), int, float, or else kept as text.

    Example:
        >>> parse_head_spec("sphereface:margin=4,lambda_=5.0")
        ('sphereface', {'margin': 4, 'lambda_': 5.0})
    """
    name, _, arguments = spec.partition(":")
    if not name:
        raise ValueError(f"a head is NAME or NAME:key=value,...; got {spec!r}")
    hyperparameters: dict[str, Any] = {}
    for item in filter(None, arguments.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key.isidentifier():
            raise ValueError(f"{spec!r}: {item!r} is not key=value (e.g. arcface:margin=0.5,scale=64)")
        hyperparameters[key] = _parse_value(value)
    return name, hyperparameters


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-margin plot",
        description="Draw the margin papers' figures with this library's heads; each is saved as a PNG.",
    )
    commands = parser.add_subparsers(dest="figure", required=True, metavar="FIGURE")

    def heads_options(command: argparse.ArgumentParser) -> None:
        group = command.add_mutually_exclusive_group()
        group.add_argument(
            "--head",
            action="append",
            metavar="NAME[:key=value,...]",
            help="a head and its hyperparameters, repeatable (default: softmax, SphereFace, CosFace, ArcFace, "
            "combined margin)",
        )
        group.add_argument("--all", action="store_true", help="every registered head with its default settings")
        command.add_argument(
            "--feature-norm",
            type=float,
            default=1.0,
            help="norm of the probing embeddings (changes MagFace and AdaFace margins only)",
        )

    target = commands.add_parser("target-logits", help="target logit against θ, one curve per head (ArcFace Fig. 3)")
    heads_options(target)
    boundaries = commands.add_parser(
        "decision-boundaries", help="two-class decision margins, one panel per head (ArcFace Fig. 5)"
    )
    heads_options(boundaries)
    boundaries.add_argument("--space", choices=("angle", "cosine"), default="angle", help="(θ1, θ2) or cosines")

    geometry = commands.add_parser(
        "geometry", help="train tiny 2-D/3-D embedders on digits, one panel per loss (SphereFace Fig. 2)"
    )
    geometry.add_argument(
        "--loss",
        action="append",
        metavar="NAME[:key=value,...]",
        help="a loss and its hyperparameters, repeatable (default: softmax, modified_softmax, sphereface, "
        "cosface, arcface)",
    )
    geometry.add_argument("--embedding-size", type=int, choices=(2, 3), default=2)
    geometry.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="digits to train on")
    geometry.add_argument("--steps", type=int, default=2000, help="optimizer steps per loss")
    geometry.add_argument(
        "--holdout-fraction", type=float, default=0.5, help="share of each class kept out of training and drawn"
    )
    geometry.add_argument("--seed", type=int, default=0)
    geometry.add_argument("--max-points-per-class", type=int, default=None, help="draw at most this many points")

    for command in (target, boundaries, geometry):
        command.add_argument("--out", required=True, metavar="PATH.png", help="where to write the PNG")
        command.add_argument("--title", default=None, help="figure title (default: the figure's name)")
    return parser


def _heads(arguments: argparse.Namespace) -> Any:
    if arguments.all:
        from lightning_margin.heads import create_head, list_heads

        if arguments.figure != "decision-boundaries":
            return list_heads()
        import torch

        from lightning_margin.plots.decision_boundaries import decision_boundary

        # Every head whose two-class boundary is a curve; the others are named, not silently dropped.
        drawable = []
        for name in list_heads():
            try:
                decision_boundary(create_head(name, embedding_size=3, num_classes=2), torch.zeros(1))
            except ValueError as error:
                print(f"skipping {name}: {error}", file=sys.stderr)
            else:
                drawable.append(name)
        return drawable
    if arguments.head:
        return [parse_head_spec(spec) for spec in arguments.head]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-margin plot FIGURE --out PATH [...]``; returns the exit status."""
    parser = _build_parser()
    arguments = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    title = {} if arguments.title is None else {"title": arguments.title}
    try:
        if arguments.figure == "target-logits":
            from lightning_margin.plots.target_logits import plot_target_logits

            plot_target_logits(_heads(arguments), arguments.out, feature_norm=arguments.feature_norm, **title)
        elif arguments.figure == "decision-boundaries":
            from lightning_margin.plots.decision_boundaries import plot_decision_boundaries

            plot_decision_boundaries(
                _heads(arguments), arguments.out, space=arguments.space, feature_norm=arguments.feature_norm, **title
            )
        else:
            from lightning_margin.plots.geometry import GEOMETRY_LOSSES, plot_geometry, train_geometry_models

            specs = [parse_head_spec(spec) for spec in arguments.loss] if arguments.loss else []
            losses = [name for name, _ in specs] or list(GEOMETRY_LOSSES)
            results = train_geometry_models(
                losses,
                embedding_size=arguments.embedding_size,
                classes=arguments.classes,
                steps=arguments.steps,
                holdout_fraction=arguments.holdout_fraction,
                seed=arguments.seed,
                head_kwargs={name: kwargs for name, kwargs in specs if kwargs},
            )
            plot_geometry(results, arguments.out, max_points_per_class=arguments.max_points_per_class, **title)
            for result in results.values():
                print(f"{result.label}: {result.split} accuracy {result.accuracy:.1%}")
    except ValueError as error:
        parser.error(str(error))  # exits with status 2 and the usage line, as for any bad argument
    print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
