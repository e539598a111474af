"""Images per second of the RecordIO and LFW readers (decode + transforms) against a bare decode loop, one worker.

What one DataLoader worker does per training sample is: read the encoded bytes, decode them, preprocess. This
script times exactly that, in one process with one torch thread, for

* ``bare decode``: ``np.asarray(Image.open(BytesIO(data)).convert("RGB"))`` over the same JPEG bytes held in memory,
  the least any pipeline must do to get pixels;
* ``RecordIODataset`` and ``LFWPeople`` with no transform (read + decode only) and with the training
  ``FaceTransform`` (LFW: 150 px centre crop, resize to 112, random flip, normalisation to [-1, 1]);
* the same with ``FaceDataModule(normalize_on_device=True)``'s worker transform (crop + resize only, ``uint8``
  out; the flip and the normalisation then run per batch on the training device);
* the same for an aligned 112x112 RecordIO set (what MS1MV2-style sets hold: no crop, no resize), built by
  re-encoding the LFW crops, against a bare decode of those bytes;
* the transform's stages alone, on already decoded images, to show where the time goes.

The ``.rec`` files are built in a temporary folder from the first ``--num-images`` LFW DevTrain images (never copied
anywhere else). Files are read once before timing, so the page cache serves them: this measures CPU cost, not disk.
The pipelines are timed round-robin, ``--repeats`` rounds, keeping each one's best round, as CPU time
(``time.process_time``: what the worker spends, comparable on a busy machine) and as wall time.

Usage::

    LIGHTNING_MARGIN_DATA=../shared/data python benchmarks/data_loading.py [--num-images 500] [--repeats 7]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightning_margin.data import (
    LFW_CROP_SIZE,
    FaceTransform,
    LFWPeople,
    RecordIODataset,
    center_crop,
    decode_image,
    horizontal_flip,
    normalize,
    resize,
    write_recordio,
)


def bare_decode(images: Sequence[bytes]) -> Callable[[], None]:
    def run() -> None:
        for data in images:
            np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    return run


def dataset_loop(dataset: torch.utils.data.Dataset, count: int) -> Callable[[], None]:
    def run() -> None:
        for index in range(count):
            dataset[index]

    return run


def stage_loop(function: Callable[[torch.Tensor], object], images: Sequence[torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        for image in images:
            function(image)

    return run


def aligned_copies(images: Sequence[bytes], image_size: int) -> list[bytes]:
    """LFW centre crops resized to ``image_size`` and re-encoded (JPEG quality 95): stand-ins for aligned faces."""
    copies = []
    low = (250 - LFW_CROP_SIZE) // 2
    for data in images:
        image = Image.open(io.BytesIO(data)).convert("RGB").crop((low, low, low + LFW_CROP_SIZE, low + LFW_CROP_SIZE))
        buffer = io.BytesIO()
        image.resize((image_size, image_size), Image.BILINEAR).save(buffer, format="JPEG", quality=95)
        copies.append(buffer.getvalue())
    return copies


def time_round_robin(pipelines: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best (CPU seconds, wall seconds) of each pipeline over ``repeats`` interleaved rounds."""
    best = {name: (float("inf"), float("inf")) for name in pipelines}
    for _ in range(repeats):
        for name, run in pipelines.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("LIGHTNING_MARGIN_DATA"), help="folder holding lfw/")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--image-size", type=int, default=112)
    arguments = parser.parse_args(argv)
    if not arguments.data_root or not (Path(arguments.data_root) / "lfw" / "lfw-deepfunneled").is_dir():
        print("needs LFW: pass --data-root or set LIGHTNING_MARGIN_DATA to the folder holding lfw/", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # one DataLoader worker uses one thread
    torch.manual_seed(0)
    size = arguments.image_size
    train = FaceTransform(size, LFW_CROP_SIZE, flip_probability=0.5)
    aligned_train = FaceTransform(size, None, flip_probability=0.5)
    # What the workers do with FaceDataModule(normalize_on_device=True): flip and normalisation move to the device.
    worker = FaceTransform(size, LFW_CROP_SIZE, normalize=False)
    aligned_worker = FaceTransform(size, None, normalize=False)
    lfw = LFWPeople(Path(arguments.data_root) / "lfw", "dev_train", transform=train)
    lfw_plain = LFWPeople(Path(arguments.data_root) / "lfw", "dev_train")
    count = min(arguments.num_images, len(lfw))
    samples = lfw.samples[:count]
    images = [(lfw.images_folder / relative).read_bytes() for relative, _ in samples]
    aligned = aligned_copies(images, size)
    decoded = [decode_image(data) for data in images]
    crops = [center_crop(image, LFW_CROP_SIZE) for image in decoded]
    resized = [resize(crop, size) for crop in crops]
    with tempfile.TemporaryDirectory() as folder:
        labels = [label for _, label in samples]
        for name, encoded in (("lfw", images), ("aligned", aligned)):
            (Path(folder) / name).mkdir()
            write_recordio(Path(folder) / name / "train.rec", zip(encoded, labels, strict=True))
        record = RecordIODataset(Path(folder) / "lfw" / "train.rec", transform=train)
        record_plain = RecordIODataset(Path(folder) / "lfw" / "train.rec")
        record_aligned = RecordIODataset(Path(folder) / "aligned" / "train.rec", transform=aligned_train)
        record_worker = RecordIODataset(Path(folder) / "lfw" / "train.rec", transform=worker)
        lfw_worker = LFWPeople(Path(arguments.data_root) / "lfw", "dev_train", transform=worker)
        aligned_record_worker = RecordIODataset(Path(folder) / "aligned" / "train.rec", transform=aligned_worker)
        pipelines = {
            "LFW 250x250 JPEG: bare decode": bare_decode(images),
            "RecordIODataset, no transform": dataset_loop(record_plain, count),
            "RecordIODataset + FaceTransform": dataset_loop(record, count),
            "RecordIODataset + worker transform (normalize_on_device)": dataset_loop(record_worker, count),
            "LFWPeople, no transform": dataset_loop(lfw_plain, count),
            "LFWPeople + FaceTransform": dataset_loop(lfw, count),
            "LFWPeople + worker transform (normalize_on_device)": dataset_loop(lfw_worker, count),
            f"aligned {size}x{size} JPEG: bare decode": bare_decode(aligned),
            "RecordIODataset (aligned) + FaceTransform": dataset_loop(record_aligned, count),
            "RecordIODataset (aligned) + worker transform (normalize_on_device)": dataset_loop(
                aligned_record_worker, count
            ),
            f"stage: resize 150 -> {size} (uint8)": stage_loop(lambda image: resize(image, size), crops),
            "stage: horizontal flip (uint8)": stage_loop(horizontal_flip, resized),
            "stage: normalise to [-1, 1] (float32)": stage_loop(normalize, resized),
        }
        for run in pipelines.values():
            run()  # warm up: page cache, lazy file opening, allocator
        best = time_round_robin(pipelines, arguments.repeats)
    baselines = {"RecordIODataset (aligned)": f"aligned {size}x{size} JPEG: bare decode"}
    width = max(len(name) for name in pipelines)
    print(f"{count} images, best of {arguments.repeats} interleaved rounds, 1 process, 1 torch thread")
    print(f"{'pipeline':<{width}}  {'us/img':>7}  {'img/s CPU':>9}  {'vs bare':>7}  {'img/s wall':>10}")
    for name, (cpu, wall) in best.items():
        base_name = next((b for prefix, b in baselines.items() if name.startswith(prefix)), None)
        if base_name is None:
            base_name = "LFW 250x250 JPEG: bare decode" if not name.startswith("aligned") else name
        ratio = "" if name.startswith("stage") else f"{best[base_name][0] / cpu:>6.2f}x"
        print(f"{name:<{width}}  {cpu / count * 1e6:>7.1f}  {count / cpu:>9.0f}  {ratio:>7}  {count / wall:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
