"""The figures' content: the plotted values equal the functions they claim to show, recomputed here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_margin.heads import create_head
from lightning_margin.plots import (
    DEFAULT_HEADS,
    decision_boundary,
    load_digits_subset,
    plot_decision_boundaries,
    plot_geometry,
    plot_target_logits,
    plot_theta_histograms,
    target_logit_curve,
    train_geometry_models,
)
from lightning_margin.plots.cli import main, parse_head_spec


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- independent formulas (numpy, from the papers) ------------------------------------------------------------


def psi(theta: np.ndarray, m: int) -> np.ndarray:
    """SphereFace's psi(theta) = (-1)^k cos(m theta) - 2k on [k pi/m, (k+1) pi/m]."""
    k = np.clip(np.floor(m * theta / np.pi), 0, m - 1)
    return (-1.0) ** k * np.cos(m * theta) - 2 * k


def combined(theta: np.ndarray, m1: float, m2: float, m3: float) -> np.ndarray:
    """cos(m1 theta + m2) - m3 up to theta* = (pi - m2) / m1, then the continuous continuation."""
    theta_star = (np.pi - m2) / m1
    return np.where(theta <= theta_star, np.cos(m1 * theta + m2) - m3, np.cos(theta) - np.cos(theta_star) - 1 - m3)


EXPECTED_TARGET = {
    "Softmax": np.cos,
    "SphereFace (m=4, λ=5)": lambda t: (5 * np.cos(t) + psi(t, 4)) / 6,
    "CosFace (s=64, m=0.35)": lambda t: np.cos(t) - 0.35,
    "ArcFace (s=64, m=0.5)": lambda t: combined(t, 1.0, 0.5, 0.0),
    "Combined margin (s=64, m1=1, m2=0.3, m3=0.2)": lambda t: combined(t, 1.0, 0.3, 0.2),
}


# ---- target logits --------------------------------------------------------------------------------------------


def test_target_logit_figure_draws_each_default_head_as_its_formula(tmp_path):
    path = tmp_path / "target.png"
    figure = plot_target_logits(path=path, num_points=181)
    (ax,) = figure.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == list(EXPECTED_TARGET)
    assert len(lines) == len(DEFAULT_HEADS)
    assert ax.get_xlim() == (0.0, 180.0)
    for label, formula in EXPECTED_TARGET.items():
        degrees, values = lines[label].get_data()
        np.testing.assert_allclose(degrees, np.linspace(0, 180, 181))
        np.testing.assert_allclose(values, formula(np.deg2rad(degrees)), atol=1e-6, err_msg=label)
    with Image.open(path) as image:  # the PNG is this figure: 6 x 4 inches at 100 dpi
        assert image.size == (600, 400)


def test_target_logit_curves_use_the_configured_hyperparameters_and_leave_the_head_alone():
    thetas = torch.linspace(0, math.pi, 50, dtype=torch.float64)
    t = thetas.numpy()
    easy = create_head("arcface", embedding_size=16, num_classes=7, margin=0.4, easy_margin=True)
    expected = np.where(np.cos(t) > 0, np.cos(t + 0.4), np.cos(t))
    np.testing.assert_allclose(target_logit_curve(easy, thetas).numpy(), expected, atol=1e-9)

    # MagFace's margin grows with the feature norm: at ||x|| = 60, m = (0.8 - 0.45) / 100 * 50 + 0.45 = 0.625.
    magface = create_head("magface", embedding_size=4, num_classes=3)
    np.testing.assert_allclose(
        target_logit_curve(magface, thetas, feature_norm=60.0).numpy(), combined(t, 1.0, 0.625, 0.0), atol=1e-9
    )

    # A softmax head with arbitrary weights and bias: the probe uses a unit weight and no bias, so cos(theta).
    softmax = create_head("softmax", embedding_size=5, num_classes=3)
    with torch.no_grad():
        softmax.bias.fill_(3.0)
    before = softmax.weight.detach().clone()
    np.testing.assert_allclose(target_logit_curve(softmax, thetas, feature_norm=7.0).numpy(), np.cos(t), atol=1e-9)
    assert torch.equal(softmax.weight, before) and bool((softmax.bias == 3.0).all())


