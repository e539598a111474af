"""Other projects' checkpoints: hostile files are refused before anything runs; the importer registry and command.

A pickle names functions that unpickling calls. The hostile files here call ``exec`` (which would write a marker
file) or build an arbitrary class; every importer must refuse them, name the file, and leave no marker.
"""

from __future__ import annotations

import argparse
import json
import pickle
import zipfile

import pytest
import torch

from lightning_margin.cli import main as lightning_margin_main
from lightning_margin.embedder import FaceEmbedder
from lightning_margin.importers import (
    CheckpointMismatchError,
    ImportedWeights,
    UnsafeCheckpointError,
    create_importer,
    imported_record,
    list_importers,
    read_checkpoint,
    register_importer,
)
from lightning_margin.importers import registry as registry_module
from lightning_margin.importers.cli import main as import_main


class Payload:
    """Unpickling this runs ``exec``, which writes ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


class RunConfig:
    """An arbitrary class in a checkpoint's hyper-parameters (building it could run its code)."""

    def __init__(self) -> None:
        self.lr = 0.1


def _hostile_files(tmp_path):
    marker = tmp_path / "marker"
    weights = {"conv1.weight": torch.ones(64, 3, 3, 3)}
    files = {}
    files["zip"] = tmp_path / "zip.pth"
    torch.save({**weights, "evil": Payload(marker)}, files["zip"])
    files["legacy"] = tmp_path / "legacy.pth"
    torch.save({**weights, "evil": Payload(marker)}, files["legacy"], _use_new_zipfile_serialization=False)
    files["pickle"] = tmp_path / "plain.pkl"
    files["pickle"].write_bytes(pickle.dumps({"state_dict": weights, "evil": Payload(marker)}))
    files["adaface"] = tmp_path / "adaface.ckpt"
    torch.save({"state_dict": {"model.x": torch.ones(1)}, "hyper_parameters": Payload(marker)}, files["adaface"])
    return marker, files


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle", "adaface"])
@pytest.mark.parametrize("source", ["insightface", "adaface"])
def test_a_pickle_that_calls_code_is_refused_and_nothing_runs(tmp_path, kind, source):
    marker, files = _hostile_files(tmp_path)
    with pytest.raises(ValueError) as info:  # UnsafeCheckpointError, or "not a checkpoint" for a bare pickle
        FaceEmbedder.from_import(source, checkpoint=files[kind])
    assert str(files[kind]) in str(info.value)
    if kind != "pickle":
        assert isinstance(info.value, UnsafeCheckpointError)
        # torch's zip format lists the globals (builtins.exec); the legacy format's error names the first (exec).
        assert "names builtins.exec" in str(info.value) or "names exec" in str(info.value)
        assert "nothing in this file was run" in str(info.value)
    assert not marker.exists()


def test_the_command_line_refuses_a_hostile_file(tmp_path, capsys):
    marker, files = _hostile_files(tmp_path)
    assert import_main(["insightface", str(files["zip"]), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert f"{files['zip']}: refused to load: its pickle names builtins.exec" in error
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_an_arbitrary_class_in_the_hyper_parameters_is_named(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.x": torch.ones(1)}, "hyper_parameters": {"config": RunConfig()}}, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}: refused to load: its pickle names .*RunConfig"):
        read_checkpoint(path)


def test_plain_checkpoints_are_read_and_broken_ones_named(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"a": torch.arange(3), "meta": {"epoch": 2, "names": ["x"]}}, path)
    content = read_checkpoint(path)
    assert content["a"].tolist() == [0, 1, 2] and content["meta"] == {"epoch": 2, "names": ["x"]}
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{truncated}: not a readable PyTorch checkpoint"):
        read_checkpoint(truncated)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "missing.pth")
    assert zipfile.is_zipfile(path)  # the readable one was torch's zip format: the refusals are not about format


# ---- the registry ---------------------------------------------------------------------------------------------


def test_the_registry_lists_and_builds_importers():
    assert {"adaface", "insightface"} <= set(list_importers())
    assert list_importers("insight*") == ["insightface"]
    assert create_importer("insightface").name == "insightface"
    with pytest.raises(ValueError, match="unknown import source 'mxnet'; available: adaface, dlib, insightface"):
        create_importer("mxnet")
    with pytest.raises(ValueError, match="lowercase identifiers"):
        register_importer("My-Source", add_arguments=lambda parser: None, description="")
    with pytest.raises(ValueError, match="already registered"):
        register_importer("insightface", add_arguments=lambda parser: None, description="")(lambda: None)


def test_a_registered_importer_is_a_command_and_a_classmethod(tmp_path, monkeypatch, capsys):
    """What a new source (dlib, ...) registers: its arguments, then ImportedWeights in the file's own names."""
    monkeypatch.setattr(registry_module, "_IMPORTERS", dict(registry_module._IMPORTERS))
    seen = {}

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--scale", type=float, default=1.0)

    @register_importer("toy", add_arguments=add_arguments, description="a toy linear embedder")
    def import_toy(scale: float = 1.0) -> ImportedWeights:
        seen["scale"] = scale
        weights = {"proj.w": torch.full((4, 3 * 8 * 8), scale), "proj.b": torch.zeros(4)}
        config = {"backbone": "test_resnet", "embedding_size": 4, "neck": "linear", "input_size": 8}
        config["training"] = imported_record("toy", "toy.bin", "linear", "CC0")
        names = {"neck.1.weight": "proj.w", "neck.1.bias": "proj.b"}
        return ImportedWeights(config, weights, "toy.bin", "linear", lambda key: names.get(key, key))

    # The toy's weights cover the neck only: the backbone's keys are reported missing, in the file's terms.
    with pytest.raises(CheckpointMismatchError, match="toy.bin does not fit arch 'linear': .* missing keys"):
        FaceEmbedder.from_import("toy", scale=2.0)
    assert seen["scale"] == 2.0
    assert "toy" in list_importers()
    with pytest.raises(SystemExit):
        lightning_margin_main(["import", "toy", "--help"])
    assert "--scale" in capsys.readouterr().out


def test_lightning_margin_import_dispatches_to_the_importers(capsys):
    with pytest.raises(SystemExit) as info:
        lightning_margin_main(["import", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for name in list_importers():
        assert name in help_text
    with pytest.raises(SystemExit):
        lightning_margin_main(["import", "adaface", "--help"])
    assert "CHECKPOINT" in capsys.readouterr().out


def test_from_import_loads_a_folder_that_round_trips(tmp_path):
    """An importer whose file names equal ours (the identity key map) loads and saves like any embedder."""
    reference = FaceEmbedder("test_resnet", embedding_size=4, neck="linear", input_size=8)
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    original = dict(registry_module._IMPORTERS)
    try:

        @register_importer("plain", add_arguments=lambda parser: None, description="ours, as a file")
        def import_plain() -> ImportedWeights:
            weights = read_checkpoint(tmp_path / "weights.pth")
            config = {"backbone": "test_resnet", "embedding_size": 4, "neck": "linear", "input_size": 8}
            return ImportedWeights(config, weights, "weights.pth", "test_resnet")

        assert import_main(["plain", str(tmp_path / "out")]) == 0
    finally:
        registry_module._IMPORTERS.clear()
        registry_module._IMPORTERS.update(original)
    loaded = FaceEmbedder.from_pretrained(tmp_path / "out")
    images = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(loaded.embed(images), reference.embed(images))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["backbone"] == "test_resnet"
