"""Importing dlib's face-recognition ResNet (lightning_margin.importers.dlib), compared with dlib itself.

The reference is dlib: ``dlib.face_recognition_model_v1(dat).compute_face_descriptor(chip)`` on face chips that
``dlib.get_face_chip`` cut from real LFW photos with dlib's own detector and 5-point shape predictor. Tests that need
dlib (the ``align`` extra), face-recognition-models or LFW skip with the reason when one is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_margin.backbones.dlib_resnet import DlibResNet
from lightning_margin.embedder import FaceEmbedder
from lightning_margin.importers import create_importer
from lightning_margin.importers.cli import main as import_main
from lightning_margin.importers.dlib import dlib_import, dlib_state_dict, installed_dlib_model, read_dlib_model
from lightning_margin.importers.dlib_format import DlibLayer, read_dlib_net

# Faces of several people, ages and lightings; the first image of each (LFW deep-funneled).
PEOPLE = ["Aaron_Eckhart", "Angelina_Jolie", "Colin_Powell", "Gloria_Macapagal_Arroyo", "Serena_Williams", "Yao_Ming"]


@pytest.fixture(scope="module")
def dat() -> Path:
    try:
        return installed_dlib_model()
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def dlib():
    return pytest.importorskip("dlib", reason="the dlib parity tests need dlib (pip install dlib-bin)")


def _model_file(name: str) -> str:
    return str(installed_dlib_model(name))


@pytest.fixture(scope="module")
def chips(dlib, dat, lfw_root) -> np.ndarray:
    """dlib's own 150x150 chips of LFW faces: HOG detector (upsample 1), 5-point predictor, get_face_chip."""
    from PIL import Image

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(_model_file("shape_predictor_5_face_landmarks.dat"))
    out = []
    for person in PEOPLE:
        image = np.asarray(Image.open(lfw_root / "lfw-deepfunneled" / person / f"{person}_0001.jpg").convert("RGB"))
        (box,) = [max(detector(image, 1), key=lambda box: box.area())]
        out.append(dlib.get_face_chip(image, predictor(image, box), size=150, padding=0.25))
    return np.stack(out)


@pytest.fixture(scope="module")
def dlib_descriptors(dlib, dat, chips) -> np.ndarray:
    model = dlib.face_recognition_model_v1(str(dat))
    return np.stack([np.array(model.compute_face_descriptor(chip)) for chip in chips])


def test_the_imported_network_gives_dlibs_descriptors(dat, chips, dlib_descriptors):
    embedder = FaceEmbedder.from_dlib(dat)
    images = torch.from_numpy(chips).permute(0, 3, 1, 2)  # RGB uint8, as dlib's rgb_pixel chips
    with torch.no_grad():
        ours = embedder(embedder.preprocess(images)).double().numpy()
    assert np.abs(ours - dlib_descriptors).max() < 1e-4
    # embed() on chips (align=False: they are dlib's chips already): the recorded normalisation and L2
    # normalisation, without flip (dlib does not flip).
    unit = dlib_descriptors / np.linalg.norm(dlib_descriptors, axis=1, keepdims=True)
    assert np.abs(embedder.embed(images, flip=False, align=False).double().numpy() - unit).max() < 1e-4


def test_the_config_records_dlibs_input_and_the_import(dat):
    config, weights = read_dlib_model(dat)
    # dlib's input_rgb_image_sized<150>: (pixel - mean) / 256 with its RGB means; no crop; the 128-d descriptor.
    assert config["input_size"] == 150 and config["crop_size"] is None and config["channel_order"] == "RGB"
    assert [255 * mean for mean in config["mean"]] == pytest.approx([122.782, 117.001, 104.298], abs=1e-9)
    assert config["std"] == [256 / 255] * 3 and config["embedding_size"] == 128
    assert config["alignment"] == "dlib_chip"
    assert config["loss_kwargs"] == {"margin": 0.04, "dist_thresh": 0.6}  # dlib's metric loss, as released
    imported = config["training"]["imported"]
    assert imported["file"] == "dlib_face_recognition_resnet_model_v1.dat" and "public domain" in imported["license"]
    assert imported["sha256"] == _sha256(dat)
    assert weights["backbone.embedding.weight"].shape == (128, 256)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_command_writes_a_folder_that_loads_as_dlibs_network(dat, chips, dlib_descriptors, tmp_path, capsys):
    assert "dlib" in create_importer("dlib").name
    assert import_main(["dlib", str(tmp_path / "dlib"), "--dat", str(dat)]) == 0
    assert "imported dlib dlib_resnet from dlib_face_recognition_resnet_model_v1.dat" in capsys.readouterr().out
    embedder = FaceEmbedder.from_pretrained(tmp_path / "dlib")
    with torch.no_grad():
        ours = embedder(embedder.preprocess(torch.from_numpy(chips[:2]).permute(0, 3, 1, 2))).double().numpy()
    assert np.abs(ours - dlib_descriptors[:2]).max() < 1e-4
    assert "public domain" in (tmp_path / "dlib" / "README.md").read_text()


