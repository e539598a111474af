"""Importing AdaFace Lightning checkpoints: the embedder gives AdaFace's embedding from RGB images.

AdaFace's ``net.py`` networks are rebuilt in :mod:`tests.source_nets` from its published structure (independent
code, its key names), given random weights and saved as AdaFace's ``train_val.Trainer`` checkpoints are: a Lightning
``.ckpt`` whose ``state_dict`` holds the backbone under ``model.`` and the head's ``kernel``, with the run's
``hyper_parameters`` (an old Lightning ``AttributeDict`` naming the ``arch``). AdaFace feeds BGR faces normalised as
``(pixel / 255 - 0.5) / 0.5`` and returns ``(x / |x|, |x|)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_margin.backbones import IRBlock
from lightning_margin.embedder import FaceEmbedder
from lightning_margin.importers import CheckpointMismatchError, key_mismatch
from lightning_margin.importers.adaface import ADAFACE_ARCHS, adaface_config, adaface_key, guess_adaface_arch
from lightning_margin.importers.cli import main as import_main
from tests.source_nets import BasicBlockIR, build_source, randomize

TOLERANCE = 1e-5  # max abs, fp32


class AttributeDict(dict):
    """Stands for pytorch_lightning 1.x's ``AttributeDict`` (the class AdaFace's checkpoints pickle)."""


@pytest.fixture
def old_lightning(monkeypatch):
    """``pytorch_lightning.utilities.parsing.AttributeDict`` importable, so that pickle writes that name."""
    names = ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(AttributeDict, "__module__", names[-1])
    monkeypatch.setattr(sys.modules[names[-1]], "AttributeDict", AttributeDict, raising=False)
    return AttributeDict


def _faces(count: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _bgr_input(faces: torch.Tensor) -> torch.Tensor:
    """AdaFace's ``to_input``: BGR channels, ``(pixel / 255 - 0.5) / 0.5``."""
    return (faces.flip(1).float() / 255.0 - 0.5) / 0.5


def save_adaface_checkpoint(source, path: Path, hyper_parameters=None, **extra) -> Path:
    """A checkpoint as AdaFace's Trainer writes it (PyTorch Lightning 1.x)."""
    state_dict = {f"model.{key}": value for key, value in source.state_dict().items()}
    state_dict["head.kernel"] = torch.randn(512, 10)
    checkpoint = {
        "epoch": 25,
        "global_step": 1000,
        "pytorch-lightning_version": "1.8.6",
        "state_dict": state_dict,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9}]}],
        "lr_schedulers": [{"milestones": {12: 1, 20: 1, 24: 1}, "gamma": 0.1}],
        "hparams_name": "kwargs",
        **extra,
    }
    if hyper_parameters is not None:
        checkpoint["hyper_parameters"] = hyper_parameters
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def ir_18():
    return randomize(build_source("adaface", "ir_18"), calibration_batches=1)


def _check_parity(source, embedder, faces):
    with torch.no_grad():
        normalised, norms = source(_bgr_input(faces))
        raw = embedder(_bgr_input(faces).flip(1))  # the model on the same normalised input, given in RGB
        embedded = embedder.embed(faces, flip=False, align=False)  # aligned uint8 RGB crops, its preprocessing
    assert (raw - normalised * norms).abs().max() <= TOLERANCE
    assert (embedded - normalised).abs().max() <= TOLERANCE
    return normalised


def test_imported_ir_18_gives_adaface_embedding_from_rgb_images(ir_18, tmp_path, old_lightning):
    hyper_parameters = old_lightning(arch="ir_18", head="adaface", m=0.4, h=0.333, s=64.0, lr_milestones=[12, 20, 24])
    path = save_adaface_checkpoint(ir_18, tmp_path / "adaface_ir18.ckpt", hyper_parameters)
    embedder = FaceEmbedder.from_adaface(path)  # auto: hyper_parameters["arch"]
    assert embedder.config["backbone"] == "ir_18" and embedder.config["channel_order"] == "BGR"
    expected = _check_parity(ir_18, embedder, _faces())
    # The channel order matters: fed RGB, AdaFace's model gives another embedding (what an RGB pipeline would get).
    with torch.no_grad():
        rgb, _ = ir_18((_faces().float() / 255.0 - 0.5) / 0.5)
    assert (rgb * expected).sum(dim=1).max() < 0.99


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ir_se_50", "ir_50", "ir_101"])
def test_imported_embedder_gives_adaface_embedding_for_the_large_nets(arch, tmp_path):
    source = randomize(build_source("adaface", arch), calibration_batches=1)
    path = save_adaface_checkpoint(source, tmp_path / "model.ckpt", {"arch": arch})
    _check_parity(source, FaceEmbedder.from_adaface(path, arch=arch), _faces(count=1))


