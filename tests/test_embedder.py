"""FaceEmbedder: construction from training artefacts, preprocessing, flip TTA, safetensors-only save/load."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lightning_margin import MarginModule
from lightning_margin.data import FaceDataModule
from lightning_margin.embedder import FaceEmbedder
from tests.helpers import quiet_trainer

INPUT_SIZE = 32


def tiny_module(**kwargs) -> MarginModule:
    """A MarginModule small enough to train a few steps in about a second (timm's 0.4M-parameter test ResNet)."""
    kwargs.setdefault("head", "cosface")
    kwargs.setdefault("head_kwargs", {"scale": 16.0, "margin": 0.2})
    return MarginModule(
        "test_resnet", num_classes=8, embedding_size=16, neck="fc_bn", input_size=INPUT_SIZE, far=(0.01,), **kwargs
    )


def make_checkpoint(folder: Path, steps: int = 4, val_pairs: int = 40) -> Path:
    """Train :func:`tiny_module` a few steps on synthetic faces with FaceDataModule; return the checkpoint path."""
    pl.seed_everything(0, verbose=False)
    module = tiny_module()
    data = FaceDataModule(
        train="synthetic:8",
        val_sets={"synthetic": f"synthetic:{val_pairs}"},
        image_size=INPUT_SIZE,
        batch_size=16,
        num_workers=0,
    )
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, default_root_dir=folder)
    trainer.fit(module, data)
    path = folder / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("embedder"))


def test_checkpoint_opens_with_weights_only_and_records_model_and_data_hyperparameters(checkpoint):
    loaded = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert loaded["hyper_parameters"]["backbone"] == "test_resnet"
    assert loaded["datamodule_hyper_parameters"]["train"] == "synthetic:8"


def test_from_checkpoint_keeps_backbone_and_neck_weights_and_records_the_training(checkpoint):
    loaded = torch.load(checkpoint, weights_only=True, map_location="cpu")
    embedder = FaceEmbedder.from_checkpoint(checkpoint)
    state = embedder.state_dict()
    expected = {key: value for key, value in loaded["state_dict"].items() if not key.startswith("head.")}
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    config = embedder.config
    assert (config["backbone"], config["embedding_size"], config["neck"], config["input_size"]) == (
        "test_resnet",
        16,
        "fc_bn",
        INPUT_SIZE,
    )
    assert (config["loss"], config["loss_kwargs"], config["num_classes"]) == (
        "cosface",
        {"scale": 16.0, "margin": 0.2},
        8,
    )
    # Synthetic training images are not cropped; the recorded normalisation is the data module's.
    assert config["crop_size"] is None and config["mean"] == [0.5, 0.5, 0.5] and config["std"] == [0.5, 0.5, 0.5]
    assert config["training"]["data"]["train"] == "synthetic:8" and config["training"]["global_step"] == 4
    assert not embedder.training


def test_embed_matches_the_trained_module_on_preprocessed_images(checkpoint):
    loaded = torch.load(checkpoint, weights_only=True, map_location="cpu")
    module = tiny_module()
    module.load_state_dict(loaded["state_dict"])
    module.eval()
    images = torch.randn(5, 3, INPUT_SIZE, INPUT_SIZE)
    embedder = FaceEmbedder.from_checkpoint(checkpoint)
    with torch.no_grad():
        raw = module(images)
        mirrored = module(images.flip(-1))
    torch.testing.assert_close(embedder.embed(images, flip=False, preprocessed=True), F.normalize(raw, dim=1))
    torch.testing.assert_close(embedder.embed(images, preprocessed=True), F.normalize(raw + mirrored, dim=1))


def test_lfw_training_records_the_lfw_crop_and_a_size_mismatch_is_refused(tmp_path):
    module = tiny_module()
    data = {"train": "lfw:dev_train", "image_size": INPUT_SIZE, "lfw_crop_size": 140, "crop_size": None}
    data |= {"mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3)}
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    torch.save({**checkpoint, "datamodule_hyper_parameters": data}, tmp_path / "lfw.ckpt")
    embedder = FaceEmbedder.from_checkpoint(tmp_path / "lfw.ckpt")
    assert (embedder.crop_size, embedder.lfw_crop_size, embedder.mean) == (140, 140, (0.4, 0.5, 0.6))
    torch.save({**checkpoint, "datamodule_hyper_parameters": {**data, "image_size": 64}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="image_size=64 differs from the model's input_size=32"):
        FaceEmbedder.from_checkpoint(tmp_path / "bad.ckpt")
    torch.save(checkpoint, tmp_path / "nodata.ckpt")
    with pytest.warns(UserWarning, match="no datamodule_hyper_parameters"):
        FaceEmbedder.from_checkpoint(tmp_path / "nodata.ckpt")


def test_embed_applies_crop_and_normalisation_written_out(tmp_path):
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.3, 0.4)
    embedder = FaceEmbedder(
        "test_resnet", embedding_size=8, neck="linear", input_size=INPUT_SIZE, crop_size=INPUT_SIZE, mean=mean, std=std
    )
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    # Centre crop 32 of 40 starts at pixel 4; no resize is needed; then (x / 255 - mean) / std per channel.
    crop = images[:, :, 4:36, 4:36].double() / 255
    expected_input = ((crop - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).float()
    with torch.no_grad():
        expected = F.normalize(embedder(expected_input), dim=1)
    torch.testing.assert_close(embedder.embed(images, flip=False), expected, rtol=1e-5, atol=1e-5)
    # The same pixels as float [0, 1], as a list of single images, and as PIL images give the same embeddings.
    torch.testing.assert_close(embedder.embed(images.float() / 255, flip=False), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embedder.embed(list(images), flip=False), expected, rtol=1e-5, atol=1e-5)
    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    torch.testing.assert_close(embedder.embed(pil, flip=False), expected, rtol=1e-5, atol=1e-5)


def test_embed_resizes_images_of_any_size_to_the_input_size():
    embedder = FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=INPUT_SIZE)
    batch = embedder.preprocess(
        [torch.zeros(3, 50, 70, dtype=torch.uint8), torch.full((3, 20, 20), 255, dtype=torch.uint8)]
    )
    assert batch.shape == (2, 3, INPUT_SIZE, INPUT_SIZE)
    # Constant images stay constant through resizing: 0 -> (0 - 0.5) / 0.5 = -1, 255 -> +1.
    assert torch.all(batch[0] == -1) and torch.all(batch[1] == 1)


def test_bgr_models_see_the_channels_reversed():
    rgb = FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=INPUT_SIZE)
    bgr = FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=INPUT_SIZE, channel_order="BGR")
    bgr.load_state_dict(rgb.state_dict())
    images = torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(bgr(images), rgb(images.flip(1)))


