"""``lightning-margin verify``: metrics of checkpoints and exported folders on pair sets, and the model card check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from sklearn.metrics import roc_auc_score

from lightning_margin.data import SyntheticPairs
from lightning_margin.embedder import FaceEmbedder
from lightning_margin.publish import publish
from lightning_margin.verify import main, parse_pairs
from tests.test_embedder import INPUT_SIZE, make_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("verify"), steps=8)


@pytest.fixture(scope="module")
def published(checkpoint, tmp_path_factory) -> Path:
    """An exported folder whose card holds the results on the training's verification set (synthetic:40)."""
    folder = tmp_path_factory.mktemp("published") / "model"
    publish(checkpoint, "org/tiny", output_dir=folder, push=False, progress=False)
    return folder


def test_checkpoint_metrics_table_json_and_roc_plot(checkpoint, tmp_path, capsys):
    json_path, plot_path = tmp_path / "metrics.json", tmp_path / "roc.png"
    argv = ["--model", str(checkpoint), "--pairs", "synthetic:40", "--json", str(json_path), "--plot", str(plot_path)]
    assert main([*argv, "--no-progress", "--far", "0.1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| model") and "tar@far=1e-1" in out
    (row,) = json.loads(json_path.read_text()).values()
    # Independent: embed the raw pairs with flip TTA, cosine scores, sklearn's AUC.
    embedder = FaceEmbedder.from_checkpoint(checkpoint)
    pairs = SyntheticPairs(num_pairs=40, image_size=INPUT_SIZE)
    first = embedder.embed([pairs[index][0] for index in range(40)])
    second = embedder.embed([pairs[index][1] for index in range(40)])
    scores = (first * second).sum(dim=1).double().numpy()
    assert row["num_pairs"] == 40
    assert row["auc"] == pytest.approx(roc_auc_score(pairs.issame, scores), abs=1e-6)
    with Image.open(plot_path) as image:
        assert image.format == "PNG" and image.width > 100


def test_several_models_and_sets_make_one_table_and_one_figure(checkpoint, published, tmp_path, monkeypatch, capsys):
    import lightning_margin.plots.roc as roc

    drawn = []
    monkeypatch.setattr(roc, "plot_roc_curves", lambda curves, path: drawn.append((list(curves), path)))
    models = [str(checkpoint), str(published)]
    argv = ["--model", *models, "--pairs", "synthetic:40", "b=synthetic:20", "--json", str(tmp_path / "m.json")]
    assert main([*argv, "--plot", str(tmp_path / "roc.png"), "--no-progress"]) == 0
    rows = [f"{model} @ {name}" for model in models for name in ("synthetic", "b")]
    assert drawn == [(rows, tmp_path / "roc.png")]
    assert list(json.loads((tmp_path / "m.json").read_text())) == rows
    table = capsys.readouterr().out
    assert all(f"| {row} " in table for row in rows)


def _shift_card_metric(folder: Path, metric: str, delta: float) -> None:
    card = ModelCard.load(folder / "README.md")
    for result in card.data.eval_results:
        if result.metric_type == metric:
            result.metric_value += delta
    card.save(folder / "README.md")


def test_exported_folder_is_checked_against_its_card(published, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    for path in published.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    assert main(["--model", str(folder), "--no-progress"]) == 0
    assert f"OK: {folder} @ synthetic reproduce the model card within 0.005" in capsys.readouterr().out

    _shift_card_metric(folder, "accuracy", 0.001)  # within the default tolerance of 0.005
    assert main(["--model", str(folder), "--no-progress"]) == 0
    assert main(["--model", str(folder), "--no-progress", "--tolerance", "0.0005"]) == 1
    capsys.readouterr()

    _shift_card_metric(folder, "eer", 0.05)
    assert main(["--model", str(folder), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "FAILED: 1 metric(s)" in err and f"{folder} @ synthetic: eer card" in err and "tolerance 0.005" in err

    # A different protocol (no flip) is evaluated but not compared with the card.
    assert main(["--model", str(folder), "--no-progress", "--no-flip"]) == 0
    assert "not compared with the card" in capsys.readouterr().out


def test_a_hub_model_is_resolved_and_checked_once_for_weights_config_and_card(published, monkeypatch):
    import lightning_margin.artifacts
    import lightning_margin.embedder_hub
    import lightning_margin.verify
    from lightning_margin.hub import VerifiedFiles

    calls = []

    def download_verified(repo_id, filenames, revision=None):
        calls.append((repo_id, list(filenames), revision))
        return VerifiedFiles(repo_id, "c0ffee", {name: published / name for name in filenames})

    def second_download(*args, **kwargs):
        raise AssertionError("the embedder asked the Hub again")

    monkeypatch.setattr(lightning_margin.artifacts, "download_verified", download_verified)
    monkeypatch.setattr(lightning_margin.embedder_hub, "download_verified", second_download)
    loaded = lightning_margin.verify.load_model("org/tiny", revision="v1")
    assert calls == [("org/tiny", ["config.json", "model.safetensors", "README.md"], "v1")]
    expected = FaceEmbedder.from_pretrained(published).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.embedder.state_dict().items())
    assert set(loaded.card_sets) == {"synthetic"}


def test_a_model_without_a_card_needs_pairs(checkpoint):
    with pytest.raises(ValueError, match="name the sets with --pairs"):
        main(["--model", str(checkpoint), "--no-progress"])
    with pytest.raises(FileNotFoundError, match="not a Hub id"):
        main(["--model", "missing.ckpt", "--pairs", "synthetic"])


def test_parse_pairs_names_sets_like_the_data_module():
    sets = parse_pairs(["lfw:dev_test", "bin:/data/agedb_30.bin", "synthetic:50", "mine=bin:x.bin"])
    assert sets == {
        "lfw_dev_test": "lfw:dev_test",
        "agedb_30": "bin:/data/agedb_30.bin",
        "synthetic": "synthetic:50",
        "mine": "bin:x.bin",
    }
    with pytest.raises(ValueError, match="two verification sets are named 'synthetic'"):
        parse_pairs(["synthetic", "synthetic:20"])
    with pytest.raises(ValueError, match="the kind must be one of synthetic, lfw, bin"):
        parse_pairs(["imagefolder:faces"])


def test_lfw_dev_test_with_the_recorded_lfw_crop(lfw_root, checkpoint, tmp_path):
    """On real LFW View 1 DevTest pairs (skipped without the data): all 1,000 pairs are scored."""
    torch.set_num_threads(1)
    json_path = tmp_path / "lfw.json"
    argv = ["--model", str(checkpoint), "--pairs", "lfw:dev_test", "--data-root", str(lfw_root.parent)]
    assert main([*argv, "--json", str(json_path), "--no-progress", "--batch-size", "100"]) == 0
    (row,) = json.loads(json_path.read_text()).values()
    assert row["num_pairs"] == 1000 and 0.0 <= row["accuracy"] <= 1.0
