"""The one module that talks to DVC: content hashes, commits of finished stages, restores from the DVC
cache, and the project's default remote (pushes for a team, fetches of a teammate's outputs).

Without a default remote (`dvc remote add -d`) the remote functions do nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tlpipe import io
from tlpipe.io import replace_path

from runner import links
from runner.events import Observer, Outcome, StageRun
from runner.spec import StageSpec

_CHUNK = 1 << 20


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
    stat = os.stat(path)
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    if len(_HASHED) >= _HASHED_LIMIT:
        _HASHED.clear()
    _HASHED[_version(path, stat)] = digest.hexdigest()
    return digest.hexdigest()


def _version(path: Path, stat: os.stat_result) -> tuple:
    return os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


# What this process last hashed, by file version: linking a stage's outputs into the DVC cache right
# after the runner hashed them reads each file once, not twice (as DVC's own state database does).
# Only that step consults it; every check of outputs reads the bytes again.
_HASHED: dict[tuple, str] = {}
_HASHED_LIMIT = 100_000


def _recent_md5(path: Path) -> str:
    return _HASHED.get(_version(path, os.stat(path))) or _md5_file(path)


def share_with_cache(project: Path, rels) -> int:
    """Each file of the outputs `rels` and its DVC cache object as one copy on disk, by the project's
    link types (`runner.links`); the number of files shared."""
    project = Path(project)
    files = {}
    for rel in rels:
        path = project / rel
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            files[file] = cache_object(project, _recent_md5(file))
    return links.share(files, links.cache_types(project))


def outputs_match(root: Path, recorded: dict[str, str]) -> bool:
    """True when every recorded output exists under `root` with the recorded hash."""
    for rel, md5 in recorded.items():
        path = Path(root) / rel
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


def read_lock(project: Path) -> dict:
    """dvc.lock as plain data ({} when the pipeline never ran)."""
    path = Path(project) / "dvc.lock"
    if not path.is_file():
        return {}
    return io.read_yaml(path) or {}


def locked_outputs(project: Path, stage: str) -> dict[str, str]:
    """{path: md5} of the stage's outputs as dvc.lock records them ({} when it does not)."""
    entry = read_lock(project).get("stages", {}).get(stage) or {}
    return {o["path"]: o.get("md5") for o in entry.get("outs", [])}


def lock_records(project: Path, spec: StageSpec, *, deps: dict[str, str], outs: dict[str, str],
                 params: dict[str, dict]) -> bool:
    """True when dvc.lock already records the stage with exactly these deps, params and outs (its
    record among them) (then committing it again would change nothing)."""
    entry = read_lock(project).get("stages", {}).get(spec.name)
    if not entry or entry.get("cmd") != spec.cmd:
        return False
    recorded_deps = {d["path"]: d.get("md5") for d in entry.get("deps", [])}
    recorded_outs = {o["path"]: o.get("md5") for o in entry.get("outs", [])}
    declared = {path: md5 for path, md5 in deps.items() if path in spec.deps}  # not external data
    return recorded_deps == declared and recorded_outs == outs and entry.get("params", {}) == params


def with_record(project: Path, spec: StageSpec, outs: dict[str, str]) -> dict[str, str]:
    """The stage's outputs as DVC sees them: `outs` plus its record file's hash, when it has one."""
    record = Path(project) / spec.record if spec.record else None
    return {**outs, spec.record: md5_path(record)} if record is not None and record.is_file() else dict(outs)


