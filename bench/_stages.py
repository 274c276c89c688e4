"""Stages run in-process by the pipeline's own runner with nothing recorded (no Prefect, MLflow, DVC
commit or stage record), for benchmarks that time or compare what the stages compute."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

# In-process benchmarks: offline, and no progress bars or notices from the Hugging Face libraries
# (set before a benchmark imports them: it imports this module first).
for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                     "TRANSFORMERS_VERBOSITY": "error"}.items():
    os.environ.setdefault(_key, _value)

# The tools offline and quiet, in the subprocesses a benchmark starts.
QUIET = {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
         "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
         "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
# A few-second configuration, to try a benchmark script (`--tiny`).
TINY = {
    "prepare": {"source": {"images_per_class": 12}, "target": {"shots_per_class": 3}},
    "surrogate": {"epochs": 1}, "pretrain": {"epochs": 1}, "distill": {"epochs": 1}, "finetune": {"epochs": 2},
    "evaluate": {"probe_draws": 2},
}
# Self-supervised surrogate and teacher (`--ssl`). Label mapping needs a classifier, so the prune
# method is feature mapping on k-means groups.
SSL = {"surrogate": {"mode": "simclr"}, "pretrain": {"mode": "simclr"}, "prune": {"method": "fm", "groups": "kmeans"}}


def stage_spec(project: Path, stage: str):
    from runner.spec import load_pipeline

    return next(s for s in load_pipeline(project) if s.name == stage)


def stage_context(project: Path, stage: str, params: dict, device: str, out: Path):
    """What the runner hands `tasks.<stage>.run`, with no observer, for a benchmark that calls a stage's
    helpers (its inputs as the stage reads them) rather than the whole stage."""
    from runner.context import StageContext
    from runner.events import Events, StageRun
    from runner.workspace import ScratchWorkspace

    run = StageRun(stage_spec(project, stage), params, key="scratch", deps={}, device=device)
    return StageContext(run, out, ScratchWorkspace(project), Events())


def run_stage(project: Path, stage: str, params: dict, device: str) -> dict:
    """Runs one stage through the pipeline's runner (`runner.core.run_stage`: the same keys, data-parallel
    launch and atomic writes as `tlpipe run`) in a workspace that records nothing: always computed, no
    record, no MLflow run, no resuming; returns its metrics (with `wall_time_s`)."""
    from runner import core
    from runner.workspace import ScratchWorkspace

    spec = stage_spec(project, stage)
    return core.run_stage(spec, params, ScratchWorkspace(project), device=device, refresh=True).metrics


def surrogate_inference_line(model_dir: Path, target_dir: Path, device: str) -> str:
    """The prune stage's surrogate inference over the target train split against a bare loop, as a report line."""
    from tlpipe.data import storage
    from tlpipe.training import models

    images, _ = storage.to_arrays(storage.load_prepared(target_dir)["train"])
    staged, bare, timed = inference_speed(models.load_classifier(model_dir), images, device)
    return (f"prune-stage surrogate inference on {device}: {staged:.0f} img/s vs bare loop {bare:.0f} img/s "
            f"= {staged / bare:.1%} (goal >= 90 %; {timed} images, batch 256)")


def inference_speed(model, images, device, *, batch_size: int = 256, repeats: int = 15) -> tuple[float, float, int]:
    """Images/s of a classifier over uint8 `images`: as the prune stage runs it (`inference.predict_logits`)
    and as a bare loop (same batches, autocast and device; logits kept on the device, one copy back), and
    the number of images timed. A target train split is a few hundred images, too short to time (more so
    on a GPU), so it is repeated to 6,400 images (51,200 on CUDA). Medians of `repeats` interleaved
    rounds, after one untimed round of each (allocator, cuDNN's kernel choice)."""
    import copy
    import statistics

    import torch

    from tlpipe.training import inference, runtime

    device = torch.device(device)
    wanted = 51_200 if device.type == "cuda" else 6_400
    images = images.repeat(-(-wanted // len(images)), axis=0)
    plain = copy.deepcopy(model).to(device).eval()  # the stage's copy is reformatted (channels_last on CUDA)
    pixels = torch.from_numpy(images)

    @torch.inference_mode()
    def bare() -> None:
        logits = []
        for i in range(0, len(pixels), batch_size):
            with runtime.autocast(device):
                logits.append(plain(runtime.to_float(pixels[i:i + batch_size].to(device))))
        torch.cat(logits).float().cpu()

    def staged() -> None:
        inference.predict_logits(model, images, batch_size=batch_size, device=device)

    timings: dict = {bare: [], staged: []}
    for fn in timings:
        fn()
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for fn, seconds in timings.items():
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
    n = len(images)
    return n / statistics.median(timings[staged]), n / statistics.median(timings[bare]), n


def mean_std(values) -> str:
    """"mean ± std" of a few figures (std 0 for one)."""
    values = list(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"
