"""Importing insightface arcface_torch ``backbone.pth`` files: the embedder gives insightface's embedding.

The source networks are rebuilt in :mod:`tests.source_nets` from insightface's published structure (independent
code, insightface's key names), given random weights and saved as arcface_torch saves ``backbone.pth`` (a plain
state dict). The imported embedder must give the same embedding on the same aligned input: insightface feeds RGB
faces normalised as ``(pixel / 255 - 0.5) / 0.5``.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lightning_margin.embedder import FaceEmbedder
from lightning_margin.importers import CheckpointMismatchError, key_mismatch
from lightning_margin.importers.cli import main as import_main
from lightning_margin.importers.insightface import (
    INSIGHTFACE_ARCHS,
    guess_insightface_arch,
    insightface_config,
    insightface_key,
)
from tests.source_nets import build_source, randomize

TOLERANCE = 1e-5  # max abs, fp32


def _faces(count: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _insightface_input(faces: torch.Tensor) -> torch.Tensor:
    """insightface's preprocessing of RGB uint8 faces (arcface_torch's eval: ``(img / 255 - 0.5) / 0.5``)."""
    return (faces.float() / 255.0 - 0.5) / 0.5


def _saved_source(arch: str, folder, seed: int = 0):
    source = randomize(build_source("insightface", arch), seed=seed, calibration_batches=1)
    path = folder / "backbone.pth"
    torch.save(source.state_dict(), path)
    return source, path


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """An insightface r18 with random weights and its backbone.pth (built once: the tests only read it)."""
    return _saved_source("r18", tmp_path_factory.mktemp("r18"))


@pytest.fixture(scope="module")
def mbf(tmp_path_factory):
    """insightface's mbf (2M parameters: the cheap one for the tests of the files around the weights)."""
    return _saved_source("mbf", tmp_path_factory.mktemp("mbf"), seed=1)


def _check_parity(source, embedder, faces):
    inputs = _insightface_input(faces)
    with torch.no_grad():
        expected = source(inputs)
        raw = embedder(inputs)  # the model on the same normalised input
        embedded = embedder.embed(faces, flip=False, align=False)  # aligned uint8 RGB crops, its own preprocessing
    assert (raw - expected).abs().max() <= TOLERANCE
    assert (embedded - F.normalize(expected)).abs().max() <= TOLERANCE
    return expected


def test_imported_r18_gives_insightface_embedding(r18):
    source, path = r18
    expected = _check_parity(source, FaceEmbedder.from_insightface(path, arch="auto"), _faces())
    assert expected.norm(dim=1).min() > 2.0  # a raw, un-normalised embedding: the comparison above is not trivial


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["r50", "r100", "r200", "mbf_large"])
def test_imported_embedder_gives_insightface_embedding_for_the_large_nets(arch, tmp_path):
    source, path = _saved_source(arch, tmp_path)
    _check_parity(source, FaceEmbedder.from_insightface(path, arch=arch), _faces(count=1))


@pytest.mark.parametrize("arch", list(INSIGHTFACE_ARCHS))
def test_every_insightface_key_maps_to_the_embedder_with_its_shape(arch):
    """All archs, r200 included, on the meta device: the key map is a bijection that keeps every shape."""
    with torch.device("meta"):
        source = build_source("insightface", arch)
        embedder = FaceEmbedder(**insightface_config(arch))
    source_shapes = {key: tuple(value.shape) for key, value in source.state_dict().items()}
    key = insightface_key(arch)
    mapped = {key(name): tuple(value.shape) for name, value in embedder.state_dict().items()}
    assert len(mapped) == len(embedder.state_dict())  # no two of our keys read the same source key
    assert not key_mismatch(mapped, source_shapes), key_mismatch(mapped, source_shapes)
    assert guess_insightface_arch(source.state_dict()) == arch


def test_imported_mbf_gives_insightface_embedding_from_a_ddp_training_checkpoint_without_counters(mbf, tmp_path):
    source = mbf[0]
    # BatchNorm's num_batches_tracked counters are dropped too, as in files converted from other frameworks.
    prefixed = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    # arcface_torch's training checkpoint keeps the backbone under state_dict_backbone, next to the optimizer.
    torch.save({"epoch": 3, "state_dict_backbone": prefixed, "state_dict_softmax_fc": {}}, tmp_path / "ckpt.pt")
    embedder = FaceEmbedder.from_insightface(tmp_path / "ckpt.pt")
    assert embedder.config["backbone"] == "mbf"
    _check_parity(source, embedder, _faces())


def test_the_embedder_folder_records_what_insightface_models_expect(mbf, tmp_path):
    source, path = mbf
    assert import_main(["insightface", str(path), str(tmp_path / "out"), "--arch", "mbf"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["channel_order"] == "RGB" and config["input_size"] == 112 and config["alignment"] == "arcface"
    assert config["mean"] == [0.5, 0.5, 0.5] and config["std"] == [0.5, 0.5, 0.5] and config["crop_size"] is None
    assert config["embedding_size"] == 512 and config["backbone"] == "mbf"
    imported = config["training"]["imported"]
    assert imported["source"] == "insightface" and imported["arch"] == "mbf" and imported["file"] == "backbone.pth"
    assert "non-commercial" in imported["license"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "non-commercial" in card and "insightface" in card
    # An ordinary embedder folder: from_pretrained gives the same embedding.
    _check_parity(source, FaceEmbedder.from_pretrained(tmp_path / "out"), _faces(count=1))


def test_a_checkpoint_of_another_arch_names_the_keys_and_the_arch_it_fits(r18):
    _, path = r18
    with pytest.raises(CheckpointMismatchError) as info:
        FaceEmbedder.from_insightface(path, arch="r34")
    message = str(info.value)
    assert str(path) in message and "'r34'" in message
    assert "missing keys: layer1.2.bn1.*" in message  # r34 has a third unit in stage 1, r18 does not
    assert "try --arch r18" in message


def test_mis_shaped_and_unexpected_keys_are_listed_in_the_files_names(r18, tmp_path):
    weights = dict(r18[0].state_dict())
    weights["layer2.0.conv1.weight"] = torch.zeros(128, 32, 3, 3)
    weights["extra.scale"] = torch.ones(1)
    torch.save(weights, tmp_path / "backbone.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        FaceEmbedder.from_insightface(tmp_path / "backbone.pth", arch="r18")
    message = str(info.value)
    assert "1 mis-shaped keys: layer2.0.conv1.weight [128, 32, 3, 3] (expected [128, 64, 3, 3])" in message
    assert "1 unexpected keys: extra.scale" in message and "missing" not in message


def test_the_command_line_reports_an_unfit_file_and_writes_nothing(mbf, tmp_path, capsys):
    _, path = mbf
    assert import_main(["insightface", str(path), str(tmp_path / "out"), "--arch", "mbf_large"]) == 1
    assert "does not fit arch 'mbf_large'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_auto_refuses_shapes_of_no_known_net(tmp_path):
    torch.save({"conv.weight": torch.ones(2, 3, 3, 3)}, tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match="match none of insightface's r18, r34, r50, r100, r200, mbf, mbf_large"):
        FaceEmbedder.from_insightface(tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match="`arch` must be one of 'auto', 'r18'"):
        FaceEmbedder.from_insightface(tmp_path / "backbone.pth", arch="r101")