# ---- decision boundaries --------------------------------------------------------------------------------------


def panels(figure):
    return [ax for ax in figure.axes if ax.get_visible()]


def boundary_lines(ax):
    lines = {line.get_gid(): line for line in ax.get_lines()}
    return lines["boundary-class1"], lines["boundary-class2"]


def test_decision_boundaries_in_angle_space_match_the_papers_rules():
    figure = plot_decision_boundaries(num_points=361)
    axes = panels(figure)
    assert len(axes) == len(DEFAULT_HEADS)
    by_head = dict(zip(EXPECTED_TARGET, axes, strict=True))
    for ax in axes:
        assert ax.get_xlim() == (0.0, 180.0) and ax.get_ylim() == (0.0, 180.0)

    # Softmax: theta1 = theta2, both boundaries on the diagonal.
    first, second = boundary_lines(by_head["Softmax"])
    np.testing.assert_allclose(first.get_ydata(), first.get_xdata(), atol=1e-6)
    np.testing.assert_allclose(second.get_xdata(), second.get_ydata(), atol=1e-6)

    # ArcFace: theta2 = theta1 + m (m = 0.5 rad), defined while theta1 + m <= 180 degrees; class 2 mirrored.
    first, second = boundary_lines(by_head["ArcFace (s=64, m=0.5)"])
    x, y = first.get_data()
    np.testing.assert_allclose(y - x, np.rad2deg(0.5), atol=1e-6)
    assert x.min() == 0 and x.max() == pytest.approx(180 - np.rad2deg(0.5), abs=0.5)
    np.testing.assert_allclose(second.get_xdata(), y)
    np.testing.assert_allclose(second.get_ydata(), x)

    # CosFace: cos(theta2) = cos(theta1) - m, inverted here with arccos.
    x, y = boundary_lines(by_head["CosFace (s=64, m=0.35)"])[0].get_data()
    np.testing.assert_allclose(y, np.rad2deg(np.arccos(np.cos(np.deg2rad(x)) - 0.35)), atol=1e-5)

    # SphereFace with lambda = 5: cos(theta2) = (5 cos(theta1) + psi(theta1)) / 6.
    x, y = boundary_lines(by_head["SphereFace (m=4, λ=5)"])[0].get_data()
    t = np.deg2rad(x)
    np.testing.assert_allclose(y, np.rad2deg(np.arccos((5 * np.cos(t) + psi(t, 4)) / 6)), atol=1e-5)


def test_decision_boundaries_in_cosine_space():
    figure = plot_decision_boundaries(["softmax", ("cosface", {"margin": 0.2})], space="cosine", num_points=91)
    softmax, cosface = panels(figure)
    assert cosface.get_xlim() == (-1.0, 1.0) and cosface.get_ylim() == (-1.0, 1.0)
    x, y = boundary_lines(cosface)[0].get_data()
    np.testing.assert_allclose(y, x - 0.2, atol=1e-9)  # a straight line, shifted by the margin
    # Below cos(theta1) = -0.8 no theta2 reaches the boundary: the line stops at the last grid point above it.
    assert -0.8 <= x.min() < -0.78
    x, y = boundary_lines(softmax)[1].get_data()
    np.testing.assert_allclose(x, y, atol=1e-9)


def test_decision_boundary_is_nan_where_undefined_and_refuses_non_monotone_heads():
    arcface = create_head("arcface", embedding_size=3, num_classes=2, margin=0.5)
    thetas = torch.tensor([0.2, math.pi - 0.6, math.pi - 0.4])
    np.testing.assert_allclose(decision_boundary(arcface, thetas).numpy(), [0.7, math.pi - 0.1, np.nan], atol=1e-12)
    with pytest.raises(ValueError, match="CurricularFace's non-target logit does not decrease"):
        decision_boundary(create_head("curricularface", embedding_size=3, num_classes=2), thetas)
    with pytest.raises(ValueError, match="'angle', 'cosine'"):
        plot_decision_boundaries(space="radians")


