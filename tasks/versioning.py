"""The one module that talks to DVC: the stage graph of dvc.yaml, content hashes, commits, restores."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tlpipe import io
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

    def declared(self, stage_params: dict) -> dict[str, dict]:
        """The values of the params this stage declares, as dvc.lock records them ({file: {key: value}})."""
        return {file: {key: stage_params[key] for key in keys} for file, keys in self.params.items()}


def load_pipeline(project: Path) -> list[StageSpec]:
    """The stages of the project's dvc.yaml in run order (a stage after every stage whose output it reads).

    dvc.yaml is read as plain YAML (this project's stages use no templating), which keeps a
    cached run from paying for DVC's repository index; DVC reads the same file for `dvc repro`.
    """
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

    return StageSpec(name=name, cmd=body["cmd"], deps=paths("deps"), params=params,
                     outs=paths("outs") + paths("metrics") + paths("plots"), meta=dict(body.get("meta") or {}))


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


def upstream_of(spec: StageSpec, producers: dict[str, str]) -> set[str]:
    """The stages whose outputs `spec` reads."""
    return {p for d in spec.deps if (p := producer_of(d, producers)) is not None} - {spec.name}


def _run_order(stages: list[StageSpec]) -> list[StageSpec]:
    """Topological order by data flow; ties keep dvc.yaml order."""
    producer = {out: s.name for s in stages for out in s.outs}
    needs = {s.name: upstream_of(s, producer) for s in stages}
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
    producers = {out: s.name for s in stages for out in s.outs}
    needed, todo = set(), [until]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo.extend(upstream_of(by_name[name], producers))
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
        repo.commit(stage, force=True, relink=False)


class BackgroundCommits:
    """DVC commits of finished stages, one at a time on a background thread, so that the next stage
    computes meanwhile. Leaving the block waits for every commit and raises the first failure.

    One DVC `Repo` serves every commit of the block: opening it costs about as much as a commit.
    """

    def __init__(self, project: Path):
        self.project = Path(project).resolve()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dvc-commit")
        self._pending: list = []
        self._repo = None

    def submit(self, stage: str) -> None:
        self._pending.append(self._pool.submit(self._commit, stage))

    def _commit(self, stage: str) -> None:
        from dvc.repo import Repo

        with inside(self.project):
            if self._repo is None:
                self._repo = Repo(str(self.project), _wait_for_lock=True)
            # relink=False: DVC would otherwise replace each output by a fresh checkout from its
            # cache, and the next stage, already reading that output, would find it gone for a moment.
            self._repo.commit(stage, force=True, relink=False)

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def __enter__(self) -> "BackgroundCommits":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
            else:  # the stage failure is the error to report; earlier commits still land
                for future in self._pending:
                    future.exception()
        finally:
            self._pool.shutdown(wait=True)
            if self._repo is not None:
                self._repo.close()


def cache_object(project: Path, md5: str) -> Path:
    return Path(project) / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def restore_output(project: Path, rel: str, md5: str) -> bool:
    """Puts the output `rel` back as it was when its hash was `md5`, from the local DVC cache, which
    is first filled from the default remote when it lacks that version (a teammate's run).

    Returns False when neither holds that version (the caller then re-runs the stage).
    """
    project = Path(project)
    from tasks import remote

    if not remote.cached_locally(project, md5):
        remote.fetch_outputs(project, md5s=[md5])
    target = project / rel
    temp = target.with_name(f"{target.name}.tmp-restore-{uuid.uuid4().hex[:8]}")
    try:
        if md5.endswith(".dir"):
            listing_file = cache_object(project, md5)
            if not listing_file.is_file():
                return False
            entries = json.loads(listing_file.read_text())
            sources = [(cache_object(project, e["md5"]), temp / e["relpath"]) for e in entries]
            if not all(src.is_file() for src, _ in sources):
                return False
            for src, dst in sources:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            temp.mkdir(parents=True, exist_ok=True)  # an empty folder still exists
        else:
            src = cache_object(project, md5)
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
    declared = {path: md5 for path, md5 in deps.items() if path in spec.deps}  # not external data
    return recorded_deps == declared and recorded_outs == outs and entry.get("params", {}) == params


def read_lock(project: Path) -> dict:
    """dvc.lock as plain data ({} when the pipeline never ran)."""
    path = Path(project) / "dvc.lock"
    if not path.is_file():
        return {}
    return io.read_yaml(path) or {}
