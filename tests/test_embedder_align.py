"""FaceEmbedder on photos: ``embed(align=...)``, ``embed_faces`` and the alignment recorded in ``config.json``.

The aligned path is compared with the model run on insightface's crop rebuilt in the test (scikit-image's estimate +
``cv2.warpAffine``), resized and normalised without a centre crop; detection is a stand-in detector registered for
the test (dlib's own run is the last test, skipped without the ``align`` extra).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import lightning_margin.align.detect as detect
from lightning_margin.align import ARCFACE_TEMPLATE, DetectedFace, FaceDetector, register_detector
from lightning_margin.align._registry import Registry
from lightning_margin.embedder import FaceEmbedder, preprocessing_from_data
from tests.align_reference import insightface_norm_crop

# Where the stand-in detector "finds" faces in the 160x140 test photo: a small confident one, a large one.
SMALL = ARCFACE_TEMPLATE * 0.5 + [5, 5]
LARGE = ARCFACE_TEMPLATE * 1.1 + [10, 12]


@pytest.fixture
def stand_in(monkeypatch) -> FaceDetector:
    monkeypatch.setattr(detect, "_DETECTORS", Registry("detector"))

    @register_detector("stand_in")
    def stand_in() -> detect.DetectorBackend:
        def find(image: np.ndarray) -> list[DetectedFace]:
            if image.max() < 10:
                return []
            return [DetectedFace((10, 10, 130, 140), 0.2, LARGE), DetectedFace((5, 5, 60, 60), 0.9, SMALL)]

        return find

    return FaceDetector("stand_in")


def embedder(**settings) -> FaceEmbedder:
    torch.manual_seed(0)
    return FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=32, **settings)


def photo(seed: int = 0) -> Image.Image:
    generator = np.random.default_rng(seed)
    # Smooth enough that the embedding changes with the crop, not with one grey level.
    small = generator.integers(0, 256, (20, 18, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((140, 160), Image.Resampling.BICUBIC)


def insightface_crop(image: Image.Image, landmarks: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(insightface_norm_crop(np.asarray(image.convert("RGB")), landmarks)).permute(2, 0, 1)


def model_on(model: FaceEmbedder, crops: list[torch.Tensor]) -> torch.Tensor:
    """The model on crops: resize to the input size and normalise (no centre crop), flip TTA."""
    return model.embed(model.preprocess(crops, crop_size=None), preprocessed=True)


def test_embed_with_landmarks_is_the_model_on_insightfaces_crop():
    model = embedder(crop_size=100)  # the recorded centre crop is for pre-cropped faces: aligned crops skip it
    photos, landmarks = [photo(0), photo(1)], [LARGE, SMALL + 20]
    expected = model_on(
        model, [insightface_crop(image, points) for image, points in zip(photos, landmarks, strict=True)]
    )
    got = model.embed(photos, align=landmarks)
    assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.9999
    assert not torch.allclose(got, model.embed(photos, align=False), atol=1e-3)
    single = model.embed(photos[0], align=np.asarray(LARGE))  # one photo: one (5, 2) array
    torch.testing.assert_close(single, got[:1])
    with pytest.raises(ValueError, match=r"the \(5, 2\) landmarks of each of the 2 image\(s\); got shape \(1, 5, 2\)"):
        model.embed(photos, align=[LARGE])
    with pytest.raises(ValueError, match="with preprocessed=True the images are model input already"):
        model.embed(torch.zeros(1, 3, 32, 32), preprocessed=True, align=True)


def test_align_none_follows_the_config_and_true_takes_the_largest_face(stand_in):
    image = photo()
    plain, aligned = embedder(), embedder(alignment="arcface")
    torch.testing.assert_close(plain.embed(image, detector=stand_in), plain.embed(image, align=False))
    by_default = aligned.embed(image, detector=stand_in)
    torch.testing.assert_close(by_default, aligned.embed(image, align=[LARGE]))  # the largest, not the surest
    torch.testing.assert_close(plain.embed(image, align=True, detector=stand_in), by_default)  # same weights
    assert not torch.allclose(by_default, aligned.embed(image, align=False), atol=1e-3)
    # Preprocessed batches are model input: never aligned, whatever the config says.
    batch = aligned.preprocess(image)
    torch.testing.assert_close(aligned.embed(batch, preprocessed=True), plain.embed(image, align=False))


def test_a_photo_without_a_face_is_named_or_left_out(stand_in, tmp_path):
    model = embedder(alignment="arcface")
    Image.new("RGB", (140, 160)).save(tmp_path / "night.png")
    night = Image.open(tmp_path / "night.png")
    with pytest.raises(ValueError, match=r"no face found in image 1 \(.*night.png\)"):
        model.embed([photo(0), night, photo(2)], detector=stand_in)
    with pytest.warns(UserWarning, match=r"no face found in image 1 \(.*night.png\): left out"):
        kept = model.embed([photo(0), night, photo(2)], detector=stand_in, on_missing="skip")
    torch.testing.assert_close(kept, model.embed([photo(0), photo(2)], detector=stand_in))
    with pytest.warns(UserWarning, match="no face found in image 0"):
        assert model.embed(torch.zeros(1, 3, 50, 50), detector=stand_in, on_missing="skip").shape == (0, 8)
    with pytest.raises(ValueError, match="`on_missing` must be one of 'error', 'skip'"):
        model.embed(photo(), detector=stand_in, on_missing="ignore")


def test_embed_faces_returns_every_face_with_its_box_score_and_embedding(stand_in):
    model = embedder(alignment="arcface")
    faces = model.embed_faces(photo(), detector=stand_in)
    assert [face.score for face in faces] == [0.9, 0.2]  # most confident first
    assert faces[0].box == (5.0, 5.0, 60.0, 60.0)
    np.testing.assert_array_equal(faces[1].landmarks, LARGE)
    for face in faces:
        torch.testing.assert_close(face.embedding, model.embed(photo(), align=[face.landmarks])[0])
    assert model.embed_faces(Image.new("RGB", (40, 40)), detector=stand_in) == []


def test_config_json_records_the_alignment(tmp_path):
    model = embedder(alignment="arcface")
    model.save_pretrained(tmp_path / "aligned")
    config = json.loads((tmp_path / "aligned" / "config.json").read_text())
    assert config["alignment"] == "arcface"
    assert FaceEmbedder.from_pretrained(tmp_path / "aligned").alignment == "arcface"
    # A config from before the field (today's zoo): no alignment, today's behaviour.
    del config["alignment"]
    (tmp_path / "aligned" / "config.json").write_text(json.dumps(config))
    assert FaceEmbedder.from_pretrained(tmp_path / "aligned").alignment is None
    with pytest.raises(ValueError, match="`alignment` must be one of 'arcface'"):
        embedder(alignment="dlib_chip_v9")


def test_a_model_trained_on_aligned_lfw_records_the_arcface_alignment():
    aligned = preprocessing_from_data({"train": "lfw_aligned:dev_train", "image_size": 32}, {"input_size": 32})
    assert (aligned["alignment"], aligned["crop_size"]) == ("arcface", None)
    raw = preprocessing_from_data({"train": "lfw:dev_train", "image_size": 32}, {"input_size": 32})
    assert (raw["alignment"], raw["crop_size"]) == (None, 150)
    assert embedder(alignment="arcface").eval_transform("lfw_aligned:dev_test").crop_size is None


def test_embed_aligns_lfw_photos_with_dlib(lfw_root):
    pytest.importorskip("dlib", reason='the dlib detector needs the align extra: pip install -e ".[align]"')
    model = embedder(alignment="arcface")
    paths = sorted((lfw_root / "lfw-deepfunneled" / "Aaron_Peirsol").glob("*.jpg"))[:2]
    photos = [Image.open(path) for path in paths]
    detector = FaceDetector("dlib")
    largest = [max(detector(image), key=lambda face: face.area).landmarks for image in photos]
    expected = model_on(model, [insightface_crop(image, points) for image, points in zip(photos, largest, strict=True)])
    got = model.embed(photos)  # the default detector: dlib's
    assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.9999
