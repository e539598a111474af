"""Hub model cards for face embedders: build them with their verification results, and read the results back.

A card is a ``README.md`` in the Hugging Face Hub format: YAML front matter (``library_name``, ``tags``, ``license``,
``datasets``, and a ``model-index`` with one result per verification set: accuracy, its standard deviation over the
folds, TAR@FAR, EER and AUC), then how the model was trained (the exact configuration), how it was evaluated
(protocol and preprocessing), its limits and how to load it. ``lightning-margin publish`` writes it;
``lightning-margin verify`` reads the numbers back (:func:`parse_model_card`) and checks them
(:func:`compare_metrics`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from lightning_margin.data.sources import get_source_kind, parse_source
from lightning_margin.evaluation import format_table

__all__ = [
    "CARD_METRICS",
    "DEFAULT_TOLERANCE",
    "TASK_TYPE",
    "CardSet",
    "MetricMismatch",
    "build_model_card",
    "card_metric_names",
    "compare_metrics",
    "load_model_card",
    "parse_model_card",
]

#: The model-index task (the Hub's pipeline tag for embedding models); the task name says what is measured.
TASK_TYPE = "image-feature-extraction"
TASK_NAME = "Face verification"
#: Metrics written per verification set (plus one ``tar@far=...`` per false accept rate).
CARD_METRICS = ("accuracy", "accuracy_std", "eer", "auc")
#: Default largest absolute difference ``verify`` accepts between a card's metric and a re-evaluation. One pair of
#: LFW View 1 DevTest (1,000 pairs) is 0.001 of accuracy; 0.005 absorbs a few pairs whose cosine sits on the
#: threshold and flips with a different BLAS, without hiding a different model or preprocessing.
DEFAULT_TOLERANCE = 0.005
# Digits kept in the card: far below any tolerance, and readable.
_DIGITS = 6


@dataclass
class CardSet:
    """One verification set of a card's ``model-index``: how it was evaluated and the numbers.

    Attributes:
        name: The set's name (``lfw_dev_test``).
        source: The source string that rebuilds it (``lfw:dev_test``).
        flip: Whether flip test-time augmentation was used.
        num_folds: Folds of the k-fold accuracy.
        num_pairs: Number of pairs evaluated.
        metrics: ``{metric: value}`` (``accuracy``, ``accuracy_std``, ``tar@far=1e-3``, ``eer``, ``auc``).
    """

    name: str
    source: str
    flip: bool = True
    num_folds: int = 10
    num_pairs: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def far(self) -> list[float]:
        """The false accept rates of the card's ``tar@far=...`` metrics."""
        return sorted(float(key.split("=", 1)[1]) for key in self.metrics if key.startswith("tar@far="))


@dataclass
class MetricMismatch:
    """A metric whose re-evaluated value differs from the card's by more than the tolerance."""

    set_name: str
    metric: str
    card: float | None
    measured: float | None
    tolerance: float

    def __str__(self) -> str:
        def show(value: float | None) -> str:
            return "missing" if value is None else f"{value:.6f}"

        difference = (
            f"differs by {abs(self.measured - self.card):.6f}"
            if self.card is not None and self.measured is not None
            else "cannot be compared"
        )
        return (
            f"{self.set_name}: {self.metric} card {show(self.card)}, measured {show(self.measured)} ({difference}; "
            f"tolerance {self.tolerance:g})"
        )


def card_metric_names(metrics: Mapping[str, Any]) -> list[str]:
    """The metrics of an evaluation that a card records: :data:`CARD_METRICS` and every ``tar@far=...``.

    Example:
        >>> card_metric_names({"accuracy": 0.9, "threshold": 0.3, "tar@far=1e-3": 0.5, "auc": 0.95, "roc": {}})
        ['accuracy', 'tar@far=1e-3', 'auc']
    """
    return [key for key in metrics if key in CARD_METRICS or key.startswith("tar@far=")]


def _dataset_name(name: str, source: str) -> str:
    kind, argument = parse_source(source, "verification")
    title = get_source_kind(kind).title
    return title(name, argument) if title is not None else f"{name} ({kind})"


def _number(value: Any) -> float:
    number = float(value)
    return round(number, _DIGITS) if math.isfinite(number) else number


