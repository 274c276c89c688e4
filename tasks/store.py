"""Stage outputs stored by cache key, for runs that must not touch the project's data/ (sweep points).

An entry `<store>/<stage>/<key>/` holds the stage's output folder (`out/`), its metrics file and its
manifest. It is written once, atomically, and never changed afterwards. A stage runs in a scratch
workspace whose data/ links to the entries of its upstream stages, so the stage code is exactly
what `tlpipe run` and `dvc repro` execute. Entries are content-addressed: two sweeps, or two
workers of one sweep, that need a stage with the same inputs share its entry, and a file lock keeps
them from computing it twice at the same time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tlpipe.io import CACHED, RAN, cached_file, locked, read_json, replace_path, write_json
from tasks import runner, versioning
from tasks.context import STAGE_DIRS, metrics_file, stage_dir, stage_outputs, store_root


@dataclass(frozen=True)
class Entry:
    """Where one stage's outputs for one cache key live."""

    stage: str
    key: str
    path: Path

    @property
    def out(self) -> Path:
        return self.path / "out"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def manifest_file(self) -> Path:
        return self.path / "manifest.json"


def entry(project: Path, stage: str, key: str) -> Entry:
    return Entry(stage, key, store_root(project) / stage / key)


def lookup(found: Entry) -> dict | None:
    """The entry's manifest when it is complete and its outputs still have the recorded hashes."""
    if not found.manifest_file.is_file():
        return None
    manifest = read_json(found.manifest_file)
    out_rel, metrics_rel = stage_outputs(found.stage)
    actual = {out_rel: versioning.md5_path(found.out), metrics_rel: versioning.md5_path(found.metrics)}
    return manifest if actual == manifest["outs"] else None


@contextlib.contextmanager
def workspace(project: Path, upstream: dict[str, Entry]) -> Iterator[Path]:
    """A scratch project whose data/ links to the upstream entries; removed when the block ends."""
    root = store_root(project).parent / "work" / uuid.uuid4().hex[:12]
    (root / "data" / "metrics").mkdir(parents=True)
    (root / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    try:
        for stage, found in upstream.items():
            stage_dir(root, stage).symlink_to(found.out, target_is_directory=True)
            metrics_file(root, stage).symlink_to(found.metrics)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


OWNER_FILE = ".owner"


def remove_stale_workspaces(project: Path) -> list[Path]:
    """Removes the scratch workspaces a killed process left behind (its own host, pid gone); returns them.

    A workspace is deleted when its block ends, which a SIGKILL or a power cut prevents. Workspaces of
    live processes, of other hosts (shared storage) and without an owner record are left alone.
    """
    removed = []
    for root in sorted((store_root(project).parent / "work").glob("*")):
        try:
            host, pid = (root / OWNER_FILE).read_text().split()
        except (OSError, ValueError):
            continue
        if host == socket.gethostname() and not _alive(int(pid)):
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def locator(project: Path, upstream: dict[str, Entry]) -> Callable[[str], Path]:
    """Where a dependency lies when upstream outputs are store entries (data/prepared/source ->
    <entry of prepare>/out/source); anything else (code) under the project."""
    outputs = {f"data/{STAGE_DIRS[stage]}": found.out for stage, found in upstream.items()}

    def locate(rel: str) -> Path:
        for out, path in outputs.items():
            if versioning.is_within(rel, out):
                return path / rel[len(out) + 1:]
        return Path(project) / rel

    return locate


def run_stage(project: Path, spec: versioning.StageSpec, *, key: str, upstream: dict[str, Entry],
              params: dict, deps: dict[str, str], **execute) -> tuple[dict, Entry, str]:
    """(manifest, entry, RAN or CACHED): the stage's entry for `key`, computed unless it exists.

    `execute` goes to `runner.execute_stage` (device, parent_id, tags, show_progress).
    """
    if spec.name not in STAGE_DIRS:
        raise ValueError(f"stage {spec.name!r} has no output folder; known: {', '.join(STAGE_DIRS)}")
    found = entry(project, spec.name, key)
    with locked(found.path.with_name(found.path.name + ".lock")):
        manifest = lookup(found)
        if manifest is not None:
            return manifest, found, CACHED
        with workspace(project, upstream) as scratch:
            manifest = runner.execute_stage(scratch, spec, params=params, deps=deps, cache_key=key,
                                            store=store_root(project), **execute)
            temp = found.path.with_name(f"{found.path.name}.tmp-{uuid.uuid4().hex[:8]}")
            temp.mkdir(parents=True)
            os.replace(stage_dir(scratch, spec.name), temp / "out")
            os.replace(metrics_file(scratch, spec.name), temp / "metrics.json")
            write_json(temp / "manifest.json", manifest)
            replace_path(temp, found.path)
        return manifest, found, RAN


def cached_json(project: Path, kind: str, key: str, compute: Callable[[], dict]) -> tuple[dict, str]:
    """(record, RAN or CACHED): a small JSON result stored under its key, computed once."""
    return cached_file(store_root(project) / kind / f"{key}.json", compute, write_json, read_json)


