"""Runs one stage: validated params in, MLflow run around it, outputs written atomically, manifest out.

The same `execute_stage` runs under `dvc repro` (through the stage cmd, `python -m tasks.<stage>`)
and under Prefect (in-process, called by flows/pipeline.py).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Callable

from tlpipe import config, devices
from tlpipe.io import staged_outputs, write_json
from tasks import cachekey, inputs, tracking, versioning
from tasks.context import STAGE_DIRS, StageContext, metrics_file, stage_dir, stage_outputs

EXIT_BAD_INPUT = 2
REPORT_SUFFIXES = {".csv", ".json", ".md", ".png", ".html"}
QUIET = {  # per-file progress bars of datasets/transformers would drown the stage's own progress
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}
for _key, _value in QUIET.items():
    os.environ.setdefault(_key, _value)


def device_name() -> str:
    """The device stages run on: TLPIPE_DEVICE (auto | cpu | cuda | cuda:N | mps), default auto.

    "cpu", and "auto" where no accelerator can exist, are answered without importing torch.
    """
    name = os.environ.get("TLPIPE_DEVICE", "auto")
    if name == "cpu" or (name == "auto" and not devices.accelerator_possible()):
        return "cpu"
    from tlpipe.runtime import resolve_device

    return str(resolve_device(name))


def run_environment(device: str) -> dict[str, str]:
    """The environment part of cache keys for a device ("cpu", "cuda:0", ...)."""
    device_type = device.split(":")[0]
    return cachekey.environment(device_type, devices.PRECISION[device_type])


def check_declaration(spec: versioning.StageSpec) -> None:
    """dvc.yaml and the stage code must agree on the stage's outputs and params file."""
    if spec.name not in STAGE_DIRS:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name!r} has no task module; known: {', '.join(STAGE_DIRS)}")
    expected = set(stage_outputs(spec.name))
    if set(spec.outs) != expected:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name} must declare outputs {sorted(expected)}, not {sorted(spec.outs)}")
    file = f"params/{spec.name}.yaml"
    declared = set(spec.params.get(file, ()))
    schema = set(config.SCHEMA[spec.name])
    if set(spec.params) != {file} or declared != schema:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name} must declare {file} keys {sorted(schema)}")


def preflight(project: Path, stages: list[versioning.StageSpec], params: dict[str, dict]) -> None:
    """Every check that can fail on bad input, run before any stage computes anything."""
    config.check_combination(params)
    for spec in stages:
        check_declaration(spec)
        if spec.name in inputs.CHECKS and not _already_ran_on(project, spec, params[spec.name]):
            inputs.CHECKS[spec.name](params[spec.name], Path(project))


def _already_ran_on(project: Path, spec: versioning.StageSpec, params: dict) -> bool:
    """True when dvc.lock shows the stage completed with these params and it reads no external data
    (built-in data only change with the code): its checks passed then and would pass now."""
    if inputs.EXTERNAL.get(spec.name, lambda *_: {})(params, Path(project)):
        return False
    entry = versioning.read_lock(project).get("stages", {}).get(spec.name, {})
    return bool(entry) and entry.get("params") == spec.declared(params)


def dep_hashes(project: Path, spec: versioning.StageSpec, known: dict[str, str], params: dict,
               locate: Callable[[str], Path] | None = None) -> dict[str, str]:
    """Content hash of every dependency; upstream outputs reuse the hash already recorded for them.

    External data sets the stage reads (a local folder named in its params) count as dependencies too.
    `locate` maps a dependency to where it is on disk (default: under the project); a sweep's
    upstream outputs live in the store instead.
    """
    locate = locate or (lambda rel: Path(project) / rel)
    hashes = {name: versioning.md5_path(path)
              for name, path in inputs.EXTERNAL.get(spec.name, lambda *_: {})(params, Path(project)).items()}
    for dep in spec.deps:
        if dep in known:
            hashes[dep] = known[dep]
        elif locate(dep).exists():  # code, or a part of an upstream output (data/prepared/source)
            hashes[dep] = versioning.md5_path(locate(dep))
        else:
            raise FileNotFoundError(f"stage {spec.name}: dependency {dep} does not exist (run its stage first)")
    return hashes


def execute_stage(
    project: Path,
    spec: versioning.StageSpec,
    *,
    params: dict,
    deps: dict[str, str],
    cache_key: str,
    device: str,
    parent_id: str | None = None,
    tags: dict[str, str] | None = None,
    show_progress: bool = True,
    store: Path | None = None,
) -> dict:
    """Runs the stage and returns its manifest: output hashes, metrics, MLflow run id, cache key.

    `store` is the store the stage may keep shared intermediate results in (default: the project's).
    """
    project = Path(project)
    module = importlib.import_module(cachekey.stage_module(spec))
    run_tags = {tracking.TAG_CACHE_KEY: cache_key, tracking.TAG_GIT: tracking.git_commit(project), **(tags or {})}
    started = time.perf_counter()
    with tracking.stage_run(spec.name, parent_id=parent_id, tags=run_tags) as tracker:
        tracker.log_params(params)
        external = inputs.EXTERNAL.get(spec.name, lambda *_: {})(params, project)
        for dep, digest in deps.items():
            if not dep.endswith(".py"):
                tracker.log_dataset(dep, external.get(dep, project / dep), digest, context="input")
        out, metrics_path = stage_dir(project, spec.name), metrics_file(project, spec.name)
        with staged_outputs(out, metrics_path) as (tmp_out, tmp_metrics):
            tmp_out.mkdir()
            ctx = StageContext(spec.name, project, params, tmp_out, tracker, device, show_progress, store)
            metrics = module.run(ctx)
            metrics["wall_time_s"] = time.perf_counter() - started
            write_json(tmp_metrics, metrics)
        tracker.log_summary(metrics)
        tracker.log_artifact(metrics_path)
        for report in sorted(out.iterdir()):  # tables, plots and reports; models and data stay in DVC
            if report.is_file() and report.suffix in REPORT_SUFFIXES:
                tracker.log_artifact(report, spec.name)
        outs = {rel: versioning.md5_path(project / rel) for rel in spec.outs}
        tracker.set_tags({f"tlpipe.out.{rel}": md5 for rel, md5 in outs.items()})
        return {
            "stage": spec.name,
            "cache_key": cache_key,
            "outs": outs,
            "metrics": metrics,
            "mlflow_run_id": tracker.run_id,
        }


def main(stage: str) -> None:
    """Entry of `python -m tasks.<stage>` (the dvc.yaml cmd): runs one stage in the current project."""
    project = Path.cwd()
    try:
        spec = next(s for s in versioning.load_pipeline(project) if s.name == stage)
        params = config.load_stage_params(project, stage)
        preflight(project, [spec], {stage: params})
        device = device_name()
        deps = dep_hashes(project, spec, {}, params)
    except (config.ParamsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    key = cachekey.stage_cache_key(spec, params={f"params/{stage}.yaml": params}, dep_hashes=deps,
                                   env=run_environment(device))
    tracking.configure(project)
    execute_stage(project, spec, params=params, deps=deps, cache_key=key, device=device,
                  tags={"tlpipe.runner": "dvc"}, show_progress=True)