class Commits(Observer):
    """Commits each stage that ran (or whose reused outputs dvc.lock does not record yet) to DVC, one
    at a time on a background thread, so that the next stage computes meanwhile. Leaving the block
    waits for every commit and raises the first failure.

    One DVC `Repo` serves every commit of the block: opening it costs about as much as a commit.
    """

    def __init__(self, project: Path):
        self.project = Path(project).resolve()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dvc-commit")
        self._pending: list = []
        self._repo = None

    def stage_finished(self, run: StageRun, outcome: Outcome) -> None:
        self.submit(run.spec.name, [*outcome.outs, *([run.spec.record] if run.spec.record else [])])

    def stage_cached(self, run: StageRun, outcome: Outcome) -> None:
        """Commits a reused stage when dvc.lock does not record it as it is, or when the DVC cache lost
        its outputs (else `dvc status` would report them missing and nothing could restore them)."""
        self.wait()  # dvc.lock is read next: earlier commits first
        outs = with_record(self.project, run.spec, outcome.outs)
        recorded = lock_records(self.project, run.spec, deps=outcome.deps, outs=outs,
                                params=run.spec.declared(run.params))
        if not recorded or not all(cached_locally(self.project, md5) for md5 in outs.values()):
            self.submit(run.spec.name, list(outs))

    stage_restored = stage_cached

    def submit(self, stage: str, outs: list[str]) -> None:
        self._pending.append(self._pool.submit(self._commit, stage, outs))

    def _commit(self, stage: str, outs: list[str]) -> None:
        from dvc.repo import Repo

        share_with_cache(self.project, outs)  # the commit then finds every object there and copies nothing
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

    def __enter__(self) -> "Commits":
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
    is first filled from the default remote when it lacks that version (a teammate's run); its files
    are links to the cache objects where the project's link types allow (as `dvc checkout` does).

    Returns False when neither holds that version (the caller then re-runs the stage).
    """
    project = Path(project)
    if not cached_locally(project, md5):
        fetch_outputs(project, md5s=[md5])
    target = project / rel
    temp = io.temporary_sibling(target, "restore")
    try:
        sources = _cache_files(project, md5, temp)
        if sources is None:
            return False
        types = links.cache_types(project)
        for src, dst in sources:
            dst.parent.mkdir(parents=True, exist_ok=True)
            links.place(src, dst, types)  # one copy with the cache object where the link types allow
        if md5.endswith(".dir"):
            temp.mkdir(parents=True, exist_ok=True)  # an empty folder still exists
        if md5_path(temp) != md5:
            return False
        replace_path(temp, target)
        return True
    finally:
        io.remove_path(temp)


def _cache_files(project: Path, md5: str, temp: Path) -> list[tuple[Path, Path]] | None:
    """(cache object, destination) of every file of the version, or None when the cache lacks one."""
    if not md5.endswith(".dir"):
        sources = [(cache_object(project, md5), temp)]
    else:
        listing_file = cache_object(project, md5)
        if not listing_file.is_file():
            return None
        entries = json.loads(listing_file.read_text())
        sources = [(cache_object(project, e["md5"]), temp / e["relpath"]) for e in entries]
    return sources if all(src.is_file() for src, _ in sources) else None


def read_version(project: Path, md5: str) -> bytes | None:
    """The bytes of one version of a file, from the local DVC cache, which is first filled from the
    default remote when it lacks it; None when neither holds it. Nothing in the workspace changes."""
    if not cached_locally(project, md5):
        fetch_outputs(project, md5s=[md5])
    path = cache_object(project, md5)
    if not path.is_file() or _md5_file(path) != md5:
        return None
    return path.read_bytes()


def cached_locally(project: Path, md5: str) -> bool:
    """True when the local DVC cache holds this version (a folder: its listing and every file)."""
    return all(cache_object(project, h.value).is_file() for h in _with_children(project, [md5]))


def default_remote(project: Path) -> str | None:
    """The name of the project's default DVC remote (`dvc remote add -d`), None without one."""
    from dvc.config import Config

    return Config(dvc_dir=str(Path(project) / ".dvc"))["core"].get("remote") or None


def _with_children(project: Path, md5s) -> list:
    """HashInfos of the objects, plus every file of the directory objects found in the local cache."""
    from dvc_data.hashfile.hash_info import HashInfo

    found = []
    for md5 in md5s:
        found.append(HashInfo("md5", md5))
        listing = cache_object(project, md5)
        if md5.endswith(".dir") and listing.is_file():
            found.extend(HashInfo("md5", e["md5"]) for e in json.loads(listing.read_text()))
    return found


def push_outputs(project: Path, md5s) -> int:
    """Uploads these cached versions (folders with their files) to the default remote; returns how
    many objects were sent (0 also when there is no remote or the remote holds them already)."""
    from dvc.repo import Repo

    project = Path(project).resolve()
    if default_remote(project) is None:
        return 0
    with inside(project), Repo(str(project)) as repo:
        result = repo.cloud.push(_with_children(project, md5s))
    if result.failed:
        raise RuntimeError(f"DVC push failed for {len(result.failed)} objects, e.g. {next(iter(result.failed)).value}")
    return len(result.transferred)


def fetch_outputs(project: Path, md5s) -> bool:
    """Downloads these versions from the default remote into the local DVC cache (a folder's listing
    first, then its files); True when the cache then holds all of them."""
    from dvc.repo import Repo

    project = Path(project).resolve()
    if default_remote(project) is None:
        return False
    with inside(project), Repo(str(project)) as repo:
        repo.cloud.pull(_with_children(project, md5s))
        repo.cloud.pull(_with_children(project, md5s))  # the files named by listings that just arrived
    return all(cached_locally(project, md5) for md5 in md5s)


def dvc_files(project: Path) -> list[Path]:
    """The `.dvc` files of data added with `dvc add`, outside hidden folders (.venv, .git, .tlpipe)."""
    found = []
    for folder, subfolders, files in os.walk(project):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d != "__pycache__")
        found.extend(Path(folder) / f for f in sorted(files) if f.endswith(".dvc"))
    return found


def tracked_data(project: Path) -> dict[str, str]:
    """{path: md5} of the data added with `dvc add`, as their `.dvc` files record it."""
    project = Path(project)
    found = {}
    for dvc_file in dvc_files(project):
        for out in (io.read_yaml(dvc_file) or {}).get("outs", []):
            rel = (dvc_file.parent / out["path"]).relative_to(project).as_posix()
            found[rel] = out.get("md5", "")
    return found


def pull_tracked(project: Path) -> int:
    """`dvc pull` of the `dvc add`ed data from the default remote; returns how many objects it fetched."""
    from dvc.repo import Repo

    project = Path(project).resolve()
    targets = [str(p.relative_to(project)) for p in dvc_files(project)]
    if not targets or default_remote(project) is None:
        return 0
    with inside(project), Repo(str(project), _wait_for_lock=True) as repo:
        result = repo.pull(targets=targets)
    return int(result.get("stats", {}).get("fetched", 0))