def test_the_ir_se_unit_computes_what_adaface_computes():
    """The squeeze-and-excitation unit (ir_se_50's) on its own, at the first unit's pooling shortcut: weights copied
    by AdaFace's key names, the same output."""
    source = randomize(BasicBlockIR(64, 64, 2, se=True), calibration_batches=0)
    unit = IRBlock(64, 64, stride=2, shortcut="pool", se_reduction=16).eval()
    key = adaface_key("ir_se_50")
    weights = {f"model.body.0.{name}": value for name, value in source.state_dict().items()}
    unit.load_state_dict({name: weights[key(f"backbone.layer1.0.{name}")] for name in unit.state_dict()})
    x = torch.randn(2, 64, 14, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(unit(x), source(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ADAFACE_ARCHS)
def test_every_adaface_key_maps_to_the_embedder_with_its_shape(arch):
    with torch.device("meta"):
        source = build_source("adaface", arch)
        embedder = FaceEmbedder(**adaface_config(arch))
    source_shapes = {f"model.{key}": tuple(value.shape) for key, value in source.state_dict().items()}
    # The importer gives AdaFace's affine-free BatchNorm1d its unit scale and zero shift.
    source_shapes |= {"model.output_layer.4.weight": (512,), "model.output_layer.4.bias": (512,)}
    key = adaface_key(arch)
    mapped = {key(name): tuple(value.shape) for name, value in embedder.state_dict().items()}
    assert len(mapped) == len(embedder.state_dict())
    assert not key_mismatch(mapped, source_shapes), key_mismatch(mapped, source_shapes)
    assert guess_adaface_arch({f"model.{k}": v for k, v in source.state_dict().items()}) == arch


def test_the_folder_records_bgr_and_the_dropped_head(ir_18, tmp_path):
    path = save_adaface_checkpoint(ir_18, tmp_path / "adaface.ckpt")  # no hyper_parameters: auto reads the shapes
    assert import_main(["adaface", str(path), str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["channel_order"] == "BGR" and config["alignment"] == "arcface" and config["input_size"] == 112
    assert config["mean"] == [0.5, 0.5, 0.5] and config["std"] == [0.5, 0.5, 0.5]
    imported = config["training"]["imported"]
    assert imported["arch"] == "ir_18" and imported["dropped"] == ["head.kernel"] and imported["epoch"] == 25
    card = (tmp_path / "out" / "README.md").read_text()
    assert "input: RGB images (the model takes BGR: the embedder swaps the channels)" in card
    assert "imported from adaface (ir_18, `adaface.ckpt`)" in card and "license: other" in card
    _check_parity(ir_18, FaceEmbedder.from_pretrained(tmp_path / "out"), _faces(count=1))


def test_hyper_parameters_of_plain_data_types_are_read(ir_18, tmp_path, old_lightning):
    """What a Lightning 1.x run may keep beside its weights: AttributeDict, Namespace, paths, numpy scalars."""
    hyper_parameters = old_lightning(
        arch="ir_18",
        args=argparse.Namespace(data_root="/data", epochs=26),
        output_dir=Path("/experiments/run1"),
        best_score=np.float64(0.9953),
        num_classes=np.int64(10572),
    )
    path = save_adaface_checkpoint(ir_18, tmp_path / "model.ckpt", hyper_parameters)
    assert FaceEmbedder.from_adaface(path).config["backbone"] == "ir_18"


def test_a_checkpoint_of_another_arch_names_the_keys_and_the_arch_it_fits(ir_18, tmp_path):
    path = save_adaface_checkpoint(ir_18, tmp_path / "model.ckpt", {"arch": "ir_18"})
    with pytest.raises(CheckpointMismatchError) as info:
        FaceEmbedder.from_adaface(path, arch="ir_34")
    message = str(info.value)
    assert str(path) in message and "does not fit arch 'ir_34'" in message
    # ir_34's stage 2 starts at body unit 3 (with a 1x1 shortcut), ir_18's at unit 2; ir_34 has units 8..15.
    assert "135 missing keys: model.body.3.shortcut_layer.0.weight, model.body.3.shortcut_layer.1.*" in message
    assert "model.body.8.res_layer.0.*" in message and "18 unexpected keys: model.body.2.shortcut_layer.0" in message
    assert "try --arch ir_18" in message


def test_a_file_without_adaface_weights_is_refused(tmp_path):
    torch.save({"state_dict": {"backbone.conv1.weight": torch.ones(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt: not an AdaFace Lightning checkpoint"):
        FaceEmbedder.from_adaface(tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="`arch` must be one of 'auto', 'ir_18'"):
        FaceEmbedder.from_adaface(tmp_path / "other.ckpt", arch="ir_100")


def test_ir_50_differs_from_iresnet50_only_in_the_first_shortcut():
    """AdaFace's net has no weights in the first unit's shortcut: the insightface net's extra keys are exactly those."""
    with torch.device("meta"):
        ours = FaceEmbedder(**adaface_config("ir_50")).state_dict()
        insightface = FaceEmbedder("iresnet50", neck="fc_bn", backbone_kwargs={"global_pool": "flatten"}).state_dict()
    assert sorted(set(insightface) - set(ours)) == sorted(
        f"backbone.layer1.0.downsample.{layer}.{name}"
        for layer, names in (
            (0, ["weight"]),
            (1, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
        )
        for name in names
    )
    assert not set(ours) - set(insightface)
