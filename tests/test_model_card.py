"""Model cards: Hub YAML front matter with one model-index result per verification set, parsed back and compared."""

from __future__ import annotations

import math

import pytest
import yaml

from lightning_margin.model_card import (
    CardSet,
    build_model_card,
    compare_metrics,
    parse_model_card,
)

CONFIG = {
    "backbone": "iresnet18",
    "embedding_size": 512,
    "neck": "bn_dropout_fc_bn",
    "backbone_kwargs": {"img_size": 112},
    "input_size": 112,
    "crop_size": 150,
    "lfw_crop_size": 150,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "channel_order": "RGB",
    "loss": "arcface",
    "loss_kwargs": {"scale": 32.0, "margin": 0.5},
    "num_classes": 1184,
    "training": {
        "model": {"head": "arcface", "head_kwargs": {"scale": 32.0, "margin": 0.5}, "far": [0.001]},
        "data": {"train": "lfw:dev_train", "image_size": 112, "min_images_per_identity": 2},
        "global_step": 900,
        "epoch": 20,
    },
}
LFW = {"accuracy": 0.9123456789, "accuracy_std": 0.0123, "threshold": 0.31, "tar@far=1e-3": 0.4, "eer": 0.09}
LFW |= {"auc": 0.95, "num_pairs": 1000, "roc": {"fpr": [0.0, 1.0]}}
BIN = {"accuracy": 0.8, "accuracy_std": 0.02, "tar@far=1e-3": 0.1, "eer": 0.2, "auc": 0.85, "num_pairs": 600}
SETS = {"lfw_dev_test": "lfw:dev_test", "cfp": "bin:/data/cfp_fp.bin"}


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---", 4)])


def test_front_matter_has_hub_fields_and_one_result_per_set_with_every_metric():
    card = build_model_card(CONFIG, {"lfw_dev_test": LFW, "cfp": BIN}, SETS, repo_id="org/arcface-r18")
    metadata = front_matter(str(card))
    assert metadata["library_name"] == "lightning-margin"
    assert metadata["license"] == "apache-2.0"
    assert metadata["datasets"] == ["lfw"]
    assert {"face-recognition", "face-verification", "arcface"} <= set(metadata["tags"])
    (model,) = metadata["model-index"]
    assert model["name"] == "org/arcface-r18"
    assert [result["dataset"]["config"] for result in model["results"]] == ["lfw_dev_test", "cfp"]
    lfw = model["results"][0]
    assert lfw["dataset"]["args"] == {"source": "lfw:dev_test", "flip": True, "num_folds": 10, "num_pairs": 1000}
    assert lfw["dataset"]["split"] == "dev_test"
    values = {metric["type"]: metric["value"] for metric in lfw["metrics"]}
    # The card's metrics only (no threshold, no curve), rounded to 6 digits.
    assert values == {"accuracy": 0.912346, "accuracy_std": 0.0123, "tar@far=1e-3": 0.4, "eer": 0.09, "auc": 0.95}


def test_body_has_results_training_config_evaluation_limits_and_loading():
    card = build_model_card(CONFIG, {"lfw_dev_test": LFW}, {"lfw_dev_test": "lfw:dev_test"}, repo_id="org/m")
    body = card.text
    for heading in ("## Results", "## How to use", "## Training", "## Evaluation", "## Limitations"):
        assert heading in body
    assert 'FaceEmbedder.from_pretrained("org/m")' in body
    assert "| lfw_dev_test (lfw:dev_test) | 0.9123" in body
    assert "- loss: `arcface` (scale=32.0, margin=0.5)" in body
    assert "centre crop 150x150 px, resized to 112x112" in body
    assert "lightning-margin verify --model org/m" in body
    # The exact training configuration, as YAML that parses back to the recorded dict.
    start = body.index("```yaml\n") + len("```yaml\n")
    assert yaml.safe_load(body[start : body.index("```", start)]) == CONFIG["training"]


