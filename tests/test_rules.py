"""Each rule lives in one place: the data source kinds, the FAR default, the atomic folder write, the data command."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import lightning_margin.data.sources as sources
from lightning_margin.data import FaceDataModule
from lightning_margin.data.sources import (
    SourceKind,
    default_verification_sets,
    list_source_kinds,
    parse_source,
    register_source_kind,
    source_crop,
    verification_set_name,
)
from lightning_margin.embedder import FaceEmbedder, preprocessing_from_data


@pytest.mark.parametrize(
    ("spec", "role", "expected"),
    [
        ("lfw:dev_train", "training", 150),  # lfw_crop_size
        ("lfw:dev_test", "verification", 150),
        ("synthetic:5", "training", None),  # generated faces: never cropped
        ("synthetic", "verification", None),
        ("imagefolder:faces", "training", 100),  # crop_size
        ("recordio:train.rec", "training", 100),
        ("bin:agedb_30.bin", "verification", 100),
    ],
)
def test_the_crop_of_each_kind(spec, role, expected):
    assert source_crop(spec, 100, 150, role) == expected
    if expected == 100:
        assert source_crop(spec, None, 150, role) is None


def test_the_kinds_and_their_defaults():
    assert list_source_kinds() == ["synthetic", "lfw", "imagefolder", "recordio", "bin", "lfw_aligned"]
    assert list_source_kinds("training") == ["synthetic", "lfw", "imagefolder", "recordio", "lfw_aligned"]
    assert default_verification_sets("lfw:dev_train") == {"lfw_dev_test": "lfw:dev_test"}
    assert default_verification_sets("lfw:10fold") == {}
    assert default_verification_sets("synthetic:7") == {"synthetic": "synthetic"}
    assert default_verification_sets("imagefolder:x") == {}
    assert verification_set_name("lfw:10fold") == "lfw_10fold"
    assert verification_set_name("bin:/d/cfp_fp.bin") == "cfp_fp"
    assert verification_set_name("synthetic:9") == "synthetic"
    with pytest.raises(ValueError, match="the kind must be one of synthetic, lfw, bin"):
        verification_set_name("recordio:x.rec")
    with pytest.raises(ValueError, match="`role` must be 'training' or 'verification'"):
        list_source_kinds("testing")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        register_source_kind(SourceKind("lfw", check=lambda spec, argument: None))


def test_a_registered_kind_reaches_the_data_module_the_embedder_and_verify(monkeypatch):
    from lightning_margin.data.synthetic import SyntheticFaces, SyntheticPairs
    from lightning_margin.verify import parse_pairs

    monkeypatch.setattr(sources, "_KINDS", dict(sources._KINDS))  # registered for this test only
    register_source_kind(
        SourceKind(
            "pretend",
            check=lambda spec, argument: None,
            training=lambda spec, argument, options: SyntheticFaces(
                num_classes=3, image_size=options.image_size, transform=options.transform
            ),
            verification=lambda spec, argument, options: SyntheticPairs(
                num_pairs=12, image_size=options.image_size, transform=options.transform
            ),
            crop="lfw_crop_size",
            default_verification_sets=lambda argument: {"pretend_pairs": "pretend:pairs"},
            set_name=lambda argument: f"pretend_{argument}",
        )
    )
    assert parse_source("pretend:x", "verification") == ("pretend", "x")
    data = FaceDataModule(train="pretend", image_size=32, lfw_crop_size=20, crop_size=30, num_workers=0)
    assert data.num_classes == 3 and data.verification_set_names == ["pretend_pairs"]
    assert data.train_transform.crop_size == (20, 20)
    assert len(data.val_datasets()["pretend_pairs"]) == 12
    assert data.val_datasets()["pretend_pairs"].transform.crop_size == (20, 20)
    embedder = FaceEmbedder(
        "test_resnet", embedding_size=8, neck="linear", input_size=32, crop_size=30, lfw_crop_size=20
    )
    assert embedder.eval_transform("pretend:x").crop_size == (20, 20)
    settings = preprocessing_from_data({"train": "pretend", "crop_size": 30, "lfw_crop_size": 20}, {"input_size": 32})
    assert settings["crop_size"] == 20
    assert parse_pairs(["pretend:y"]) == {"pretend_y": "pretend:y"}


def test_publish_evaluates_the_sets_the_data_module_validated_on():
    from lightning_margin.publish import configured_sets

    embedder = FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=32)
    for data, expected in [
        ({"train": "lfw:dev_train", "val_sets": None}, {"lfw_dev_test": "lfw:dev_test"}),
        ({"train": "synthetic:4", "val_sets": None}, {"synthetic": "synthetic"}),
        ({"train": "lfw:dev_train", "val_sets": {"mine": "bin:x.bin"}}, {"mine": "bin:x.bin"}),
        ({"train": "lfw:dev_train", "val_sets": {}}, {}),  # configured: none
    ]:
        embedder.config["training"] = {"data": data}
        assert configured_sets(embedder) == expected
        assert FaceDataModule(train="synthetic:4", val_sets=data["val_sets"], num_workers=0).val_sets == (
            expected if data["val_sets"] is not None else {"synthetic": "synthetic"}
        )


def test_one_far_default_everywhere():
    from lightning_margin.evaluation import evaluate_embedder, evaluate_pairs
    from lightning_margin.metrics import DEFAULT_FAR, TARAtFAR, VerificationMetrics, tar_at_far, verification_metrics
    from lightning_margin.module import MarginModule
    from lightning_margin.publish import publish

    assert DEFAULT_FAR == (1e-3,)  # the zoo cards' tar@far=1e-3
    for function in (
        MarginModule,
        VerificationMetrics,
        TARAtFAR,
        tar_at_far,
        verification_metrics,
        evaluate_pairs,
        evaluate_embedder,
        publish,
    ):
        assert inspect.signature(function).parameters["far"].default == (1e-3,), function
    scores = torch.linspace(0, 1, 2000)
    issame = torch.arange(2000) % 2 == 0
    assert list(verification_metrics(scores, issame)) == [
        "accuracy",
        "accuracy_std",
        "threshold",
        "tar@far=1e-3",
        "eer",
        "auc",
    ]


def test_write_folder_replaces_whole_or_merges_and_a_failure_changes_nothing(tmp_path):
    from lightning_margin._atomic import write_folder

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    (target / "README.md").write_text("hand-written")

    def fails(staging: Path) -> None:
        (staging / "old.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder(target, fails)
    with pytest.raises(OSError, match="disk full"):
        write_folder(target, fails, merge=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging folder left
    assert (target / "old.txt").read_text() == "old"

    def new(staging: Path) -> str:
        (staging / "new.txt").write_text("new")
        (staging / "README.md").write_text("generated")
        return "done"

    assert write_folder(target, new, merge=True, keep=("README.md",)) == "done"
    assert {path.name: path.read_text() for path in target.iterdir()} == {
        "old.txt": "old",
        "new.txt": "new",
        "README.md": "hand-written",
    }
    write_folder(target, new)
    assert {path.name: path.read_text() for path in target.iterdir()} == {"new.txt": "new", "README.md": "generated"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_the_data_command_dispatches_to_registered_subcommands(capsys):
    from lightning_margin.cli import main as cli_main
    from lightning_margin.data.cli import main

    assert main(["nope"]) == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err
    assert main([]) == 2
    assert cli_main(["data", "--help"]) == 0
    assert "pack" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli_main(["data", "pack", "--help"])
    assert exit_.value.code == 0 and "recordio" in capsys.readouterr().out
