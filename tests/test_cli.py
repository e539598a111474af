"""The `lightning-margin` command: every config instantiates and runs one fast_dev_run step on CPU."""

from pathlib import Path

import pytest
import torch

from lightning_margin.cli import MarginCLI, main
from lightning_margin.data import FaceDataModule
from lightning_margin.module import MarginModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Full configs (one per loss + the quick start); trainer.yaml and data/*.yaml are pieces they include.
LOSS_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "trainer.yaml")
SMALL = ["--data.batch_size=2", "--data.val_batch_size=2", "--data.num_workers=0", "--trainer.accelerator=cpu"]


def needs_lfw(config: Path) -> bool:
    return "data/lfw.yaml" in config.read_text()


@pytest.fixture
def data_env(request, monkeypatch, tmp_path):
    config = request.param
    if needs_lfw(config):
        request.getfixturevalue("lfw_root")  # skips, with the reason, when LFW is not available
    monkeypatch.chdir(tmp_path)  # lightning_logs/ and checkpoints go to a temporary folder
    return config


def test_every_loss_has_a_config():
    from lightning_margin.heads import list_heads

    missing = set(list_heads()) - {p.stem for p in LOSS_CONFIGS}
    assert not missing, f"heads without a config in configs/: {sorted(missing)}"


@pytest.mark.parametrize("data_env", LOSS_CONFIGS, ids=lambda p: p.stem, indirect=True)
def test_every_config_instantiates_and_trains_one_fast_dev_run_step(data_env):
    cli = MarginCLI(
        MarginModule, FaceDataModule, args=["fit", "--config", str(data_env), "--trainer.fast_dev_run=true", *SMALL]
    )
    assert cli.model.head.num_classes == cli.datamodule.num_classes  # linked, never repeated in the YAML
    assert cli.model.head.head_name == cli.config["fit"]["model"]["head"]
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    # Safe by default: every run stops at a NaN with a report and resumes bitwise.
    callbacks = {type(callback).__name__ for callback in cli.trainer.callbacks}
    assert {"NonFiniteGuard", "RNGStateCheckpoint"} <= callbacks


def test_unknown_config_key_fails_before_training_and_names_the_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--model.head_kwargz={}"])
    assert exit_info.value.code != 0
    assert "head_kwargz" in capsys.readouterr().err


def test_unknown_head_in_a_config_names_the_registered_heads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="available heads: .*cosface"):
        MarginCLI(
            MarginModule,
            FaceDataModule,
            args=["--config", str(CONFIGS / "quickstart.yaml"), "--model.head=cosfaec"],
            run=False,
        )


def test_tools_are_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "lightning-margin data" in out and "lightning-margin plot" in out and "fit" in out
