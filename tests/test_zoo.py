"""The model zoo: every config instantiates, all share one recipe, and every exported model reproduces its card."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_margin.cli import MarginCLI
from lightning_margin.data import FaceDataModule
from lightning_margin.heads import list_heads
from lightning_margin.heads.registry import recorded_head_name
from lightning_margin.model_card import DEFAULT_TOLERANCE
from lightning_margin.module import MarginModule
from lightning_margin.verify import load_model, verify_models

ZOO = Path(__file__).resolve().parents[1] / "zoo"
CONFIGS = sorted(ZOO.glob("*/config.yaml"))
EXPORTED = sorted(path.parent for path in ZOO.glob("*/metrics.json"))
SYNTHETIC = [
    "--data.train=synthetic:8",
    "--data.val_sets={synthetic: 'synthetic:8'}",
    "--data.batch_size=4",
    "--data.val_batch_size=4",
    "--trainer.fast_dev_run=true",
]


def test_the_zoo_covers_every_loss_family() -> None:
    heads = {recorded_head_name(yaml.safe_load(path.read_text())["model"]["head"]) for path in CONFIGS}
    assert heads <= set(list_heads())
    families = {"softmax", "sphereface", "cosface", "arcface", "combined"}
    modern = {"subcenter_arcface", "curricularface", "adaface", "magface"}
    assert families | modern <= heads, f"missing: {sorted(families | modern - heads)}"
    assert {path.parent.name for path in CONFIGS} == heads  # zoo/<head>/config.yaml


def _recipe(config: dict) -> dict:
    """The config minus what may differ between losses: the head, its hyperparameters and the head's callbacks."""
    recipe = copy.deepcopy(config)
    del recipe["model"]["head"]
    callbacks = recipe["trainer"]["callbacks"]
    recipe["trainer"]["callbacks"] = [c for c in callbacks if not c["class_path"].startswith("lightning_margin")]
    return recipe


def test_every_loss_trains_with_the_same_backbone_data_schedule_and_budget() -> None:
    recipes = {path.parent.name: _recipe(yaml.safe_load(path.read_text())) for path in CONFIGS}
    reference = recipes["softmax"]
    for name, recipe in recipes.items():
        assert recipe == reference, f"zoo/{name}/config.yaml departs from the shared recipe"
    # The cosine schedule spans the whole run: T_max = epochs x steps per epoch of the 1,184-person DevTrain set.
    steps_per_epoch = 6671 // reference["data"]["batch_size"]
    t_max = reference["model"]["lr_scheduler"]["init_args"]["T_max"]
    assert t_max == reference["trainer"]["max_epochs"] * steps_per_epoch


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.parent.name)
def test_every_zoo_config_instantiates_and_takes_a_step(config: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = MarginCLI(MarginModule, FaceDataModule, args=["fit", "--config", str(config), *SYNTHETIC])
    assert cli.model.head.head_name == config.parent.name
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("folder", EXPORTED, ids=lambda path: path.name)
def test_every_zoo_model_reproduces_its_card_on_dev_test(folder: Path, lfw_root: Path) -> None:
    model = load_model(folder)
    assert model.card_sets, f"{folder}/README.md has no model-index results"
    report = verify_models([model], data_root=lfw_root.parent, progress=False, batch_size=250)
    assert report.compared and not report.mismatches, report.mismatches
    # The folder's metrics.json is the card's source: the re-evaluation matches it too.
    recorded = json.loads((folder / "metrics.json").read_text())["lfw_dev_test"]
    measured = report.rows[model.name]
    for metric in ("accuracy", "eer", "auc"):
        assert abs(measured[metric] - recorded[metric]) <= DEFAULT_TOLERANCE, metric


def test_the_zoo_table_lists_every_exported_model() -> None:
    if not EXPORTED:
        pytest.skip("no zoo model is exported yet (python zoo/build.py export)")
    table = (ZOO / "README.md").read_text()
    for folder in EXPORTED:
        accuracy = json.loads((folder / "metrics.json").read_text())["lfw_dev_test"]["accuracy"]
        assert f"[{folder.name}]({folder.name}/) " in table and f"{accuracy:.4f}" in table
