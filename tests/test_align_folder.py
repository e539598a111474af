"""``lightning-margin data align``: layout, landmarks.tsv, the report of bad files, resuming, overwriting, workers.

Most tests use the stand-in detector of :mod:`tests.align_stand_in` (it "finds" a face at fixed landmarks in any
image that is not black), so they need neither dlib nor time; the last one runs dlib on real LFW photos.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_margin.align import norm_crop, read_landmarks_file
from lightning_margin.align.folder import JOURNAL_FILE, REPORT_FILE, align_folder, list_images, main
from tests.align_stand_in import CALLS, FACE, STOP_AT


@pytest.fixture(autouse=True)
def fresh_counts():
    CALLS.clear()
    STOP_AT.clear()


def photo(path: Path, seed: int, black: bool = False) -> None:
    generator = np.random.default_rng(seed)
    pixels = np.zeros((150, 130, 3), np.uint8) if black else generator.integers(0, 256, (150, 130, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)


def photos(root: Path) -> list[str]:
    """A folder per identity: five good photos (PNG and JPEG) and a black one."""
    names = ["Ann/1.png", "Ann/2.jpg", "Bob/1.png", "Bob/2.png", "Cy/1.jpg"]
    for seed, name in enumerate(names):
        photo(root / name, seed)
    photo(root / "Cy/black.png", 0, black=True)
    return names


def saved(image: Image.Image, image_format: str) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, quality=95)
    return np.asarray(Image.open(buffer))


def run(source: Path, output: Path, **settings) -> object:
    settings.setdefault("detector", "stand_in")
    return align_folder(source, output, progress=False, **settings)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    return [path.name for path in folder.rglob("*") if path.name.endswith(".tmp") or ".partial" in path.name]


def test_crops_keep_the_layout_and_are_norm_crops_of_the_landmarks_written(tmp_path):
    names = photos(tmp_path / "in")
    summary = run(tmp_path / "in", tmp_path / "out")
    assert (summary.aligned, summary.done, summary.failed) == (5, 0, [("Cy/black.png", "no face found")])
    assert list_images(tmp_path / "out") == names  # same relative paths; landmarks.tsv, report.tsv beside them
    records = read_landmarks_file(tmp_path / "out" / "landmarks.tsv")
    assert sorted(records) == names
    for name in names:
        record = records[name].face
        source = Image.open(tmp_path / "in" / name)
        np.testing.assert_allclose(record.landmarks, FACE + np.asarray(source.convert("RGB"))[0, 0, 0] / 64, atol=5e-4)
        assert (record.score, record.box) == (0.8, (5.0, 5.0, 110.0, 120.0))
        crop = Image.open(tmp_path / "out" / name)
        assert crop.size == (112, 112) and crop.format == source.format
        # Exactly the crop of the landmarks the file holds (JPEG: as it reads back after saving at quality 95).
        np.testing.assert_array_equal(np.asarray(crop), saved(norm_crop(source, record.landmarks), crop.format))
    assert (tmp_path / "out" / REPORT_FILE).read_text().splitlines()[1:] == ["Cy/black.png\tno face found"]
    assert not (tmp_path / "out" / JOURNAL_FILE).exists() and leftovers(tmp_path / "out") == []


def test_bad_files_are_reported_and_skipped_never_a_crash(tmp_path, capsys):
    source = tmp_path / "in"
    names = photos(source)
    jpeg = io.BytesIO()
    Image.fromarray(np.full((150, 130, 3), 99, np.uint8)).save(jpeg, format="JPEG")
    (source / "Bad").mkdir()
    (source / "Bad/empty.jpg").write_bytes(b"")
    (source / "Bad/truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (source / "Bad/text.jpg").write_text("not an image\n")
    (source / "Bad/corrupt.jpg").write_bytes(jpeg.getvalue()[:20] + bytes(range(256)) * 8)
    (source / "Bad/notes.txt").write_text("not an image extension: not listed")
    assert main([str(source), str(tmp_path / "out"), "--detector", "stand_in", "--quiet", "--workers", "2"]) == 0
    report = dict(line.split("\t") for line in (tmp_path / "out" / REPORT_FILE).read_text().splitlines()[1:])
    assert sorted(report) == ["Bad/corrupt.jpg", "Bad/empty.jpg", "Bad/text.jpg", "Bad/truncated.jpg", "Cy/black.png"]
    assert report["Bad/empty.jpg"] == "cannot decode: the data is empty (0 bytes)"
    assert report["Bad/truncated.jpg"].startswith("cannot decode: OSError")  # "truncated" in some form
    assert report["Bad/text.jpg"].startswith("cannot decode: UnidentifiedImageError")
    assert report["Bad/corrupt.jpg"].startswith("cannot decode:")
    assert sorted(read_landmarks_file(tmp_path / "out" / "landmarks.tsv")) == names
    out = capsys.readouterr().out
    assert "aligned 5, already done 0, failed 5" in out and REPORT_FILE in out


def test_an_interrupted_run_leaves_whole_files_and_a_rerun_finishes_it(tmp_path):
    names = photos(tmp_path / "in")
    run(tmp_path / "in", tmp_path / "reference")

    CALLS.clear()
    STOP_AT.append(4)  # killed while detecting the 4th image
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "in", tmp_path / "out")
    written = [name for name in names if (tmp_path / "out" / name).exists()]
    assert written == names[:3] and leftovers(tmp_path / "out") == []
    for name in written:  # whole files only
        Image.open(tmp_path / "out" / name).load()
    assert not (tmp_path / "out" / "landmarks.tsv").exists()
    assert sorted(read_landmarks_file(tmp_path / "out" / JOURNAL_FILE, partial_last_line=True)) == written

    CALLS.clear()
    STOP_AT.clear()
    summary = run(tmp_path / "in", tmp_path / "out")
    assert (summary.aligned, summary.done, len(summary.failed)) == (2, 3, 1)
    assert len(CALLS) == 3  # the two left and the black one: nothing done twice
    assert folder_bytes(tmp_path / "out") == folder_bytes(tmp_path / "reference")


def test_a_write_cut_off_midway_leaves_no_half_file(tmp_path, monkeypatch):
    names = photos(tmp_path / "in")
    original = Path.write_bytes
    writes: list[Path] = []

    def cut_off(self: Path, data: bytes) -> int:
        writes.append(self)
        if len(writes) == 2:
            original(self, data[: len(data) // 2])
            raise KeyboardInterrupt
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", cut_off)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "in", tmp_path / "out")
    assert [name for name in names if (tmp_path / "out" / name).exists()] == names[:1]
    assert leftovers(tmp_path / "out") == []
    monkeypatch.setattr(Path, "write_bytes", original)
    CALLS.clear()
    summary = run(tmp_path / "in", tmp_path / "out")
    # The cut-off image's landmarks were journaled before its crop: it is warped again without detection.
    assert (summary.aligned, summary.done, len(CALLS)) == (4, 1, 4)
    run(tmp_path / "in", tmp_path / "reference")
    assert folder_bytes(tmp_path / "out") == folder_bytes(tmp_path / "reference")


def test_existing_files_are_never_replaced_without_overwrite(tmp_path):
    photos(tmp_path / "in")
    (tmp_path / "out/Ann").mkdir(parents=True)
    (tmp_path / "out/Ann/1.png").write_bytes(b"mine")
    summary = run(tmp_path / "in", tmp_path / "out")
    assert (summary.aligned, summary.kept) == (4, 1)
    assert (tmp_path / "out/Ann/1.png").read_bytes() == b"mine"
    assert "Ann/1.png" not in read_landmarks_file(tmp_path / "out/landmarks.tsv")

    CALLS.clear()
    assert run(tmp_path / "in", tmp_path / "out").done == 4 and len(CALLS) == 1  # a rerun: only the black one again
    summary = run(tmp_path / "in", tmp_path / "out", overwrite=True, detector_options={"tilt": 1.0})
    assert (summary.aligned, summary.kept, summary.done) == (5, 0, 0)
    assert Image.open(tmp_path / "out/Ann/1.png").size == (112, 112)
    records = read_landmarks_file(tmp_path / "out/landmarks.tsv")
    first_pixel = np.asarray(Image.open(tmp_path / "in/Ann/1.png"))[0, 0, 0]
    np.testing.assert_allclose(records["Ann/1.png"].face.landmarks[0], FACE[0] + 1 + first_pixel / 64, atol=5e-4)


def test_a_rerun_with_other_settings_is_refused_without_overwrite(tmp_path):
    photos(tmp_path / "in")
    run(tmp_path / "in", tmp_path / "out")
    with pytest.raises(ValueError, match="made with alignment=arcface size=112, not alignment=arcface size=224"):
        run(tmp_path / "in", tmp_path / "out", image_size=224)
    assert run(tmp_path / "in", tmp_path / "out", image_size=224, overwrite=True).aligned == 5
    assert Image.open(tmp_path / "out/Bob/2.png").size == (224, 224)
    with pytest.raises(ValueError, match="multiple of 112 or of 128, got 100"):
        run(tmp_path / "in", tmp_path / "other", image_size=100)
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_a_landmarks_file_aligns_without_a_detector(tmp_path):
    photos(tmp_path / "in")
    points = " ".join(f"{value:.2f}" for value in (FACE + 3).ravel())
    listed = tmp_path / "points.txt"  # insightface's format: name x1 y1 ... x5 y5 score
    listed.write_text(f"Ann/1.png {points} 0.99\nBob/2.png {points}\n")
    summary = run(tmp_path / "in", tmp_path / "out", landmarks=listed, detector="broken")
    assert summary.aligned == 2
    assert dict(summary.failed) == {
        name: f"not listed in {listed}" for name in ("Ann/2.jpg", "Bob/1.png", "Cy/1.jpg", "Cy/black.png")
    }
    records = read_landmarks_file(tmp_path / "out/landmarks.tsv")
    assert records["Ann/1.png"].face.score == 0.99 and records["Bob/2.png"].face.score is None
    np.testing.assert_allclose(records["Ann/1.png"].face.landmarks, FACE + 3, atol=0.005)
    expected = norm_crop(Image.open(tmp_path / "in/Ann/1.png"), records["Ann/1.png"].face.landmarks)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/Ann/1.png")), np.asarray(expected))
    # The landmarks.tsv written reads back as --landmarks: the same crops again, in another folder.
    assert (
        main(
            [
                str(tmp_path / "in"),
                str(tmp_path / "again"),
                "--landmarks",
                str(tmp_path / "out/landmarks.tsv"),
                "--detector",
                "broken",
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "again/Ann/1.png").read_bytes() == (tmp_path / "out/Ann/1.png").read_bytes()


def test_two_workers_write_what_one_writes(tmp_path):
    photos(tmp_path / "in")
    run(tmp_path / "in", tmp_path / "one")
    summary = run(tmp_path / "in", tmp_path / "two", workers=2)
    assert summary.aligned == 5
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")


def test_a_flat_folder_and_an_output_inside_the_input(tmp_path):
    for seed in range(3):
        photo(tmp_path / f"{seed}.jpg", seed)
    summary = run(tmp_path, tmp_path / "aligned")
    assert summary.aligned == 3 and list_images(tmp_path / "aligned") == ["0.jpg", "1.jpg", "2.jpg"]
    assert run(tmp_path, tmp_path / "aligned").done == 3  # the output's own crops are not inputs
    with pytest.raises(ValueError, match="must differ from the input folder"):
        run(tmp_path, tmp_path)
    assert main([str(tmp_path / "absent"), str(tmp_path / "x"), "--detector", "stand_in"]) == 1


# ---- dlib on LFW photos -----------------------------------------------------------------------------------------


@pytest.mark.timeout(600)  # the failure this guards against is a hang
def test_data_align_on_lfw_photos_with_one_and_two_workers(lfw_root, tmp_path, capsys):
    pytest.importorskip("dlib", reason='the dlib detector needs the align extra: pip install -e ".[align]"')
    source = tmp_path / "lfw"
    # Abdoulaye_Wade_0003: HOG finds no face there, the CNN detector does.
    for name in ("Aaron_Eckhart", "Abdoulaye_Wade", "Abdullah_Gul"):
        shutil.copytree(lfw_root / "lfw-deepfunneled" / name, source / name)
    (source / "Aaron_Eckhart/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
    assert main([str(source), str(tmp_path / "out"), "--select", "center", "--quiet"]) == 0
    assert "aligned 24, already done 0, failed 1" in capsys.readouterr().out
    records = read_landmarks_file(tmp_path / "out/landmarks.tsv")
    report = (tmp_path / "out" / REPORT_FILE).read_text().splitlines()[1:]
    assert [line.split("\t")[0] for line in report] == ["Aaron_Eckhart/broken.jpg"]
    assert sorted(records) == [name for name in list_images(source) if name != "Aaron_Eckhart/broken.jpg"]
    for name, record in records.items():
        assert record.face.box is not None and record.face.score is not None
        expected = saved(norm_crop(Image.open(source / name), record.face.landmarks), "JPEG")
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / name)), expected)
    # dlib's detectors have run in this process now (the CNN one's thread pool started): worker processes must
    # still detect, not wait forever on a lock of a thread that was not forked with them.
    assert main([str(source), str(tmp_path / "two"), "--select", "center", "--quiet", "--workers", "2"]) == 0
    assert folder_bytes(tmp_path / "two") == folder_bytes(tmp_path / "out")