# ---- geometry -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def geometry_2d():
    return train_geometry_models(("softmax", "arcface"), classes=(0, 1, 2), steps=300, seed=0)


def test_geometry_training_learns_separable_angles_on_real_digits(geometry_2d):
    from sklearn.datasets import load_digits

    target = load_digits().target
    subset = target[np.isin(target, [0, 1, 2])]
    arcface = geometry_2d["arcface"]
    # Half of each class is held out of training (the default); the results are those samples only.
    assert arcface.split == "held-out" and arcface.class_names == ["0", "1", "2"]
    for digit in (0, 1, 2):
        assert int((arcface.labels == digit).sum()) == round((subset == digit).sum() / 2)
    assert arcface.embeddings.shape == (arcface.labels.numel(), 2)
    np.testing.assert_array_equal(arcface.labels.numpy(), subset[arcface.indices.numpy()])
    assert torch.equal(geometry_2d["softmax"].indices, arcface.indices)  # every loss is shown the same samples

    # Accuracy recomputed from the embeddings and the class weights (ArcFace infers by the largest cosine).
    x = arcface.embeddings.numpy() / np.linalg.norm(arcface.embeddings.numpy(), axis=1, keepdims=True)
    w = arcface.class_weights.numpy() / np.linalg.norm(arcface.class_weights.numpy(), axis=1, keepdims=True)
    cosines = x @ w.T
    accuracy = float((cosines.argmax(1) == arcface.labels.numpy()).mean())
    assert arcface.accuracy == pytest.approx(accuracy)
    assert accuracy > 0.9
    # The margin loss pulls each sample well inside its class's angular sector.
    own = np.degrees(np.arccos(np.clip(cosines[np.arange(len(x)), arcface.labels.numpy()], -1, 1)))
    assert np.median(own) < 20.0


def test_geometry_2d_figure_draws_the_embeddings_and_one_arrow_per_class_weight(geometry_2d):
    figure = plot_geometry(geometry_2d)
    axes = figure.axes
    assert len(axes) == 2
    for ax, result in zip(axes, geometry_2d.values(), strict=True):
        assert ax.get_title().startswith(result.label.split(" (")[0])
        (points,) = [c for c in ax.collections if type(c).__name__ == "PathCollection"]
        np.testing.assert_allclose(points.get_offsets(), result.embeddings.numpy(), rtol=1e-6)
        (arrows,) = [c for c in ax.collections if type(c).__name__ == "Quiver"]
        assert len(arrows.U) == 3
        directions = np.stack([arrows.U, arrows.V], axis=1)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        weights = result.class_weights.numpy()
        np.testing.assert_allclose(directions, weights / np.linalg.norm(weights, axis=1, keepdims=True), atol=1e-6)
        np.testing.assert_allclose(arrows.X, 0) and np.testing.assert_allclose(arrows.Y, 0)
        low, high = ax.get_xlim()
        assert low <= result.embeddings[:, 0].min() and result.embeddings[:, 0].max() <= high


def test_geometry_3d_figure_puts_the_embeddings_on_the_unit_sphere(tmp_path):
    results = train_geometry_models(
        ("cosface", "subcenter_arcface"), embedding_size=3, classes=(3, 7), steps=20, holdout_fraction=0.0
    )
    assert results["cosface"].split == "training"
    assert torch.equal(results["cosface"].indices, torch.arange(len(load_digits_subset((3, 7))[1])))
    assert results["subcenter_arcface"].class_weights.shape == (2 * 3, 3)  # 3 sub-centres per class
    figure = plot_geometry(results, tmp_path / "sphere.png", max_points_per_class=25)
    assert [ax.name for ax in figure.axes] == ["3d", "3d"]
    for ax, result in zip(figure.axes, results.values(), strict=True):
        weights = [line for line in ax.get_lines() if line.get_gid() == "class-weight"]
        assert len(weights) == result.class_weights.shape[0]
        unit = torch.nn.functional.normalize(result.class_weights, dim=1).numpy()
        tips = np.array([[coordinate[-1] for coordinate in line.get_data_3d()] for line in weights])
        np.testing.assert_allclose(tips, 1.3 * unit, atol=1e-6)
        (points,) = [c for c in ax.collections if type(c).__name__ == "Path3DCollection"]
        xyz = np.stack(points._offsets3d, axis=1)
        assert xyz.shape == (50, 3)  # 25 per class
        np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, atol=1e-6)
    assert (tmp_path / "sphere.png").stat().st_size > 0