def _eval_results(
    results: Mapping[str, Mapping[str, Any]], sets: Mapping[str, str], flip: bool, num_folds: int
) -> list[EvalResult]:
    eval_results = []
    for name, metrics in results.items():
        if name not in sets:
            raise ValueError(f"results for {name!r} have no source in `sets` (sets: {sorted(sets)})")
        source = sets[name]
        kind, argument = parse_source(source, "verification")
        args = {"source": source, "flip": flip, "num_folds": num_folds}
        if metrics.get("num_pairs") is not None:
            args["num_pairs"] = int(metrics["num_pairs"])
        for metric in card_metric_names(metrics):
            eval_results.append(
                EvalResult(
                    task_type=TASK_TYPE,
                    task_name=TASK_NAME,
                    dataset_type=get_source_kind(kind).hub_dataset or kind,
                    dataset_name=_dataset_name(name, source),
                    # The set name keeps two sets of one kind (two .bin files) apart in the model-index.
                    dataset_config=name,
                    dataset_split=argument if get_source_kind(kind).split else None,
                    dataset_args=args,
                    metric_type=metric,
                    metric_name=metric,
                    metric_value=_number(metrics[metric]),
                )
            )
    return eval_results


def _channel_note(config: Mapping[str, Any]) -> str:
    order = config.get("channel_order", "RGB")
    return "" if order == "RGB" else f" (the model takes {order}: the embedder swaps the channels)"


def _preprocessing_lines(config: Mapping[str, Any]) -> list[str]:
    size = config.get("input_size")
    crop = config.get("crop_size")
    alignment = config.get("alignment")
    aligned = [
        f"- alignment: faces warped with `{alignment}` (`lightning_margin.align`) before resizing; "
        "`embedder.embed(photo)` detects and aligns photos that way"
    ]
    return [
        *(aligned if alignment else []),
        f"- input: RGB images{_channel_note(config)}, centre crop "
        f"{f'{crop}x{crop} px' if crop else 'none'}, resized to {size}x{size} (bilinear, antialiased)",
        f"- LFW pairs: centre crop {config.get('lfw_crop_size')} px of the 250x250 deep-funneled images first",
        f"- normalisation: `(pixel / 255 - mean) / std`, mean={list(config.get('mean', []))}, "
        f"std={list(config.get('std', []))}",
    ]


def _training_section(config: Mapping[str, Any]) -> str:
    training = config.get("training") or {}
    loss = config.get("loss") or "unknown"
    loss_kwargs = config.get("loss_kwargs") or {}
    hyper = ", ".join(f"{key}={value}" for key, value in loss_kwargs.items()) or "defaults"
    backbone_kwargs = f" with {config['backbone_kwargs']}" if config.get("backbone_kwargs") else ""
    lines = [
        "## Training",
        "",
        f"- loss: `{loss}` ({hyper})",
        f"- backbone: `{config.get('backbone')}`{backbone_kwargs}, neck `{config.get('neck')}`, embedding size "
        f"{config.get('embedding_size')}",
        f"- training identities: {config.get('num_classes')}",
    ]
    if training.get("global_step") is not None:
        steps, epoch = training.get("global_step"), training.get("epoch")
        lines.append(f"- optimizer steps: {steps}, epoch of the checkpoint (0-based): {epoch}")
    resolved = {key: value for key, value in training.items() if key != "config_file"}
    if training.get("config_file"):
        # The file as written (comments included) is what people copy to retrain; the resolved one follows.
        lines += ["", "The config file it was trained with:", "", "```yaml", str(training["config_file"]).rstrip()]
        lines += ["```"]
    lines += ["", "The exact resolved configuration:", "", "```yaml"]
    lines.append(yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None).rstrip() if resolved else "{}")
    lines += ["```", ""]
    return "\n".join(lines)


