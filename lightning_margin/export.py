"""``lightning-margin export``: turn a training checkpoint into a FaceEmbedder folder (safetensors + config), and ONNX.

``lightning-margin export runs/arcface/last.ckpt out/arcface`` writes ``model.safetensors``, ``config.json`` and a
``README.md`` card; ``--onnx`` adds ``model.onnx``. Its layout (:data:`ONNX_LAYOUTS`, ``--layout``):

* ``lightning-margin`` (default): input ``images`` ``[B, 3, H, W]``, the batch preprocessed as the embedder's
  config says (RGB, its mean and std); output ``embeddings`` ``[B, embedding_size]``, L2-normalised.
* ``insightface``: what insightface's runtime (``insightface.model_zoo``'s ``ArcFaceONNX``) takes: input
  ``input.1`` ``[None, 3, H, W]`` in insightface's own normalisation (its ``get_feat``: RGB,
  ``(pixel - 127.5) / 127.5``; the graph converts to the embedder's if that differs), output ``embedding``, the raw
  (not normalised) embedding, whose norm insightface reports as a quality signal. A BGR model (AdaFace) swaps the
  channels inside the graph.

No flip augmentation in either: run the mirror image through it too and add the embeddings if you want it.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_margin._atomic import atomic_path
from lightning_margin._validation import check_choice
from lightning_margin.artifacts import load_embedder
from lightning_margin.embedder import FaceEmbedder

__all__ = [
    "ONNX_LAYOUTS",
    "ONNX_NAME",
    "OnnxLayout",
    "export",
    "export_onnx",
    "main",
    "record_config_file",
    "save_export",
]

#: File name of the ONNX model inside an exported folder.
ONNX_NAME = "model.onnx"


@dataclass(frozen=True)
class OnnxLayout:
    """How an exported ONNX graph presents itself to the runtime that will run it.

    Attributes:
        input_name: Name of the image input.
        output_name: Name of the embedding output.
        batch_axis: Name of the dynamic batch dimension.
        normalized_output: L2-normalise the embedding in the graph (else the raw embedding, norm included).
        input_normalization: ``(mean, std)`` in ``[0, 1]`` units (RGB) that the input arrives in; ``None``: the
            embedder's own. When it differs from the embedder's, the graph starts with the per-channel affine map
            between the two.
        min_side: Smallest input side the runtime accepts, or 0.
        side_multiple: The input side must be a multiple of this (1: any).
    """

    input_name: str
    output_name: str
    batch_axis: str
    normalized_output: bool
    input_normalization: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    min_side: int = 0
    side_multiple: int = 1


#: The ONNX layouts ``export --onnx --layout NAME`` writes.
ONNX_LAYOUTS: dict[str, OnnxLayout] = {
    "lightning-margin": OnnxLayout("images", "embeddings", "batch", normalized_output=True),
    # insightface's ArcFaceONNX feeds blobFromImages(img, 1/127.5, size, (127.5,)*3, swapRB=True): RGB, mean = std =
    # 0.5 in [0, 1] units. Its model router takes a recognition model for a square input >= 112, multiple of 16. The
    # input name is the one of insightface's released recognition models (buffalo_l's w600k_r50.onnx: "input.1"),
    # the batch axis is named "None" as arcface_torch's torch2onnx writes it.
    "insightface": OnnxLayout(
        "input.1",
        "embedding",
        "None",
        normalized_output=False,
        input_normalization=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        min_side=112,
        side_multiple=16,
    ),
}


class _OnnxGraph(nn.Module):
    """The graph ONNX gets: images in the layout's normalisation -> the layout's embeddings."""

    def __init__(self, embedder: FaceEmbedder, layout: OnnxLayout) -> None:
        super().__init__()
        self.embedder = embedder
        self.normalized_output = layout.normalized_output
        # x_layout = (p - m_l) / s_l and x_model = (p - m) / s, so x_model = x_layout * s_l / s + (m_l - m) / s.
        mean, std = layout.input_normalization or (embedder.mean, embedder.std)
        scale = torch.tensor(std) / torch.tensor(embedder.std)
        shift = (torch.tensor(mean) - torch.tensor(embedder.mean)) / torch.tensor(embedder.std)
        self.adapt = not (torch.equal(scale, torch.ones(3)) and torch.equal(shift, torch.zeros(3)))
        # Multiply and add (no Sub node): insightface reads a Sub and a Mul among the first nodes as "this graph
        # normalises its input itself" and would then feed raw pixels.
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if self.adapt:
            images = images * self.scale + self.shift
        embeddings = self.embedder(images)
        return F.normalize(embeddings, dim=1) if self.normalized_output else embeddings


def export_onnx(
    embedder: FaceEmbedder, path: str | os.PathLike[str], opset_version: int = 17, layout: str = "lightning-margin"
) -> Path:
    """Export an embedder to ONNX in one of :data:`ONNX_LAYOUTS` (see the module docstring).

    With the default layout the output is ``embedder.embed(images, flip=False, preprocessed=True)``; with
    ``"insightface"`` it is ``embedder(images)``, the raw embedding, of images normalised as insightface's
    ``get_feat`` does. The batch axis is dynamic. Uses torch's TorchScript-based exporter (``dynamo=False``), which
    needs only the ``onnx`` package (the dynamo exporter also needs ``onnxscript``).

    Raises:
        ValueError: an unknown layout, or an input size the layout's runtime does not accept.

    Example:
        >>> import tempfile
        >>> embedder = FaceEmbedder("test_resnet", embedding_size=8, neck="fc_bn", input_size=32)
        >>> export_onnx(embedder, f"{tempfile.mkdtemp()}/model.onnx").name
        'model.onnx'
    """
    check_choice("layout", layout, ONNX_LAYOUTS)
    spec = ONNX_LAYOUTS[layout]
    size = embedder.input_size
    if size < spec.min_side or size % spec.side_multiple:
        raise ValueError(
            f"the {layout} ONNX layout needs an input side >= {spec.min_side} and a multiple of {spec.side_multiple} "
            f"(what its runtime takes for a recognition model), but the embedder's input_size is {size}"
        )
    path = Path(path)
    was_training = embedder.training
    embedder.eval()
    graph = _OnnxGraph(embedder, spec).to(embedder._device())
    example = torch.zeros(2, 3, size, size, device=embedder._device())
    try:
        with warnings.catch_warnings(), atomic_path(path) as temporary:
            # The TorchScript exporter announces its deprecation on every call; the choice is documented above.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                graph,
                (example,),
                str(temporary),
                input_names=[spec.input_name],
                output_names=[spec.output_name],
                dynamic_axes={spec.input_name: {0: spec.batch_axis}, spec.output_name: {0: spec.batch_axis}},
                opset_version=opset_version,
                dynamo=False,
            )
    finally:
        embedder.train(was_training)
    return path


def record_config_file(embedder: FaceEmbedder, config_file: str | os.PathLike[str]) -> None:
    """Record a training config file's text in the embedder's config (``training.config_file``), shown in its card."""
    training = embedder.config.get("training") or {}
    training["config_file"] = Path(config_file).read_text(encoding="utf-8")
    embedder.config["training"] = training


def save_export(
    embedder: FaceEmbedder, folder: str | os.PathLike[str], *, onnx: bool = False, layout: str = "lightning-margin"
) -> Path:
    """Write an embedder's export files to ``folder``: ``save_pretrained``'s files and, with ``onnx``, ``model.onnx``
    in the ONNX ``layout``.

    Example:
        >>> import tempfile
        >>> embedder = FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=32)
        >>> sorted(path.name for path in save_export(embedder, f"{tempfile.mkdtemp()}/out").iterdir())
        ['README.md', 'config.json', 'model.safetensors']
    """
    folder = Path(folder)
    check_choice("layout", layout, ONNX_LAYOUTS)
    embedder.save_pretrained(folder)
    if onnx:
        export_onnx(embedder, folder / ONNX_NAME, layout=layout)
    return folder


def export(
    source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    onnx: bool = False,
    config_file: str | os.PathLike[str] | None = None,
    layout: str = "lightning-margin",
) -> FaceEmbedder:
    """Write the FaceEmbedder of a checkpoint (or an exported folder) to ``output_dir``.

    Args:
        source: A Lightning checkpoint of :class:`~lightning_margin.MarginModule` (opened with
            ``weights_only=True``), an exported folder or a Hub id (:func:`~lightning_margin.artifacts.load_embedder`).
        output_dir: Receives ``model.safetensors``, ``config.json``, ``README.md`` (kept if it exists) and, with
            ``onnx``, ``model.onnx``.
        onnx: Also export ONNX (:func:`export_onnx`).
        config_file: The training config file (e.g. the LightningCLI YAML); its text is recorded in ``config.json``
            under ``training.config_file`` and shown in the card.
        layout: The ONNX layout (:data:`ONNX_LAYOUTS`): ``"lightning-margin"`` or ``"insightface"``.

    Returns:
        The embedder that was written.
    """
    embedder = load_embedder(source)
    if config_file is not None:
        record_config_file(embedder, config_file)
    save_export(embedder, output_dir, onnx=onnx, layout=layout)
    return embedder


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-margin export``."""
    parser = argparse.ArgumentParser(
        prog="lightning-margin export",
        description="Export a MarginModule checkpoint as a FaceEmbedder folder (safetensors, config.json, card).",
    )
    parser.add_argument("source", help="a Lightning checkpoint (.ckpt) or an exported folder")
    parser.add_argument("output_dir", help="the folder to write")
    parser.add_argument("--onnx", action="store_true", help=f"also write {ONNX_NAME}")
    parser.add_argument("--config", dest="config_file", help="the training config file, recorded in the card")
    parser.add_argument(
        "--layout",
        choices=list(ONNX_LAYOUTS),
        help="the ONNX layout (with --onnx): lightning-margin (default; normalised output) or insightface (its "
        "ArcFaceONNX's input and normalisation, raw embedding out)",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.layout and not args.onnx:
        parser.error("--layout describes the ONNX file: add --onnx")
    layout = args.layout or "lightning-margin"
    embedder = export(args.source, args.output_dir, onnx=args.onnx, config_file=args.config_file, layout=layout)
    files = sorted(path.name for path in Path(args.output_dir).iterdir() if path.is_file())
    loss = f" ({embedder.config['loss']})" if embedder.config.get("loss") else ""
    print(f"exported {embedder.config['backbone']}{loss} to {args.output_dir}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
