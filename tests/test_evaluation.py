"""Evaluating a model on pairs, the console table, the JSON file and the ROC figure."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import auc as sklearn_auc
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_margin.evaluation import evaluate_pairs, format_table, write_metrics_json
from lightning_margin.metrics.functional import verification_accuracy
from lightning_margin.plots.roc import plot_roc_curves


class ModeRecordingEmbedder(nn.Module):
    """Flatten + linear + dropout; records whether it ran in training mode and with autograd on."""

    def __init__(self, embedding_size: int = 6) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * 4 * 4, embedding_size)
        self.dropout = nn.Dropout(0.5)  # would make repeated evaluations differ in training mode
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.dropout(self.linear(images.flatten(1)))


def pair_loader(num_pairs: int = 60, batch_size: int = 7, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    first = torch.rand(num_pairs, 2, 4, 4, generator=generator)
    issame = torch.arange(num_pairs) % 3 != 0
    noise = torch.rand(num_pairs, 2, 4, 4, generator=generator)
    second = torch.where(issame[:, None, None, None], first + 0.5 * noise, noise)
    return DataLoader(TensorDataset(first, second, issame), batch_size=batch_size, shuffle=False)


def hand_scores(model: ModeRecordingEmbedder, loader: DataLoader, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of (mirror-summed) embeddings in numpy, from the linear layer's weights."""
    weight = model.linear.weight.detach().double().numpy()
    bias = model.linear.bias.detach().double().numpy()
    first, second, issame = (tensor.numpy() for tensor in loader.dataset.tensors)

    def embedding(images: np.ndarray) -> np.ndarray:
        result = images.reshape(len(images), -1) @ weight.T + bias
        if flip:
            result = result + images[..., ::-1].reshape(len(images), -1) @ weight.T + bias
        return result / np.linalg.norm(result, axis=1, keepdims=True)

    return (embedding(first) * embedding(second)).sum(1), issame


@pytest.mark.parametrize("flip", [True, False])
def test_evaluate_pairs_matches_hand_computed_scores(flip):
    model = ModeRecordingEmbedder()
    loader = pair_loader()
    results = evaluate_pairs(model, loader, flip=flip, far=(1e-1, 1e-2), progress=False, device="cpu")
    scores, issame = hand_scores(model, loader, flip=flip)
    expected_accuracy = verification_accuracy(torch.tensor(scores), torch.tensor(issame))
    assert results["accuracy"] == pytest.approx(expected_accuracy["accuracy"].item(), abs=1e-6)
    assert results["auc"] == pytest.approx(roc_auc_score(issame, scores), abs=1e-6)
    fpr, tpr, _ = sklearn_roc_curve(issame, scores, drop_intermediate=False)
    np.testing.assert_allclose(results["roc"]["fpr"].numpy(), fpr, atol=1e-6)
    np.testing.assert_allclose(results["roc"]["tpr"].numpy(), tpr, atol=1e-6)
    assert results["tar@far=1e-1"] == pytest.approx(float(tpr[fpr <= 0.1 + 1e-12].max()), abs=1e-6)
    assert results["num_pairs"] == 60
    assert set(results) == {
        "accuracy", "accuracy_std", "threshold", "tar@far=1e-1", "tar@far=1e-2", "eer", "auc", "num_pairs", "roc"
    }  # fmt: skip
    assert all(isinstance(results[key], float) for key in ("accuracy", "eer", "auc", "threshold"))


def test_evaluate_pairs_runs_in_eval_mode_without_grad_and_restores_the_mode():
    model = ModeRecordingEmbedder().train()
    loader = pair_loader(num_pairs=20, batch_size=10)
    first = evaluate_pairs(model, loader, progress=False, num_folds=2)
    second = evaluate_pairs(model, loader, progress=False, num_folds=2)
    assert model.calls == [(False, False)] * 4  # two batches per run, both sides (and mirrors) in one forward
    assert model.training
    assert first["accuracy"] == second["accuracy"] and first["auc"] == second["auc"]  # dropout was off


def test_evaluate_pairs_progress_bar(capsys):
    evaluate_pairs(ModeRecordingEmbedder(), pair_loader(num_pairs=20), progress=True, num_folds=2)
    assert "verification pairs" in capsys.readouterr().err


def test_evaluate_pairs_empty_loader():
    empty = DataLoader(TensorDataset(torch.rand(0, 2, 4, 4), torch.rand(0, 2, 4, 4), torch.zeros(0, dtype=torch.bool)))
    with pytest.raises(ValueError, match="no pairs"):
        evaluate_pairs(ModeRecordingEmbedder(), empty, progress=False)


# ------------------------------------------------------------------------------------------------------------------
# Table and JSON
# ------------------------------------------------------------------------------------------------------------------
def parse_table(table: str) -> list[list[str]]:
    lines = table.splitlines()
    assert set(lines[1]) <= {"|", "-"}
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in [lines[0], *lines[2:]]]


