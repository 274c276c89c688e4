"""Where a stage's inputs are found, where its outputs go, and how a finished run is found again.

`ProjectWorkspace` is the project as `dvc.yaml` describes it: outputs at their fixed paths under
data/, outputs that went missing put back from the DVC cache or remote. A completed run is found
again by its record: each stage's record file (data/records/<stage>.json, a DVC output, so a clone
with the commit's dvc.lock and the remote finds it with nothing else shared), and the records of
every key run before in the cache folder (TLPIPE_CACHE_DIR, which a team may share; any fsspec URL
such as s3://bucket/tlpipe-cache works too). Only the default pipeline run works here, so only it
updates dvc.lock.

`ScratchWorkspace` is the project's data/ folder for benchmarks: every stage computes through the
same runner, and nothing is recorded, reused or resumed.

`StoreWorkspace` keeps each stage's outputs in an entry of their own, `<store>/<stage>/<key>/`,
written once and never changed: sweep points run side by side there, and two points (or two sweeps,
or two team members) that need the same stage with the same inputs share its entry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.parse
import uuid
from pathlib import Path
from typing import Iterator

from tlpipe.io import (
    json_text,
    locked,
    read_json,
    remove_stale_temporaries,
    remove_temporaries,
    staged_outputs,
    write_json,
)

from runner import dvc
from runner.events import CACHED, RESTORED
from runner.spec import StageSpec, is_within, metrics_file, metrics_output, stage_dir, stage_folders

log = logging.getLogger(__name__)


def cache_location(project: Path) -> Path | str:
    """Where records of completed stage runs live: TLPIPE_CACHE_DIR (a folder, or an fsspec URL such
    as s3://bucket/tlpipe-cache), else .tlpipe/cache in the project."""
    value = os.environ.get("TLPIPE_CACHE_DIR")
    if value and value.startswith("file://"):  # a local or mounted folder written as a URL
        value = urllib.parse.unquote(urllib.parse.urlsplit(value).path)
    if value and "://" in value:
        return value
    return Path(value or Path(project) / ".tlpipe" / "cache").resolve()


def store_root(project: Path) -> Path:
    """Where store entries (and results shared across runs) live: TLPIPE_STORE_DIR (shared storage
    for a team), else .tlpipe/store in the project."""
    return Path(os.environ.get("TLPIPE_STORE_DIR") or Path(project) / ".tlpipe" / "store").resolve()


class Records:
    """One JSON record per completed stage run, at `<location>/<stage>/<key>.json`."""

    def __init__(self, location: Path | str):
        self.location = location

    def get(self, stage: str, key: str) -> dict | None:
        if isinstance(self.location, Path):
            path = self.location / stage / f"{key}.json"
            return read_json(path) if path.is_file() else None
        fs, path = self._fs(stage, key)
        return json.loads(fs.cat_file(path)) if fs.exists(path) else None

    def put(self, stage: str, key: str, record: dict) -> None:
        if isinstance(self.location, Path):
            with staged_outputs(self.location / stage / f"{key}.json") as (temp,):
                write_json(temp, record, sort_keys=False)  # as the stage reported it (tables keep their order)
            return
        fs, path = self._fs(stage, key)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, json_text(record, sort_keys=False).encode())  # one object: whole or absent

    def _fs(self, stage: str, key: str):
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.location)
        return fs, f"{root.rstrip('/')}/{stage}/{key}.json"


class ProjectWorkspace:
    """The project's own data/ folder (see the module docstring)."""

    def __init__(self, project: Path, records: Records | None = None):
        self.project = Path(project).resolve()
        self.records = records or Records(cache_location(self.project))
        self.store = store_root(self.project)
        self.known: dict[str, str] = {}  # hashes of the outputs this run has produced or reused
        self.outcomes: dict = {}  # {stage: Outcome} of this run

    def locate(self, rel: str) -> Path:
        return self.project / rel

    def upstream(self, stage: str) -> Path:
        return stage_dir(self.project, stage)

    def checkpoints(self, stage: str, key: str) -> Path:
        """Where the stage's training loops keep their checkpoints while this key runs (outside data/,
        never versioned; removed when the stage completes)."""
        return self.project / ".tlpipe" / "checkpoints" / stage / key

    def remove_stale(self) -> list[Path]:
        """Removes what killed runs left half-written: temporaries of processes that no longer run,
        beside the outputs and the records. Call it holding the project lock."""
        folders = [self.project / "data", self.project / "data" / "metrics", self.project / "data" / "records"]
        if isinstance(self.records.location, Path) and self.records.location.is_dir():
            folders += [p for p in self.records.location.iterdir() if p.is_dir()]
        return [path for folder in folders for path in remove_stale_temporaries(folder)]

    def claim(self, spec: StageSpec, key: str):
        return contextlib.nullcontext()  # the pipeline run holds the project lock

    def outputs(self, spec: StageSpec, key: str) -> tuple[Path, Path]:
        return stage_dir(self.project, spec.name), metrics_file(self.project, spec.name)

    def lookup(self, spec: StageSpec, key: str) -> tuple[dict, str] | None:
        """(record, CACHED or RESTORED) of an earlier run with this key whose outputs are in place or
        could be put back; None when there is none (the stage then runs)."""
        record = self.records.get(spec.name, key) or self._versioned_record(spec, key)
        if record is None:
            return None
        stale = {rel: md5 for rel, md5 in record["outs"].items() if not dvc.outputs_match(self.project, {rel: md5})}
        if stale and not all(dvc.restore_output(self.project, rel, md5) for rel, md5 in stale.items()):
            log.warning("%s: cached outputs %s are gone from the DVC cache; running again", spec.name, sorted(stale))
            return None
        self._write_record(spec, record)  # the outputs in place are this record's now
        return record, RESTORED if stale else CACHED

    def _versioned_record(self, spec: StageSpec, key: str) -> dict | None:
        """The stage's record that travels with the project, when it is this key's: the record file in
        place, else the version dvc.lock names, read from the DVC cache or remote (a clone that has not
        pulled yet). Nothing in data/ changes here."""
        if spec.record is None:
            return None
        path = self.project / spec.record
        texts = [path.read_bytes()] if path.is_file() else []
        locked = dvc.locked_outputs(self.project, spec.name).get(spec.record)
        if locked and (not texts or dvc.md5_path(path) != locked):
            texts.append(dvc.read_version(self.project, locked))
        for text in filter(None, texts):
            try:
                record = json.loads(text)
            except ValueError:  # a damaged record file proves nothing
                continue
            if isinstance(record, dict) and record.get("cache_key") == key and isinstance(record.get("outs"), dict):
                return record
        return None

    def _write_record(self, spec: StageSpec, record: dict) -> None:
        if spec.record is None:
            return
        path, text = self.project / spec.record, json_text(record, sort_keys=False)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            with staged_outputs(path) as (temp,):
                temp.write_text(text, encoding="utf-8")

    def save(self, spec: StageSpec, key: str, record: dict) -> None:
        """Writes the record file (before the stage's finished event: DVC commits it with the outputs)
        and adds the record to the cache folder."""
        self._write_record(spec, record)
        self.records.put(spec.name, key, record)