def test_geometry_argument_checks():
    with pytest.raises(ValueError, match="embedding_size"):
        train_geometry_models(("arcface",), embedding_size=4)
    with pytest.raises(ValueError, match="holdout_fraction"):
        train_geometry_models(("arcface",), holdout_fraction=1.0)
    with pytest.raises(ValueError, match="two distinct digits"):
        load_digits_subset((1, 1))
    with pytest.raises(ValueError, match="does not take 'margn'"):
        train_geometry_models(("arcface",), steps=1, head_kwargs={"arcface": {"margn": 0.1}})


# ---- theta histograms -----------------------------------------------------------------------------------------


def test_theta_histograms_count_every_sample_once_per_stage(tmp_path):
    generator = torch.Generator().manual_seed(0)
    stages = {
        "start": 90 + 10 * torch.randn(500, generator=generator),
        "end": 25 * torch.rand(300, generator=generator),
    }
    figure = plot_theta_histograms(stages, tmp_path / "theta.png", bins=36)
    (ax,) = figure.axes
    assert len(ax.patches) == 2 and ax.get_xlim() == (0.0, 180.0)
    for curve, (stage, angles) in zip(ax.patches, stages.items(), strict=True):
        counts, edges = curve.get_data()[:2]
        assert counts.sum() == angles.numel()
        np.testing.assert_array_equal(counts, np.histogram(angles.numpy(), bins=36, range=(0, 180))[0])
        np.testing.assert_allclose(edges, np.linspace(0, 180, 37))
        assert curve.get_label() == f"{stage} (n={angles.numel()}, mean {angles.double().mean():.1f}°)"
    with pytest.raises(ValueError, match="end in .png"):
        plot_theta_histograms(stages, tmp_path / "theta.jpg")


# ---- command line ---------------------------------------------------------------------------------------------


def test_parse_head_spec():
    assert parse_head_spec("arcface") == ("arcface", {})
    assert parse_head_spec("arcface:margin=0.3,scale=32,easy_margin=true") == (
        "arcface",
        {"margin": 0.3, "scale": 32, "easy_margin": True},
    )
    with pytest.raises(ValueError, match="is not key=value"):
        parse_head_spec("arcface:margin")


def test_cli_writes_each_figure_and_rejects_bad_heads(tmp_path, capsys):
    out = tmp_path / "target.png"
    assert main(["target-logits", "--head", "arcface:margin=0.3", "--head", "cosface", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (600, 400)
    out = tmp_path / "boundaries.png"
    assert main(["decision-boundaries", "--head", "softmax", "--space", "cosine", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    out = tmp_path / "geometry.png"
    argv = ["geometry", "--loss", "arcface:margin=0.2", "--classes", "0", "1", "--steps", "5", "--out", str(out)]
    assert main(argv) == 0
    assert "ArcFace (s=16, m=0.2): held-out accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["target-logits", "--head", "arcface:margn=0.3", "--out", str(tmp_path / "bad.png")])
    assert exit_info.value.code == 2
    assert "does not take 'margn'" in capsys.readouterr().err


@pytest.mark.slow
def test_default_geometry_training_separates_every_loss():
    for embedding_size in (2, 3):
        results = train_geometry_models(embedding_size=embedding_size)
        # Held-out accuracy of digits 0-4 (measured: 98.2% to 99.8% in 2-D and 3-D).
        assert {loss: result.accuracy > 0.95 for loss, result in results.items()} == dict.fromkeys(results, True)
