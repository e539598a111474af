"""Build the model zoo: train each ``zoo/<name>/config.yaml``, export and evaluate it, and write the comparison.

Every step runs the same commands a user would::

    python zoo/build.py train arcface cosface   # lightning-margin fit --config zoo/<name>/config.yaml (timed)
    python zoo/build.py export arcface cosface  # lightning-margin publish <last.ckpt> --no-push, copied into zoo/<name>
    python zoo/build.py report                  # zoo/README.md (table) and zoo/roc.png from the exported folders

Without names, ``train`` and ``export`` take every folder of ``zoo/`` that has a ``config.yaml``. Checkpoints and logs
go to ``runs/zoo/<name>/`` (not in git); ``train`` also writes ``zoo/<name>/training.json`` (wall time, steps, the
machine). LFW is found through ``$LIGHTNING_MARGIN_DATA`` (the folder holding ``lfw/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ZOO = Path(__file__).resolve().parent
RUNS = ZOO.parent / "runs" / "zoo"
#: Hub organisation the cards name (``lightning-margin/<name>-lfw-r18n``).
ORGANISATION = "lightning-margin"
SET = "lfw_dev_test"


def zoo_names() -> list[str]:
    """The zoo's models: the folders of ``zoo/`` that hold a ``config.yaml``, sorted."""
    return sorted(path.parent.name for path in ZOO.glob("*/config.yaml"))


def repo_id(name: str) -> str:
    return f"{ORGANISATION}/{name}-lfw-r18n"


def _cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "lightning_margin.cli", *arguments]


def last_checkpoint(name: str) -> Path:
    checkpoints = sorted((RUNS / name).glob("**/last.ckpt"), key=lambda path: path.stat().st_mtime)
    if not checkpoints:
        raise FileNotFoundError(f"no last.ckpt under {RUNS / name}: run `python zoo/build.py train {name}` first")
    return checkpoints[-1]


def train(name: str) -> None:
    config = ZOO / name / "config.yaml"
    command = _cli("fit", "--config", str(config), "--trainer.default_root_dir", str(RUNS / name))
    print(f"[{name}] {' '.join(command[3:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    write_training_record(name, time.perf_counter() - start)


def write_training_record(name: str, seconds: float) -> None:
    """``zoo/<name>/training.json``: the wall time of the fit, its epochs and steps, and the machine it ran on."""
    import torch

    checkpoint = last_checkpoint(name)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    record = {
        "wall_seconds": round(seconds, 1),
        "epochs": state["epoch"] + 1,
        "steps": state["global_step"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    (ZOO / name / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"[{name}] trained in {seconds / 60:.1f} min: {record}", flush=True)


def export(name: str) -> None:
    """Export, evaluate and write the card into ``runs/zoo/<name>/export``, then copy the files into ``zoo/<name>/``.

    ``publish`` replaces its output folder as a whole, and ``zoo/<name>/`` also holds the config and training record.
    """
    folder = ZOO / name
    staging = RUNS / name / "export"
    command = _cli(
        "publish",
        str(last_checkpoint(name)),
        "--repo-id",
        repo_id(name),
        "--output-dir",
        str(staging),
        "--no-push",
        "--config",
        str(folder / "config.yaml"),
        "--no-progress",
    )
    subprocess.run(command, check=True)
    for path in sorted(staging.iterdir()):
        shutil.copy2(path, folder / path.name)


def report() -> None:
    """Write ``zoo/README.md``'s table and ``zoo/roc.png`` from the exported folders (re-evaluated for the ROC).

    The re-evaluation is ``lightning-margin verify``'s: it stops the report if it does not reproduce the folder's card
    (an export older than its weights).
    """
    from lightning_margin.plots.roc import plot_roc_curves
    from lightning_margin.verify import load_model, verify_models

    rows, curves = [], {}
    for name in zoo_names():
        folder = ZOO / name
        if not (folder / "metrics.json").is_file():
            print(f"[{name}] not exported yet, left out", file=sys.stderr)
            continue
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))[SET]
        training = json.loads((folder / "training.json").read_text(encoding="utf-8"))
        model = load_model(folder)
        config = model.embedder.config
        # Re-evaluated for the ROC curve, which metrics.json does not hold; the card (6 decimals) must come out exactly.
        verified = verify_models([model], progress=False, batch_size=250, tolerance=1e-5)
        if verified.mismatches or not verified.compared:
            raise SystemExit(f"[{name}] the re-evaluation does not reproduce the card: export it again")
        curves[name] = verified.rows[model.name]["roc"]
        head = ", ".join(f"{key}={value}" for key, value in (config.get("loss_kwargs") or {}).items()) or "—"
        rows.append((name, config.get("loss"), head, metrics, training, (folder / "model.safetensors").stat().st_size))
    if not rows:
        raise SystemExit("nothing exported yet: run `python zoo/build.py train` and `export` first")
    rows.sort(key=lambda row: -row[3]["accuracy"])
    lines = [
        "| model | loss | hyperparameters | DevTest accuracy | TAR@FAR=1e-3 | EER | AUC | train time | weights |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, loss, head, metrics, training, size in rows:
        lines.append(
            f"| [{name}]({name}/) | {loss} | {head} | {metrics['accuracy']:.4f} ± {metrics['accuracy_std']:.4f} "
            f"| {metrics['tar@far=1e-3']:.4f} | {metrics['eer']:.4f} | {metrics['auc']:.4f} "
            f"| {training['wall_seconds'] / 60:.1f} min | {size / 2**20:.1f} MB |"
        )
    plot_roc_curves(curves, ZOO / "roc.png", title="LFW View 1 DevTest (people unseen in training)")
    template = (ZOO / "README.template.md").read_text(encoding="utf-8")
    (ZOO / "README.md").write_text(template.replace("{{TABLE}}", "\n".join(lines)), encoding="utf-8")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["train", "export", "report"])
    parser.add_argument("names", nargs="*", help=f"zoo models (default: all of {', '.join(zoo_names())})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(zoo_names()))
    if unknown:
        parser.error(f"unknown zoo models {unknown}; the zoo has {zoo_names()}")
    if args.step == "report":
        report()
        return 0
    for name in args.names or zoo_names():
        train(name) if args.step == "train" else export(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