def test_parse_reads_back_what_was_written():
    card = build_model_card(CONFIG, {"lfw_dev_test": LFW, "cfp": BIN}, SETS, flip=False, num_folds=5)
    parsed = parse_model_card(str(card))
    assert list(parsed) == ["lfw_dev_test", "cfp"]
    assert parsed["cfp"] == CardSet(
        name="cfp",
        source="bin:/data/cfp_fp.bin",
        flip=False,
        num_folds=5,
        num_pairs=600,
        metrics={"accuracy": 0.8, "accuracy_std": 0.02, "tar@far=1e-3": 0.1, "eer": 0.2, "auc": 0.85},
    )
    assert parsed["lfw_dev_test"].far == [0.001]


def test_card_without_results_and_bad_input():
    card = build_model_card(CONFIG)
    assert "model-index" not in front_matter(str(card)) and parse_model_card(card) == {}
    with pytest.raises(ValueError, match="no source in `sets`"):
        build_model_card(CONFIG, {"lfw_dev_test": LFW}, {})
    text = str(build_model_card(CONFIG, {"lfw_dev_test": LFW}, {"lfw_dev_test": "lfw:dev_test"}))
    with pytest.raises(ValueError, match="no dataset args.source"):
        parse_model_card(text.replace("source: lfw:dev_test", "origin: lfw:dev_test"))
    with pytest.raises(ValueError, match="is not a number"):
        parse_model_card(text.replace("value: 0.09\n", "value: high\n"))


def test_other_tasks_in_the_model_index_are_ignored():
    text = str(build_model_card(CONFIG, {"lfw_dev_test": LFW}, {"lfw_dev_test": "lfw:dev_test"}))
    assert parse_model_card(text.replace("type: image-feature-extraction", "type: image-classification")) == {}


def test_compare_metrics_flags_differences_beyond_the_tolerance_only():
    card = {"lfw": CardSet("lfw", "lfw:dev_test", metrics={"accuracy": 0.9, "eer": 0.1, "auc": math.nan})}
    assert compare_metrics(card, {"lfw": {"accuracy": 0.904, "eer": 0.0961, "auc": math.nan}}, tolerance=0.005) == []
    mismatches = compare_metrics(card, {"lfw": {"accuracy": 0.906, "auc": 0.5}}, tolerance=0.005)
    assert [(m.metric, m.card, m.measured) for m in mismatches] == [
        ("accuracy", 0.9, 0.906),
        ("eer", 0.1, None),
        ("auc", card["lfw"].metrics["auc"], 0.5),
    ]
    assert str(mismatches[0]) == "lfw: accuracy card 0.900000, measured 0.906000 (differs by 0.006000; tolerance 0.005)"
    assert compare_metrics(card, {"other": {"accuracy": 0.0}}) == []  # sets not re-evaluated are not compared
    assert compare_metrics(card, {"lfw": {"accuracy": 0.9, "eer": 0.1, "auc": math.nan}}, tolerance=0) == []
    with pytest.raises(ValueError, match="tolerance"):
        compare_metrics(card, {}, tolerance=-1)


def test_the_config_file_is_shown_verbatim_and_not_repeated_in_the_resolved_config():
    written = "# ArcFace, small data\nmodel:\n  head: arcface  # the loss\n  head_kwargs: {scale: 16.0, margin: 0.3}\n"
    config = {**CONFIG, "training": {**CONFIG["training"], "config_file": written}}
    text = str(build_model_card(config, {"lfw_dev_test": LFW}, {"lfw_dev_test": "lfw:dev_test"}))
    assert "```yaml\n" + written.rstrip() + "\n```" in text  # comments and layout kept
    resolved = text.split("The exact resolved configuration:")[1].split("```yaml\n")[1].split("```")[0]
    assert "config_file" not in resolved and yaml.safe_load(resolved)["global_step"] == 900
