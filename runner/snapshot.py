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

from tlpipe.io import staged_outputs
from pipeline import config

from runner import inputs, keys, ranks
from runner.context import checkpoint_minutes
from runner.spec import STAGE_DIRS, StageSpec, load_pipeline, producer_of, producers, record_output, stage_outputs


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
    params, touched = config.apply_overrides(config.load_all_params(project), list(overrides))
    return Snapshot(params, tuple(overrides)), touched


def check_declaration(spec: StageSpec) -> None:
    """dvc.yaml and the stage code must agree on the stage's outputs and params file."""
    if spec.name not in STAGE_DIRS:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name!r} has no task module; known: {', '.join(STAGE_DIRS)}")
    expected = set(stage_outputs(spec.name))
    if set(spec.outs) != expected:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name} must declare outputs {sorted(expected)}, not {sorted(spec.outs)}")
    if spec.record is None:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name} must declare its record {record_output(spec.name)} "
                                 "among its outs (a clone finds the run that made the outputs through it)")
    file = f"params/{spec.name}.yaml"
    declared = set(spec.params.get(file, ()))
    schema = set(config.SCHEMA[spec.name])
    if set(spec.params) != {file} or declared != schema:
        raise config.ParamsError(f"dvc.yaml: stage {spec.name} must declare {file} keys {sorted(schema)}")


def check_producers(pipeline: list[StageSpec], stages: list[StageSpec]) -> None:
    """Every stage output that one of `stages` reads is made by a stage of the `pipeline` (a removed
    stage's old output folder must not pass for raw input data)."""
    made_by = producers(pipeline)
    owners = {out: stage for stage in STAGE_DIRS for out in stage_outputs(stage)}
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
    check_producers(load_pipeline(project), stages)
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
        path = config.params_path(project, stage)
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