def test_save_load_round_trip_gives_identical_embeddings(checkpoint, tmp_path):
    embedder = FaceEmbedder.from_checkpoint(checkpoint)
    embedder.save_pretrained(tmp_path / "model")
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["architecture"] == "FaceEmbedder" and config["library_name"] == "lightning-margin"
    assert config["loss"] == "cosface" and config["loss_kwargs"] == {"scale": 16.0, "margin": 0.2}
    assert config["training"]["model"]["head"]["init_args"] == {"scale": 16.0, "margin": 0.2}
    loaded = FaceEmbedder.from_pretrained(tmp_path / "model")
    assert loaded.config == embedder.config
    images = torch.randint(0, 256, (4, 3, 45, 45), dtype=torch.uint8)
    assert torch.equal(loaded.embed(images), embedder.embed(images))


def test_save_pretrained_pushes_under_the_folder_name_by_default(checkpoint, tmp_path, monkeypatch):
    pushed = []
    monkeypatch.setattr(FaceEmbedder, "push_to_hub", lambda self, repo_id, **kwargs: pushed.append(repo_id) or "url")
    embedder = FaceEmbedder.from_checkpoint(checkpoint)
    embedder.save_pretrained(tmp_path / "mymodel", push_to_hub=True)
    embedder.save_pretrained(tmp_path / "other", push_to_hub=True, repo_id="org/named")
    assert pushed == ["mymodel", "org/named"]  # as huggingface_hub's mixin names it, not the hidden staging folder


def test_a_save_killed_mid_write_leaves_the_previous_export_loadable(checkpoint, tmp_path, monkeypatch):
    import lightning_margin.embedder_hub as embedder_module  # where the weights are written

    embedder = FaceEmbedder.from_checkpoint(checkpoint)
    folder = tmp_path / "model"
    embedder.save_pretrained(folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def dies_half_way(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # the first bytes of a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(embedder_module, "save_file", dies_half_way)
    with torch.no_grad():
        next(embedder.parameters()).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        embedder.save_pretrained(folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # no temp file, nothing changed
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no staging folder left
    images = torch.randint(0, 256, (2, 3, 45, 45), dtype=torch.uint8)
    reference = FaceEmbedder.from_checkpoint(checkpoint)
    assert torch.equal(FaceEmbedder.from_pretrained(folder).embed(images), reference.embed(images))


class _PlantedPickle:
    """Unpickling this creates a marker file: proof that something unpickled."""

    marker: str = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_loading_never_unpickles_a_planted_pickle(checkpoint, tmp_path):
    folder = tmp_path / "model"
    FaceEmbedder.from_checkpoint(checkpoint).save_pretrained(folder)
    marker = tmp_path / "unpickled"
    planted = _PlantedPickle()
    planted.marker = str(marker)
    for name in ("pytorch_model.bin", "model.ckpt"):
        (folder / name).write_bytes(pickle.dumps({"state_dict": planted}))
    FaceEmbedder.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors weights only and never unpickles"):
        FaceEmbedder.from_pretrained(folder)
    assert not marker.exists()


def test_missing_config_and_bad_arguments_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        FaceEmbedder.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="`neck` must be one of"):
        FaceEmbedder("test_resnet", neck="mlp")
    with pytest.raises(ValueError, match="`channel_order` must be one of 'RGB', 'BGR'"):
        FaceEmbedder("test_resnet", channel_order="GRB")
    with pytest.raises(ValueError, match="std"):
        FaceEmbedder("test_resnet", std=(0.5, 0.0, 0.5))
    module = MarginModule(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16)), num_classes=4, embedding_size=8, input_size=8
    )
    with pytest.raises(ValueError, match="backbone was passed as a module object"):
        FaceEmbedder.from_module(module)
    embedder = FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=INPUT_SIZE)
    with pytest.raises(ValueError, match="preprocessed=True"):
        embedder.embed(torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE))


def test_evaluation_transform_follows_the_data_module_per_source():
    embedder = FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=INPUT_SIZE, crop_size=100)
    assert embedder.eval_transform("lfw:dev_test").crop_size == (150, 150)
    assert embedder.eval_transform("synthetic:10").crop_size is None
    assert embedder.eval_transform("bin:faces.bin").crop_size == (100, 100)
    assert embedder.eval_transform("lfw:dev_test").flip_probability == 0.0