def build_model_card(
    config: Mapping[str, Any],
    results: Mapping[str, Mapping[str, Any]] | None = None,
    sets: Mapping[str, str] | None = None,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    flip: bool = True,
    num_folds: int = 10,
    license: str = "apache-2.0",
    tolerance: float = DEFAULT_TOLERANCE,
    limitations: Sequence[str] = (),
) -> ModelCard:
    """The Hub model card (Mitchell et al., "Model Cards for Model Reporting", 2019) of a face embedder.

    Args:
        config: The embedder's ``config`` (``FaceEmbedder.config``): backbone, preprocessing, loss, training config.
        results: ``{set name: metrics}`` as :func:`~lightning_margin.evaluation.evaluate_pairs` returns them.
        sets: ``{set name: source string}`` of the evaluated sets (``{"lfw_dev_test": "lfw:dev_test"}``).
        model_name: Name in the ``model-index`` and the title (default: ``repo_id``, else the loss and backbone).
        repo_id: The Hub repository (``ORG/NAME``), used in the loading and verification instructions.
        flip: Whether the results used flip test-time augmentation.
        num_folds: Folds of the k-fold accuracy.
        license: The card's license identifier.
        tolerance: The tolerance ``lightning-margin verify`` is documented to use.
        limitations: Extra limitation bullet points (the standard ones are always included).

    Returns:
        A :class:`huggingface_hub.ModelCard`; ``card.save("README.md")`` writes it, ``str(card)`` is its text.

    Example:
        >>> config = {"backbone": "iresnet18", "embedding_size": 512, "input_size": 112, "loss": "arcface"}
        >>> metrics = {"accuracy": 0.95, "accuracy_std": 0.01, "tar@far=1e-3": 0.6, "eer": 0.05, "auc": 0.98}
        >>> card = build_model_card(config, {"lfw_dev_test": metrics}, {"lfw_dev_test": "lfw:dev_test"})
        >>> card.data.library_name, parse_model_card(card)["lfw_dev_test"].metrics["accuracy"]
        ('lightning-margin', 0.95)
    """
    results = dict(results or {})
    sets = dict(sets or {})
    loss = config.get("loss") or "margin"
    name = model_name or repo_id or f"{loss}-{config.get('backbone', 'model')}"
    kinds = {parse_source(source, "verification").kind for source in sets.values()}
    training_data = ((config.get("training") or {}).get("data") or {}).get("train")
    if isinstance(training_data, str):
        with contextlib.suppress(ValueError):  # the card of a model trained on an unregistered kind still builds
            kinds.add(parse_source(training_data).kind)
    datasets = sorted({dataset for kind in kinds if (dataset := get_source_kind(kind).hub_dataset)})
    eval_results = _eval_results(results, sets, flip, num_folds) if results else None
    # Weights imported from another project (lightning-margin import) keep that project's terms, not ours.
    imported = (config.get("training") or {}).get("imported") or {}
    if imported.get("license"):
        license = "other" if license == "apache-2.0" else license
        limitations = [f"Weights imported from {imported.get('source')}: {imported['license']}.", *limitations]
    data = ModelCardData(
        library_name="lightning-margin",
        license=license,
        pipeline_tag=TASK_TYPE,
        tags=sorted({"face-recognition", "face-verification", "lightning-margin", str(loss)}),
        datasets=datasets or None,
        metrics=["accuracy", "eer", "roc_auc"] if results else None,
        model_name=name,
        eval_results=eval_results,
    )

    load_id = repo_id or "ORG/NAME"
    far_keys = sorted({key for metrics in results.values() for key in metrics if key.startswith("tar@far=")})
    origin = f"trained with the `{loss}` loss using lightning-margin"
    if imported:
        origin = f"imported from {imported.get('source')} ({imported.get('arch')}, `{imported.get('file')}`)"
    sections = [
        f"# {name}",
        "",
        f"A face embedder {origin}: backbone and embedding neck, "
        f"{config.get('embedding_size')}-d L2-normalised embeddings compared by cosine similarity.",
        "",
        "## Results",
        "",
    ]
    if results:
        table = {f"{key} ({sets[key]})": value for key, value in results.items()}
        sections += [format_table(table, name_header="verification set"), ""]
        sections.append(
            f"Accuracy is the {num_folds}-fold accuracy (threshold chosen on the other folds), `accuracy_std` its "
            f"standard deviation over the folds; {', '.join(far_keys) or 'TAR@FAR'}: true accept rate at that false "
            "accept rate; EER: equal error rate; AUC: area under the ROC curve."
        )
    else:
        sections.append("Not evaluated yet: `lightning-margin publish` adds the verification results.")
    sections += [
        "",
        "## How to use",
        "",
        "```python",
        "from PIL import Image",
        "from lightning_margin.embedder import FaceEmbedder",
        "",
        f'embedder = FaceEmbedder.from_pretrained("{load_id}")',
        'embeddings = embedder.embed([Image.open("a.jpg"), Image.open("b.jpg")])  # preprocessing + flip TTA',
        "similarity = (embeddings[0] @ embeddings[1]).item()  # cosine similarity; higher = same person",
        "```",
        "",
        _training_section(config),
        "## Evaluation",
        "",
        f"- protocol: every pair embedded {'with' if flip else 'without'} flip test-time augmentation (the "
        "normalised sum of the embeddings of the image and its mirror), scored by cosine similarity; "
        f"{num_folds}-fold accuracy as in the LFW protocol (consecutive folds of the pair list)",
        *_preprocessing_lines(config),
        f"- reproduce: `lightning-margin verify --model {load_id}` re-evaluates every set above and fails when a "
        f"metric differs from this card by more than {tolerance:g} (absolute)",
        "",
        "## Limitations",
        "",
        "- Verification numbers hold for the listed sets and preprocessing only; faces must be roughly centred and "
        "cropped like the training images (see Evaluation).",
        "- Face recognition performance differs across demographic groups, image quality, pose and age; LFW is "
        "small, celebrity-heavy and not representative. Do not use this model for decisions about people without an "
        "evaluation on the target population.",
        *(f"- {text}" for text in limitations),
        "",
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections)
    return ModelCard(content)