class ScratchWorkspace(ProjectWorkspace):
    """The project's data/ folder with no memory (see the module docstring): run stages here with
    `refresh=True` and no observers. Outputs replace the old ones as in every run; no record file is
    written (dvc.lock's records stay those of a real run), and checkpoints go to a folder of this
    workspace alone, so a benchmark never resumes from a run that was killed before it."""

    def __init__(self, project: Path):
        super().__init__(project)
        self._id = f"scratch-{uuid.uuid4().hex}"

    def checkpoints(self, stage: str, key: str) -> Path:
        return super().checkpoints(stage, self._id)

    def lookup(self, spec: StageSpec, key: str) -> None:
        return None

    def save(self, spec: StageSpec, key: str, record: dict) -> None:
        pass


class StoreWorkspace:
    """Entries of the store; `entries` ({stage: key}) are the upstream stages' entries to read from,
    and each stage run adds its own."""

    def __init__(self, project: Path, entries: dict[str, str] | None = None):
        self.project = Path(project).resolve()
        self.store = store_root(self.project)
        self.entries: dict[str, str] = {}
        self.known: dict[str, str] = {}
        self.outcomes: dict = {}
        for stage, key in (entries or {}).items():
            self._add(stage, key, read_json(self.entry(stage, key) / "manifest.json"))

    def entry(self, stage: str, key: str) -> Path:
        return self.store / stage / key

    def checkpoints(self, stage: str, key: str) -> Path:
        """In the shared entry: the agent that claims it next resumes where a lost one stopped."""
        return self.entry(stage, key) / "checkpoints"

    def _add(self, stage: str, key: str, record: dict) -> None:
        self.entries[stage] = key
        self.known.update(record["outs"])

    def locate(self, rel: str) -> Path:
        """An upstream output (or a part of one) inside its entry; anything else (code) in the project."""
        for stage, key in self.entries.items():
            out, metrics = stage_folders(self.project)[stage], metrics_output(stage)
            if rel == metrics:
                return self.entry(stage, key) / "metrics.json"
            if is_within(rel, out):
                return self.entry(stage, key) / "out" / rel[len(out) + 1:]
        return self.project / rel

    def upstream(self, stage: str) -> Path:
        return self.locate(stage_folders(self.project)[stage])

    @contextlib.contextmanager
    def claim(self, spec: StageSpec, key: str) -> Iterator[None]:
        """Two processes that need the same entry: one computes it, the other waits and reuses it."""
        path = self.entry(spec.name, key)
        with locked(path.with_name(path.name + ".lock")):
            remove_temporaries(path)  # every writer of the entry holds this lock: what is there was left by a killed one
            yield

    def outputs(self, spec: StageSpec, key: str) -> tuple[Path, Path]:
        self.entries[spec.name] = key  # outputs of this stage now resolve to its entry
        return self.entry(spec.name, key) / "out", self.entry(spec.name, key) / "metrics.json"

    def lookup(self, spec: StageSpec, key: str) -> tuple[dict, str] | None:
        """The entry's record when it is complete and its outputs still have the recorded hashes."""
        manifest = self.entry(spec.name, key) / "manifest.json"
        if not manifest.is_file():
            return None
        record = read_json(manifest)
        self.entries[spec.name] = key
        if {rel: dvc.md5_path(self.locate(rel)) for rel in record["outs"]} != record["outs"]:
            del self.entries[spec.name]
            return None
        self._add(spec.name, key, record)
        return record, CACHED

    def save(self, spec: StageSpec, key: str, record: dict) -> None:
        with staged_outputs(self.entry(spec.name, key) / "manifest.json") as (temp,):  # written last: complete
            write_json(temp, record, sort_keys=False)
        self._add(spec.name, key, record)
