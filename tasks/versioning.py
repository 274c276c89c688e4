"""The one module that talks to DVC: the stage graph of dvc.yaml, content hashes, commits, restores."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tlpipe.io import replace_path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class StageSpec:
    """One stage of dvc.yaml, paths relative to the project root."""

    name: str
    cmd: str
    deps: tuple[str, ...]
    params: dict[str, tuple[str, ...]]  # params file -> declared top-level keys
    outs: tuple[str, ...]  # outs, metrics and plots together
    meta: dict = field(default_factory=dict, hash=False, compare=False)


def load_pipeline(project: Path) -> list[StageSpec]:
    """The stages of the project's dvc.yaml in the order DVC would run them (dependencies first)."""
    import networkx as nx
    from dvc.repo import Repo

    project = Path(project).resolve()
    with Repo(str(project)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = list(nx.lexicographical_topological_sort(graph.reverse(copy=False), key=_stage_name))
        return [_spec(stage, project) for stage in order if getattr(stage, "cmd", None)]


def _stage_name(stage) -> str:
    return getattr(stage, "name", str(stage))


def _spec(stage, project: Path) -> StageSpec:
    def rel(path: str) -> str:
        return Path(os.path.relpath(path, project)).as_posix()

    params: dict[str, tuple[str, ...]] = {}
    deps = []
    for dep in stage.deps:
        if dep.__class__.__name__ == "ParamsDependency":
            params[rel(dep.fs_path)] = tuple(dep.params)
        else:
            deps.append(rel(dep.fs_path))
    return StageSpec(
        name=stage.name,
        cmd=stage.cmd,
        deps=tuple(deps),
        params=params,
        outs=tuple(rel(out.fs_path) for out in stage.outs),
        meta=dict(stage.meta or {}),
    )


def select_stages(stages: list[StageSpec], until: str | None) -> list[StageSpec]:
    """`until` and every stage it depends on (all stages when None), in run order."""
    if until is None:
        return stages
    by_name = {s.name: s for s in stages}
    if until not in by_name:
        raise ValueError(f"unknown stage {until!r}; stages in dvc.yaml: {', '.join(by_name)}")
    producers = {out: s.name for s in stages for out in s.outs}
    needed, todo = set(), [until]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo.extend(producers[d] for d in by_name[name].deps if d in producers)
    return [s for s in stages if s.name in needed]


def md5_path(path: Path) -> str:
    """DVC's md5 of a file, or of a folder (md5 of its sorted JSON listing, suffixed `.dir`)."""
    path = Path(path)
    if path.is_file():
        return _md5_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    listing = [
        {"md5": _md5_file(p), "relpath": p.relative_to(path).as_posix()}
        for p in path.rglob("*")
        if p.is_file()
    ]
    listing.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def _md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def outputs_match(project: Path, recorded: dict[str, str]) -> bool:
    """True when every recorded output exists with the recorded hash."""
    for rel, md5 in recorded.items():
        path = Path(project) / rel
        if not path.exists() or md5_path(path) != md5:
            return False
    return True


_CWD_LOCK = threading.Lock()


@contextlib.contextmanager
def inside(project: Path):
    """Runs a block with the project as working directory: parts of DVC resolve paths against it."""
    with _CWD_LOCK:
        before = os.getcwd()
        os.chdir(project)
        try:
            yield
        finally:
            os.chdir(before)


def commit_stage(project: Path, stage: str) -> None:
    """Records the stage's current deps/outs in dvc.lock and stores the outs in the DVC cache.

    DVC holds a repository lock while committing; concurrent commits wait for it instead of failing.
    """
    from dvc.repo import Repo

    with inside(project), Repo(".", _wait_for_lock=True) as repo:
        repo.commit(stage, force=True)


def _cache_object(project: Path, md5: str) -> Path:
    return Path(project) / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def restore_output(project: Path, rel: str, md5: str) -> bool:
    """Puts the output `rel` back as it was when its hash was `md5`, from the local DVC cache.

    Returns False when the cache does not hold that version (the caller then re-runs the stage).
    """
    project = Path(project)
    target = project / rel
    temp = target.with_name(f"{target.name}.tmp-restore-{uuid.uuid4().hex[:8]}")
    try:
        if md5.endswith(".dir"):
            listing_file = _cache_object(project, md5)
            if not listing_file.is_file():
                return False
            entries = json.loads(listing_file.read_text())
            sources = [(_cache_object(project, e["md5"]), temp / e["relpath"]) for e in entries]
            if not all(src.is_file() for src, _ in sources):
                return False
            for src, dst in sources:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            temp.mkdir(parents=True, exist_ok=True)  # an empty folder still exists
        else:
            src = _cache_object(project, md5)
            if not src.is_file():
                return False
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, temp)
        if md5_path(temp) != md5:
            return False
        replace_path(temp, target)
        return True
    finally:
        if temp.exists():
            shutil.rmtree(temp) if temp.is_dir() else temp.unlink()


def lock_records(project: Path, spec: StageSpec, *, deps: dict[str, str], outs: dict[str, str],
                 params: dict[str, dict]) -> bool:
    """True when dvc.lock already records the stage with exactly these deps, params and outs
    (then committing it again would change nothing)."""
    entry = read_lock(project).get("stages", {}).get(spec.name)
    if not entry or entry.get("cmd") != spec.cmd:
        return False
    recorded_deps = {d["path"]: d.get("md5") for d in entry.get("deps", [])}
    recorded_outs = {o["path"]: o.get("md5") for o in entry.get("outs", [])}
    return recorded_deps == deps and recorded_outs == outs and entry.get("params", {}) == params


def read_lock(project: Path) -> dict:
    """dvc.lock as plain data ({} when the pipeline never ran)."""
    path = Path(project) / "dvc.lock"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}
