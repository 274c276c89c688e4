"""The stages of dvc.yaml as the runner sees them: commands, dependencies, params, outputs, run order.

dvc.yaml is the one declaration of the pipeline. It is read here as plain YAML (this project's stages
use no templating), which keeps a cached run from paying for DVC's repository index; DVC reads the
same file for `dvc repro`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from tlpipe import io


def metrics_output(stage: str) -> str:
    """The metrics file every stage declares in dvc.yaml (`dvc metrics show` reads them all)."""
    return f"data/metrics/{stage}.json"


def metrics_file(root: Path, stage: str) -> Path:
    return Path(root) / metrics_output(stage)


def stage_folders(project: Path) -> dict[str, str]:
    """{stage: its output folder} as the project's dvc.yaml declares them, in run order."""
    path = Path(project) / "dvc.yaml"
    stat = path.stat()
    return dict(_folders(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=16)
def _folders(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, str], ...]:
    return tuple((spec.name, spec.folder) for spec in load_pipeline(Path(path).parent) if spec.folder is not None)


def stage_dir(root: Path, stage: str) -> Path:
    """The output folder of `stage` in the project at `root`."""
    folders = stage_folders(root)
    if stage not in folders:
        raise ValueError(f"dvc.yaml has no stage {stage!r} with an output folder; stages: {', '.join(folders)}")
    return Path(root) / folders[stage]


def stage_outputs(spec: StageSpec) -> tuple[str, str]:
    """(output folder, metrics file) of a stage, relative to the project root (its record aside)."""
    return spec.folder, metrics_output(spec.name)


def record_output(stage: str) -> str:
    """The stage's record (key, output hashes, metrics with timings, where it was tracked), a DVC output
    of its own: it travels with `dvc.lock` and the remote, so a clone finds the run that made the outputs.
    Nothing reads it as data: it is no dependency of any stage."""
    return f"data/records/{stage}.json"


@dataclass(frozen=True)
class StageSpec:
    """One stage of dvc.yaml, paths relative to the project root."""

    name: str
    cmd: str
    deps: tuple[str, ...]
    params: dict[str, tuple[str, ...]]  # params file -> declared top-level keys
    outs: tuple[str, ...]  # outs, metrics and plots together, the record left out
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    record: str | None = None  # record_output(name) when dvc.yaml declares it

    def declared(self, stage_params: dict) -> dict[str, dict]:
        """The values of the params this stage declares, as dvc.lock records them ({file: {key: value}})."""
        return {file: {key: stage_params[key] for key in keys} for file, keys in self.params.items()}

    @property
    def folder(self) -> str | None:
        """The output folder dvc.yaml declares: the one out besides the metrics file (None when the
        declaration has not exactly one; `check_declaration` says so)."""
        others = [out for out in self.outs if out != metrics_output(self.name)]
        return others[0] if len(others) == 1 else None

    @property
    def module(self) -> str:
        """The module the cmd runs (`python -m tasks.prune` -> tasks.prune)."""
        words = self.cmd.split()
        if "-m" in words and words.index("-m") + 1 < len(words):
            return words[words.index("-m") + 1]
        raise ValueError(f"stage {self.name}: cmd {self.cmd!r} must run `python -m tasks.<stage>`")


def load_pipeline(project: Path) -> list[StageSpec]:
    """The stages of the project's dvc.yaml in run order (a stage after every stage whose output it reads)."""
    path = Path(project) / "dvc.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    document = io.read_yaml(path) or {}
    stages = [_spec(name, body) for name, body in (document.get("stages") or {}).items()]
    return _run_order(stages)


def _spec(name: str, body: dict) -> StageSpec:
    params: dict[str, tuple[str, ...]] = {}
    for entry in body.get("params", []):
        if isinstance(entry, dict):  # {file: [keys]}
            params.update({file: tuple(keys or ()) for file, keys in entry.items()})
        else:  # a bare key lives in the default params.yaml
            params["params.yaml"] = params.get("params.yaml", ()) + (entry,)

    def paths(key: str) -> tuple[str, ...]:
        return tuple(next(iter(e)) if isinstance(e, dict) else e for e in body.get(key, []))

    outs = paths("outs") + paths("metrics") + paths("plots")
    record = record_output(name)
    return StageSpec(name=name, cmd=body["cmd"], deps=paths("deps"), params=params,
                     outs=tuple(o for o in outs if o != record), meta=dict(body.get("meta") or {}),
                     record=record if record in outs else None)


def is_within(path: str, output: str) -> bool:
    """True when the project-relative `path` is `output` or lies inside it."""
    output = output.rstrip("/")
    return path == output or path.startswith(output + "/")


def producer_of(dep: str, producers: dict[str, str]) -> str | None:
    """The stage whose output `dep` is or lies inside (`data/prepared/source` is made by the stage
    that outputs `data/prepared`), given {output: stage}; None for data no stage makes."""
    path = Path(dep)
    for candidate in (path, *path.parents):
        if candidate.as_posix() in producers:
            return producers[candidate.as_posix()]
    return None


def producers(stages: list[StageSpec]) -> dict[str, str]:
    """{output path: stage} over the stages."""
    return {out: s.name for s in stages for out in s.outs}


def upstream_of(spec: StageSpec, made_by: dict[str, str]) -> set[str]:
    """The stages whose outputs `spec` reads, given {output: stage}."""
    return {p for d in spec.deps if (p := producer_of(d, made_by)) is not None} - {spec.name}


def _run_order(stages: list[StageSpec]) -> list[StageSpec]:
    """Topological order by data flow; ties keep dvc.yaml order."""
    made_by = producers(stages)
    needs = {s.name: upstream_of(s, made_by) for s in stages}
    ordered: list[StageSpec] = []
    while len(ordered) < len(stages):
        done = {s.name for s in ordered}
        ready = [s for s in stages if s.name not in done and needs[s.name] <= done]
        if not ready:
            raise ValueError(f"dvc.yaml: stages {sorted(set(needs) - done)} depend on each other in a cycle")
        ordered.append(ready[0])
    return ordered


def select_stages(stages: list[StageSpec], until: str | None) -> list[StageSpec]:
    """`until` and every stage it depends on (all stages when None), in run order."""
    if until is None:
        return stages
    by_name = {s.name: s for s in stages}
    if until not in by_name:
        raise ValueError(f"unknown stage {until!r}; stages in dvc.yaml: {', '.join(by_name)}")
    made_by = producers(stages)
    needed, todo = set(), [until]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo.extend(upstream_of(by_name[name], made_by))
    return [s for s in stages if s.name in needed]
