"""The `lightning-margin` command: every config instantiates and runs one fast_dev_run step on CPU."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_margin import FaceEmbedder
from lightning_margin.cli import MarginCLI, main
from lightning_margin.data import FaceDataModule
from lightning_margin.heads import ArcFace, CosFace, MarginHead
from lightning_margin.module import MarginModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Full configs (one per loss + the quick start); trainer.yaml and data/*.yaml are pieces they include.
LOSS_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "trainer.yaml")
ZOO_CONFIGS = sorted((CONFIGS.parent / "zoo").glob("*/config.yaml"))
# Any source works for instantiating: synthetic identities stand in for LFW (which these tests do not need).
SYNTHETIC = ["--data.train=synthetic:8", "--data.val_sets={synthetic: 'synthetic:8'}", "--data.num_workers=0"]
SMALL = ["--data.batch_size=2", "--data.val_batch_size=2", "--data.num_workers=0", "--trainer.accelerator=cpu"]


def assert_head_is_the_configs(head: MarginHead, config: dict) -> None:
    """The built head is the YAML's class, with the YAML's init_args (the rest at the class's defaults)."""
    assert type(head).__name__ == config["class_path"].rsplit(".", 1)[-1]
    assert config.get("init_args", {}).items() <= head.hparams.items()


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
    assert_head_is_the_configs(cli.model.head, yaml.safe_load(data_env.read_text())["model"]["head"])
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    # Safe by default: every run stops at a NaN with a report and resumes bitwise.
    callbacks = {type(callback).__name__ for callback in cli.trainer.callbacks}
    assert {"NonFiniteGuard", "RNGStateCheckpoint", "ROCFigure"} <= callbacks


def test_unknown_config_key_fails_before_training_and_names_the_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--model.head_kwargz={}"])
    assert exit_info.value.code != 0
    assert "head_kwargz" in capsys.readouterr().err


def test_an_unknown_head_class_fails_in_the_parser_naming_the_key(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--model.head=cosfaec"])
    err = capsys.readouterr().err
    assert 'Parser key "model.head"' in err and "cosfaec" in err


def test_tools_are_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "lightning-margin data" in out and "lightning-margin plot" in out and "fit" in out


@pytest.mark.parametrize("config", LOSS_CONFIGS + ZOO_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_yaml_parses_and_instantiates_its_head_and_callbacks(config, tmp_path, monkeypatch):
    # Without LFW too: only the data source is replaced. The head is the YAML's, recorded as the head reports it.
    monkeypatch.chdir(tmp_path)
    cli = MarginCLI(MarginModule, FaceDataModule, args=["--config", str(config), *SYNTHETIC], run=False)
    written = yaml.safe_load(config.read_text())
    assert_head_is_the_configs(cli.model.head, written["model"]["head"])
    assert cli.model.hparams["head"]["init_args"] == cli.model.head.hparams
    assert (
        isinstance(cli.model.backbone, torch.nn.Module)
        and cli.model.hparams["backbone"] == written["model"]["backbone"]
    )
    names = {type(callback).__name__ for callback in cli.trainer.callbacks}
    assert "ROCFigure" in names  # every config draws the ROC curves (the module draws none)


def test_one_head_hyperparameter_is_overridden_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(CONFIGS / "quickstart.yaml"), *SYNTHETIC, "--model.head.init_args.margin", "0.4"]
    head = MarginCLI(MarginModule, FaceDataModule, args=args, run=False).model.head
    assert type(head) is ArcFace and (head.margin, head.scale) == (0.4, 32.0)  # the YAML's scale stays


def test_a_short_class_path_resolves_to_the_head_class(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    head = "--model.head={class_path: CosFace, init_args: {scale: 16.0, margin: 0.2}}"
    module = MarginCLI(
        MarginModule, FaceDataModule, args=["--config", str(CONFIGS / "quickstart.yaml"), *SYNTHETIC, head], run=False
    ).model
    assert type(module.head) is CosFace and (module.head.scale, module.head.margin) == (16.0, 0.2)
    assert module.hparams["head"] == {
        "class_path": "lightning_margin.heads.CosFace",
        "init_args": {"scale": 16.0, "margin": 0.2},
    }


@pytest.mark.parametrize("value", ["abc", "[0.5]"])
def test_a_mistyped_head_hyperparameter_fails_in_the_parser_naming_the_key(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), f"--model.head.init_args.margin={value}"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert 'Parser key "model.head"' in err and 'Parser key "margin"' in err and "float" in err


def test_head_help_lists_its_typed_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.head.help", "ArcFace"])
    out = capsys.readouterr().out
    for line in ("(type: float, default: 64.0)", "(type: float, default: 0.5)", "(type: bool, default: False)"):
        assert line in out


def test_fit_help_stays_readable(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 600
    assert "--model.backbone BACKBONE" in out and "torch.nn.Conv2d" not in out  # a timm name, not any nn.Module
    assert "--model.head_kwargs" not in out and "--model.head.help" in out


def test_the_exported_embedder_records_the_heads_name_and_hyperparameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        *SYNTHETIC,
        "--data.batch_size=4",
        "--model.head.init_args.margin=0.4",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    assert main(args) == 0
    FaceEmbedder.from_checkpoint(tmp_path / "checkpoints" / "quickstart" / "last.ckpt").save_pretrained(
        tmp_path / "out"
    )
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    # The registry name and every constructor argument, the default easy_margin included: what rebuilds the head.
    assert config["loss"] == "arcface"
    assert config["loss_kwargs"] == {"scale": 32.0, "margin": 0.4, "easy_margin": False, "gradient": "exact"}
