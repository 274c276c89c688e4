"""The params of one run, resolved once: params/*.yaml plus the `-s` overrides, validated as a whole
and against the data, then handed to every stage. No stage reads a params file during a run.

`take` is called holding the project lock (runner.lock). The overrides are written back into the
params files, as `dvc exp run -S` does, only after every check has passed, so a rejected value never
lands in a file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tlpipe import io
from tlpipe.io import staged_outputs
from project import config, paramfiles

from runner import inputs, keys, ranks
from runner.context import checkpoint_minutes
from runner.spec import StageSpec, load_pipeline, metrics_output, producer_of, producers, record_output


@dataclass(frozen=True)
class Snapshot:
    """Every stage's validated params for one run, and the overrides that made them."""

    params: dict[str, dict]
    overrides: tuple[str, ...] = ()

    def stage(self, name: str) -> dict:
        """A copy of one stage's params (a stage cannot change what the next one sees)."""
        return copy.deepcopy(self.params[name])

    @property
    def digest(self) -> str:
        """sha256 of the params: equal snapshots, equal digests."""
        return hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()

    def as_dict(self) -> dict:
        return {"params": self.params, "overrides": list(self.overrides)}

    @classmethod
    def from_dict(cls, data: dict) -> "Snapshot":
        return cls(params=data["params"], overrides=tuple(data.get("overrides", ())))


def resolve(project: Path, overrides=()) -> tuple[Snapshot, set[str]]:
    """(snapshot of the files plus `overrides`, the stages the overrides touch); validated, no data read."""
    params, touched = paramfiles.apply_overrides(paramfiles.load_all_params(project), list(overrides))
    return Snapshot(params, tuple(overrides)), touched


def check_declaration(spec: StageSpec) -> None:
    """dvc.yaml and the stage code must agree on the stage's outputs and params file."""
    module = f"tasks.{spec.name}"
    if spec.cmd.split()[-2:] != ["-m", module] or keys.module_file(module) is None:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name!r} must run its task module (cmd: python -m {module}, "
                                 f"tasks/{spec.name}.py), not {spec.cmd!r}")
    if spec.folder is None or not spec.folder.startswith("data/") or metrics_output(spec.name) not in spec.outs:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name} must declare one output folder under data/ and "
                                 f"{metrics_output(spec.name)}, not {sorted(spec.outs)}")
    if spec.record is None:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name} must declare its record {record_output(spec.name)} "
                                 "among its outs (a clone finds the run that made the outputs through it)")
    file = f"params/{spec.name}.yaml"
    declared = set(spec.params.get(file, ()))
    schema = set(config.SCHEMA[spec.name])
    if set(spec.params) != {file} or declared != schema:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name} must declare {file} keys {sorted(schema)}")


def former_outputs(project: Path) -> dict[str, str]:
    """{output: stage} of the stages this project had: those dvc.lock records, and data/<name> with its
    metrics file for every task module (tasks/<name>.py)."""
    owners = {}
    for name in (p.stem for p in (Path(project) / "tasks").glob("*.py") if not p.stem.startswith("_")):
        owners.update({f"data/{name}": name, metrics_output(name): name})
    lock = Path(project) / "dvc.lock"
    recorded = ((io.read_yaml(lock) or {}).get("stages") or {}) if lock.is_file() else {}
    for name, entry in recorded.items():
        owners.update({out["path"]: name for out in entry.get("outs", []) + entry.get("metrics", [])})
    return owners


def check_producers(project: Path, pipeline: list[StageSpec], stages: list[StageSpec]) -> None:
    """Every stage output that one of `stages` reads is made by a stage of `pipeline` (a removed
    stage's old output folder must not pass for raw input data)."""
    made_by = producers(pipeline)
    owners = {out: stage for out, stage in former_outputs(project).items() if stage not in made_by.values()}
    for spec in stages:
        for dep in spec.deps:
            owner = producer_of(dep, owners)
            if owner is not None and producer_of(dep, made_by) is None:
                raise config.ParamsError(f"dvc.yaml: stage {spec.name} reads {dep}, the output of stage {owner}, "
                                         f"but dvc.yaml has no stage {owner}; put it back or remove {dep} from "
                                         f"{spec.name}'s deps")


def check_writable(project: Path, stages: list[StageSpec], overridden: set[str] = frozenset()) -> None:
    """The folders the run writes can be written: the project (dvc.lock, .tlpipe/), the stages' output
    folders and, with overrides, params/. A read-only checkout fails here, not inside a stage."""
    project = Path(project)
    writes: dict[Path, str] = {project: "dvc.lock and .tlpipe/"}
    for spec in stages:
        for out in spec.outs:
            folder = (project / out).parent
            writes[folder] = f"{writes[folder]}, {spec.name}" if folder in writes else f"the outputs of {spec.name}"
    if overridden:
        writes[project / "params"] = f"the -s values for {', '.join(sorted(overridden))}"
    for folder, what in writes.items():
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not os.access(existing, os.W_OK):
            name = "the project folder" if folder == project else f"{folder.relative_to(project)}/"
            raise ValueError(f"{name} ({existing}) is not writable, and the run writes {what} there; "
                             f"make it writable or run in a writable copy of the project")


def preflight(project: Path, stages: list[StageSpec], params: dict[str, dict]) -> None:
    """Every check that can fail on bad input, run before any stage computes anything."""
    config.check_combination(params)
    checkpoint_minutes()  # TLPIPE_CHECKPOINT_MINUTES is a number
    ranks.check(stages, params, keys.device_name())
    for spec in stages:
        check_declaration(spec)
    check_producers(project, load_pipeline(project), stages)
    inputs.check_data(project, stages, params)


def take(project: Path, overrides, stages: list[StageSpec]) -> Snapshot:
    """The run's snapshot, checked for `stages`; the overrides are then written to the params files.

    Call it holding the project lock. Raises ParamsError, ValueError or FileNotFoundError (bad
    input) before anything is written.
    """
    snapshot, touched = resolve(project, overrides)
    preflight(project, stages, snapshot.params)
    check_writable(project, stages, touched)
    write_overrides(project, snapshot.params, touched)
    return snapshot


def write_overrides(project: Path, params: dict[str, dict], stages: set[str]) -> None:
    """Writes overridden values into params/<stage>.yaml, keeping comments and order."""
    from ruamel.yaml import YAML

    yaml = YAML()
    for stage in sorted(stages):
        path = paramfiles.params_path(project, stage)
        document = yaml.load(path.read_text(encoding="utf-8"))
        _merge(document, params[stage])
        with staged_outputs(path) as (temp,):
            with open(temp, "w", encoding="utf-8") as fh:
                yaml.dump(document, fh)


def _merge(document, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(document[key], dict):  # ruamel's maps are dicts too
            _merge(document[key], value)
        elif document[key] != value:
            document[key] = value
