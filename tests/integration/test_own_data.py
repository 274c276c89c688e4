"""A user's own data end to end: RGB image folders at 64 px (raw pixels) and folders of 224-px JPEG
photos (encoded storage) as source and target, through every stage of `tlpipe run`, with the source
decoded in parts by worker processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import TINY, make_project
from tests.integration.test_pipeline import disk_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def rgb_folder(root: Path, classes: int, per_class: int, seed: int) -> Path:
    """Class c: noise around its own colour, at assorted sizes (the loader resizes them)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for i in range(per_class):
            size = int(rng.integers(48, 96))
            pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def run_project(tmp_path: Path, params: dict) -> Path:
    """A project with `params`, after `tlpipe run` (its own MLflow store and Prefect home) has succeeded."""
    project = make_project(tmp_path / "proj", params)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run([str(Path(sys.executable).with_name("tlpipe")), "run", "--project", str(project)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return project


def dvc_status(project: Path) -> dict:
    status = subprocess.run([str(Path(sys.executable).with_name("dvc")), "status", "--json"], cwd=project,
                            capture_output=True, text=True, check=True)
    return json.loads(status.stdout)


def test_rgb_image_folders_at_64_px_run_through_every_stage(tmp_path):
    source, target = rgb_folder(tmp_path / "source", 6, 16, 0), rgb_folder(tmp_path / "target", 3, 10, 1)
    params = {**TINY, "prepare": {"image_size": 64, "channels": 3,
                                  "source": {"name": str(source), "val_fraction": 0.25},
                                  "target": {"name": str(target), "shots_per_class": 2}}}
    project = run_project(tmp_path, params)
    prepared = json.loads((project / "data" / "prepared" / "source" / "train" / "dataset_info.json").read_text())
    assert prepared["features"]["pixels"]["shape"] == [3, 64, 64]
    metrics = json.loads((project / "data" / "metrics" / "prepare.json").read_text())
    assert metrics["source_train"] + metrics["source_val"] == 96 and metrics["source_classes"] == 6
    assert "accuracy" in json.loads((project / "data" / "metrics" / "evaluate.json").read_text())
    assert dvc_status(project) == {}


def jpeg_folder(root: Path, classes: int, per_class: int, seed: int, size: int = 224) -> Path:
    """Class c: a smooth field of its own colour with a bright disc and grain, saved as JPEG quality 90."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for i in range(per_class):
            cy, cx = rng.uniform(0.3, 0.7, 2)
            disc = ((y - cy) ** 2 + (x - cx) ** 2 < 0.02)[..., None] * 120
            field = colour * (0.6 + 0.4 * x[..., None]) + disc + rng.normal(0, 8, (size, size, 3))
            Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


def folder_bytes(*folders: Path) -> int:
    return sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())


def test_224_px_jpeg_folders_are_stored_encoded_and_run_through_every_stage(tmp_path):
    source, target = jpeg_folder(tmp_path / "source", 4, 12, 0), jpeg_folder(tmp_path / "target", 3, 8, 1)
    params = {**TINY, "prepare": {"image_size": 224, "channels": 3, "storage": "auto",
                                  "source": {"name": str(source), "val_fraction": 0.25},
                                  "target": {"name": str(target), "shots_per_class": 2}}}
    project = run_project(tmp_path, params)
    prepared = project / "data" / "prepared"
    info = json.loads((prepared / "source" / "train" / "dataset_info.json").read_text())
    assert info["features"]["image"]["_type"] == "Image" and "pixels" not in info["features"]
    assert json.loads(info["description"])["tlpipe_layout"] == {"storage": "encoded", "channels": 3,
                                                                "image_size": 224, "quality": 90}
    # each 224-px file kept byte for byte (at most 256, the side kept for 224): the folders' bytes and metadata
    assert folder_bytes(prepared) <= 1.3 * folder_bytes(source, target)
    data, cache = project / "data", project / ".dvc" / "cache"
    assert disk_bytes(data, cache) <= 1.1 * disk_bytes(data)  # one copy of each output on disk
    evaluate = json.loads((project / "data" / "metrics" / "evaluate.json").read_text())
    assert 0.0 <= evaluate["accuracy"] <= 1.0
    assert dvc_status(project) == {}