def test_format_table_rows_columns_and_values():
    results = {
        "arcface": {"accuracy": 0.995166, "eer": 0.00612, "num_pairs": 6000, "roc": {"fpr": torch.zeros(3)}},
        "cosface": {"accuracy": torch.tensor(0.99), "auc": 0.9991},
    }
    rows = parse_table(format_table(results))
    assert rows[0] == ["model", "accuracy", "eer", "num_pairs", "auc"]
    assert rows[1] == ["arcface", "0.9952", "0.0061", "6000", "-"]
    assert rows[2] == ["cosface", "0.9900", "-", "-", "0.9991"]
    widths = {len(line) for line in format_table(results).splitlines()}
    assert len(widths) == 1  # aligned columns


def test_write_metrics_json_round_trip(tmp_path):
    results = {
        "lfw": {"accuracy": torch.tensor(0.9875), "eer": 0.01, "num_pairs": 6000, "threshold": float("nan")},
        "cfp_fp": {"auc": np.float32(0.5), "roc": {"fpr": torch.zeros(2)}},
    }
    path = write_metrics_json(tmp_path / "out" / "metrics.json", results)
    loaded = json.loads(path.read_text())
    assert loaded == {
        "lfw": {"accuracy": pytest.approx(0.9875), "eer": 0.01, "num_pairs": 6000, "threshold": None},
        "cfp_fp": {"auc": 0.5},
    }
    assert sorted(os.listdir(path.parent)) == ["metrics.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_write_metrics_json_is_atomic(tmp_path, monkeypatch):
    path = write_metrics_json(tmp_path / "metrics.json", {"lfw": {"accuracy": 0.5}})

    def broken_dump(payload, file, **kwargs):
        file.write('{"lfw": {"acc')  # a partial write, then the process fails
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        write_metrics_json(path, {"lfw": {"accuracy": 0.9}})
    assert json.loads(path.read_text()) == {"lfw": {"accuracy": 0.5}}  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


# ------------------------------------------------------------------------------------------------------------------
# ROC figure
# ------------------------------------------------------------------------------------------------------------------
def two_curves():
    generator = np.random.default_rng(0)
    curves = {}
    for name, separation in (("strong", 3.0), ("weak", 1.0)):
        issame = generator.random(400) < 0.5
        scores = generator.normal(size=400) + separation * issame
        fpr, tpr, thresholds = sklearn_roc_curve(issame, scores)
        curves[name] = (fpr, tpr, thresholds)
    return curves


def test_roc_figure_has_one_line_per_model_with_the_given_data(tmp_path):
    curves = two_curves()
    path = tmp_path / "roc.png"
    figure = plot_roc_curves(
        {"strong": curves["strong"][:2], "weak": {"fpr": torch.tensor(curves["weak"][0]), "tpr": curves["weak"][1]}},
        path,
        title="LFW",
    )
    (axes,) = figure.axes
    lines = axes.get_lines()
    assert len(lines) == 2
    for line, name in zip(lines, ("strong", "weak"), strict=True):
        np.testing.assert_allclose(line.get_xdata(), curves[name][0])
        np.testing.assert_allclose(line.get_ydata(), curves[name][1])
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    expected_auc = {name: sklearn_auc(curves[name][0], curves[name][1]) for name in curves}
    assert legend == [f"strong (AUC = {expected_auc['strong']:.4f})", f"weak (AUC = {expected_auc['weak']:.4f})"]
    assert axes.get_xscale() == "log"
    smallest = min(curve[0][curve[0] > 0].min() for curve in curves.values())
    assert axes.get_xlim()[0] == pytest.approx(10 ** math.floor(math.log10(smallest)))
    assert axes.get_xlim()[1] == pytest.approx(1.0)
    assert axes.get_title() == "LFW"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (600, 450)


def test_roc_legend_ranks_by_area_and_moves_beside_many_curves():
    generator = np.random.default_rng(3)
    issame = np.repeat([0, 1], 200)
    curves = {}
    for name, separation in zip("cafbed", (1.5, 0.2, 2.5, 0.8, 3.0, 1.1), strict=True):
        curves[name] = sklearn_roc_curve(issame, generator.normal(size=400) + separation * issame)[:2]
    ranked = sorted(curves, key=lambda name: -sklearn_auc(*curves[name]))
    for count in (3, 6):
        shown = dict(list(curves.items())[:count])
        figure = plot_roc_curves(shown)
        (axes,) = figure.axes
        legend = axes.get_legend()
        assert [text.get_text().split()[0] for text in legend.get_texts()] == [n for n in ranked if n in shown]
        assert [line.get_label().split()[0] for line in axes.get_lines()] == list(shown)  # drawn in the given order
        figure.canvas.draw()
        beside = legend.get_window_extent().x0 >= axes.get_window_extent().x1
        assert beside == (count > 5)


def test_roc_figure_labels_and_bad_input():
    curves = two_curves()
    figure = plot_roc_curves(curves, labels={"weak": "baseline"})
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()][1] == "baseline"
    with pytest.raises(ValueError, match="not plotted"):
        plot_roc_curves(curves, labels={"other": "x"})
    with pytest.raises(ValueError, match="equal length"):
        plot_roc_curves({"bad": ([0.0, 1.0], [0.0, 0.5, 1.0])})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_roc_curves({"bad": ([0.0, 2.0], [0.0, 1.0])})
    with pytest.raises(ValueError, match="empty"):
        plot_roc_curves({})
    with pytest.raises(ValueError, match="PNG"):
        plot_roc_curves(curves, "roc.jpg")