def test_a_truncated_file_is_refused_naming_it_and_nothing_is_written(dat, tmp_path, capsys):
    cut = tmp_path / "cut.dat"
    cut.write_bytes(dat.read_bytes()[:1_000_000])
    assert import_main(["dlib", str(tmp_path / "out"), "--dat", str(cut)]) == 1
    error = capsys.readouterr().err
    assert f"lightning-margin import dlib: {cut}: offset " in error and "truncated file" in error
    assert not (tmp_path / "out").exists()


def test_batch_norm_layers_fold_as_dlib_folds_them(dat):
    """A file saved from dlib's training network holds bn_con layers; dlib's affine_(bn_) folds each into
    ``scale = gamma / sqrt(var + eps)``, ``shift = beta - scale * mean``: so does the importer."""
    net = read_dlib_net(dat)
    index = 1  # the stem's affine layer
    affine = net.layers[index]
    gamma, beta = affine.tensors["gamma"].flatten().double(), affine.tensors["beta"].flatten().double()
    means, variances, eps = torch.linspace(-0.5, 0.5, 32).double(), torch.linspace(0.5, 2.0, 32).double(), 1e-5
    # Statistics chosen so that the folded layer is the original one.
    bn_gamma, bn_beta = gamma * torch.sqrt(variances + eps), beta + gamma * means
    bn = DlibLayer(
        "bn_con",
        "bn_con2",
        affine.offset,
        {"mode": "conv", "eps": eps},
        {
            "gamma": bn_gamma.float().view(1, -1, 1, 1),
            "beta": bn_beta.float().view(1, -1, 1, 1),
            "running_means": means.float().view(1, -1, 1, 1),
            "running_variances": variances.float().view(1, -1, 1, 1),
        },
    )
    layers = list(net.layers)
    layers[index] = bn
    model = DlibResNet(norm="affine")
    folded = dlib_state_dict(dataclasses.replace(net, layers=tuple(layers)), model)
    original = dlib_state_dict(net, model)
    torch.testing.assert_close(folded["stem.norm.weight"], original["stem.norm.weight"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(folded["stem.norm.bias"], original["stem.norm.bias"], rtol=1e-6, atol=1e-6)


def test_another_network_is_refused_naming_the_layer_and_offset(dat):
    net = read_dlib_net(dat)
    model = DlibResNet(norm="affine")
    conv = net.layers[4]  # the first block's first convolution: 3x3, stride 1
    strided = dataclasses.replace(conv, attributes={**conv.attributes, "stride_y": 2})
    with pytest.raises(ValueError, match=rf"layer 4 from the input \(con_4 at offset {conv.offset}\): con stride_y=2"):
        dlib_state_dict(dataclasses.replace(net, layers=(*net.layers[:4], strided, *net.layers[5:])), model)
    swapped = (*net.layers[:1], net.layers[2], net.layers[1], *net.layers[3:])
    with pytest.raises(ValueError, match=r"layer 1 from the input \(relu_ at offset \d+\): a 'relu' layer where"):
        dlib_state_dict(dataclasses.replace(net, layers=swapped), model)
    with pytest.raises(ValueError, match="107 layers .* but dlib's face-recognition ResNet has 108"):
        dlib_state_dict(dataclasses.replace(net, layers=net.layers[:-1]), model)
    with pytest.raises(ValueError, match="build the model with norm='affine'"):
        dlib_state_dict(net, DlibResNet(norm="batchnorm"))
    fc = net.layers[-1]
    biased = dataclasses.replace(fc, attributes={**fc.attributes, "has_bias": True})
    with pytest.raises(ValueError, match="fc has_bias=True, but dlib's face-recognition ResNet has has_bias=False"):
        dlib_import(dataclasses.replace(net, layers=(*net.layers[:-1], biased)))


def test_a_missing_models_package_says_how_to_get_the_file(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="not installed.*face-recognition-models.*--dat FILE"):
        read_dlib_model()
    with pytest.raises(FileNotFoundError, match="no/such.dat: no such dlib model file"):
        read_dlib_model("no/such.dat")


@pytest.mark.slow
def test_lfw_dev_test_accuracy_through_our_pipeline_equals_dlibs_own(dlib, dat, lfw_root):
    """LFW View 1 DevTest (1000 pairs, 1549 photos), our pipeline against dlib's own, scored the same way.

    Ours: ``FaceEmbedder.from_dlib().embed(photos, flip=False)``: the ``dlib`` detector of ``lightning_margin.align``
    (HOG, upsample 1, its CNN detector when HOG finds nothing; the largest face), the ``dlib_chip`` alignment from
    the detector's landmarks, the imported network. dlib's: its HOG / CNN detectors and the same shape predictor (the
    detector's 68 points), ``compute_face_descriptor`` (dlib's chip and network). Both: cosine of the L2-normalised
    embeddings, 10-fold accuracy (lightning_margin.metrics). The test also prints dlib's own scoring (Euclidean
    distance: 10-fold, and its fixed 0.6 threshold). About 15 minutes on 2 CPU cores (dlib: ~0.3 s per face).
    """
    from PIL import Image

    from lightning_margin.data.lfw import LFWPairs, lfw_image_path
    from lightning_margin.metrics.functional import verification_metrics

    pairs = LFWPairs(lfw_root, "dev_test", check_files=False).pairs
    names = sorted(
        {lfw_image_path(p.name1, p.number1) for p in pairs} | {lfw_image_path(p.name2, p.number2) for p in pairs}
    )
    folder = lfw_root / "lfw-deepfunneled"

    embedder = FaceEmbedder.from_dlib(dat)
    ours = torch.cat(
        [
            embedder.embed([Image.open(folder / name) for name in names[start : start + 64]], flip=False)
            for start in range(0, len(names), 64)
        ]
    ).double()

    hog, cnn = (
        dlib.get_frontal_face_detector(),
        dlib.cnn_face_detection_model_v1(_model_file("mmod_human_face_detector.dat")),
    )
    predictor = dlib.shape_predictor(_model_file("shape_predictor_68_face_landmarks.dat"))
    recognizer = dlib.face_recognition_model_v1(str(dat))
    descriptors = []
    for name in names:
        image = np.asarray(Image.open(folder / name).convert("RGB"))
        boxes = list(hog(image, 1)) or [detection.rect for detection in cnn(image, 1)]
        box = max(boxes, key=lambda box: box.area())
        descriptors.append(np.array(recognizer.compute_face_descriptor(image, predictor(image, box))))
    theirs = torch.from_numpy(np.stack(descriptors))

    index = {name: position for position, name in enumerate(names)}
    first = torch.tensor([index[lfw_image_path(p.name1, p.number1)] for p in pairs])
    second = torch.tensor([index[lfw_image_path(p.name2, p.number2)] for p in pairs])
    issame = torch.tensor([p.issame for p in pairs])

    def accuracy(scores: torch.Tensor) -> float:
        return 100 * verification_metrics(scores, issame)["accuracy"].item()

    unit = torch.nn.functional.normalize(theirs, dim=1)
    ours_accuracy = accuracy((ours[first] * ours[second]).sum(1))
    dlib_accuracy = accuracy((unit[first] * unit[second]).sum(1))
    distance = (theirs[first] - theirs[second]).norm(dim=1)
    print(
        f"LFW DevTest accuracy: ours {ours_accuracy:.2f}%, dlib's pipeline {dlib_accuracy:.2f}% (cosine, 10-fold); "
        f"dlib's Euclidean distance: {accuracy(-distance):.2f}% (10-fold), "
        f"{100 * ((distance < 0.6) == issame).double().mean().item():.2f}% (threshold 0.6)"
    )
    assert abs(ours_accuracy - dlib_accuracy) <= 0.2