def load_model_card(path_or_text: str | os.PathLike[str]) -> ModelCard:
    """A card from a ``README.md`` path, or from the card's text."""
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text and Path(path_or_text).is_file()
    ):
        return ModelCard.load(Path(path_or_text))
    return ModelCard(str(path_or_text))


def parse_model_card(card: ModelCard | str | os.PathLike[str]) -> dict[str, CardSet]:
    """The verification results of a card's ``model-index``, by set name.

    Results that are not face verification results (another task type) are ignored.

    Raises:
        ValueError: if a verification result has no ``source`` in its dataset ``args`` (then it cannot be re-run),
            or a metric value is not a number.
    """
    if not isinstance(card, ModelCard):
        card = load_model_card(card)
    sets: dict[str, CardSet] = {}
    for result in card.data.eval_results or []:
        if result.task_type != TASK_TYPE:
            continue
        args = result.dataset_args or {}
        name = result.dataset_config or result.dataset_type
        source = args.get("source")
        if not source:
            raise ValueError(f"model card result {name!r} has no dataset args.source: it cannot be re-evaluated")
        entry = sets.get(name)
        if entry is None:
            entry = sets[name] = CardSet(
                name=name,
                source=str(source),
                flip=bool(args.get("flip", True)),
                num_folds=int(args.get("num_folds", 10)),
                num_pairs=args.get("num_pairs"),
            )
        try:
            entry.metrics[result.metric_type] = float(result.metric_value)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"model card result {name!r}: {result.metric_type} = {result.metric_value!r} is not a number"
            ) from error
    return sets


def compare_metrics(
    card: Mapping[str, CardSet],
    measured: Mapping[str, Mapping[str, Any]],
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[MetricMismatch]:
    """The metrics of the card's sets that a re-evaluation does not reproduce within ``tolerance`` (absolute).

    Only sets present in both are compared; every metric of such a card set must be in the measurement, and a
    non-finite value on either side counts as a mismatch unless both are the same non-finite value.

    Example:
        >>> card = {"lfw": CardSet("lfw", "lfw:dev_test", metrics={"accuracy": 0.95, "eer": 0.05})}
        >>> [str(m) for m in compare_metrics(card, {"lfw": {"accuracy": 0.951, "eer": 0.07}}, tolerance=0.005)]
        ['lfw: eer card 0.050000, measured 0.070000 (differs by 0.020000; tolerance 0.005)']
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"`tolerance` must be a finite number >= 0, got {tolerance!r}")
    mismatches = []
    for name, entry in card.items():
        if name not in measured:
            continue
        for metric, expected in entry.metrics.items():
            value = measured[name].get(metric)
            value = None if value is None else float(value)
            if value is not None and (
                (math.isnan(value) and math.isnan(expected)) or value == expected or abs(value - expected) <= tolerance
            ):
                continue
            mismatches.append(MetricMismatch(name, metric, expected, value, float(tolerance)))
    return mismatches
