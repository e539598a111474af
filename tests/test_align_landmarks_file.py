"""``landmarks.tsv``: the lines ``data align`` writes read back as they were, insightface's lists read as they are."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_margin.align import DetectedFace, LandmarksRecord, read_landmarks_file, write_landmarks_file
from lightning_margin.align.landmarks_file import format_landmarks_line, parse_landmarks_line, rounded

LANDMARKS = [[106.25, 114.5], [144.0, 113.875], [125.0, 136.0], [109.0, 158.0], [141.0, 158.0]]


def test_records_written_read_back_identically(tmp_path):
    generator = np.random.default_rng(0)
    faces = {
        "Ann/Ann_0001.jpg": rounded(DetectedFace((67, 80, 176, 188), 1.925888, generator.uniform(0, 250, (5, 2)))),
        "Bob Smith/photo 2.png": rounded(DetectedFace.from_landmarks(generator.uniform(0, 250, (5, 2)), score=0.5)),
        "flat.jpg": DetectedFace.from_landmarks(LANDMARKS),
    }
    path = tmp_path / "landmarks.tsv"
    write_landmarks_file(path, [LandmarksRecord(name, face) for name, face in faces.items()], "made by a test\nline 2")
    text = path.read_text()
    assert text.startswith("# made by a test\n# line 2\n") and text.endswith("\n")
    assert [line.split("\t")[0] for line in text.splitlines()[2:]] == sorted(faces)  # sorted by path
    records = read_landmarks_file(path)
    assert sorted(records) == sorted(faces)
    for name, face in faces.items():
        got = records[name].face
        np.testing.assert_array_equal(got.landmarks, face.landmarks)  # rounded values survive the text exactly
        assert (got.score, got.box) == (face.score, face.box)
    assert [len(line.split("\t")) for line in text.splitlines()[2:]] == [16, 12, 11]


def test_insightface_lines_read_as_they_are(tmp_path):
    # IJB's *_name_5pts_score.txt: name, ten coordinates, score, separated by spaces.
    path = tmp_path / "ijbc_name_5pts_score.txt"
    path.write_text(
        "1.jpg 46.060 62.026 87.785 60.323 68.761 77.590 52.022 99.615 83.900 98.079 0.999\n"
        "2.jpg  46.0 62.0  87.7 60.3 68.7 77.5 52.0 99.6 83.9 98.0\n\n# a comment\n"
    )
    records = read_landmarks_file(path)
    assert records["1.jpg"].face.score == 0.999 and records["2.jpg"].face.score is None
    np.testing.assert_array_equal(records["1.jpg"].face.landmarks[0], [46.06, 62.026])
    assert records["1.jpg"].face.box is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.jpg 1 2 3 4 5 6 7 8 9", r"list.txt:2: expected PATH, 10 coordinates.*got 10 fields"),
        ("a.jpg 1 2 3 4 5 6 7 8 9 10 0.9 1 2 3", r"list.txt:2: .*got 15 fields"),
        ("a.jpg 1 2 3 4 5 six 7 8 9 10", r"list.txt:2: the fields after the path must be numbers"),
        ("a.jpg 1 2 3 4 5 nan 7 8 9 10", r"list.txt:2: the landmarks must be finite numbers"),
        ("a.jpg\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t0.9\t5\t5\t1\t1", r"list.txt:2: a face's box must be finite"),
    ],
)
def test_malformed_lines_are_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "list.txt"
    path.write_text(f"ok.jpg 1 1 3 1 2 2 1 3 3 3\n{line}\n")
    with pytest.raises(ValueError, match=message):
        read_landmarks_file(path)


def test_a_path_listed_twice_is_an_error_and_a_cut_off_last_line_can_be_ignored(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.jpg 1 1 3 1 2 2 1 3 3 3\nb.jpg 1 1 3 1 2 2 1 3 3 3\na.jpg 1 1 3 1 2 2 1 3 3 3\n")
    with pytest.raises(ValueError, match=r"list.txt:3: a.jpg is listed again \(first on line 1\)"):
        read_landmarks_file(path)
    path.write_text("a.jpg 1 1 3 1 2 2 1 3 3 3\nb.jpg 1 1 3 1 2")  # a journal killed mid-write
    assert sorted(read_landmarks_file(path, partial_last_line=True)) == ["a.jpg"]
    with pytest.raises(ValueError, match="list.txt:2"):
        read_landmarks_file(path)
    with pytest.raises(FileNotFoundError, match="landmarks file not found"):
        read_landmarks_file(tmp_path / "absent.tsv")


def test_paths_that_the_format_cannot_hold_are_refused():
    face = DetectedFace.from_landmarks(LANDMARKS)
    for path in ("#hidden.jpg", "tab\there.jpg", " padded.jpg", ""):
        with pytest.raises(ValueError, match="cannot start with '#'"):
            format_landmarks_line(LandmarksRecord(path, face))
    assert parse_landmarks_line("   ", "x:1") is None and parse_landmarks_line("# note", "x:2") is None
