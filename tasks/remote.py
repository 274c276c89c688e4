"""The DVC remote: stage outputs and `dvc add`ed data pushed for a team and pulled back.

A run pushes the versions it produced or used to the project's default remote (`dvc remote add -d`);
a teammate's run that hits the shared cache then restores them from there. Without a default remote
every function here does nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tlpipe import io
from tasks.versioning import cache_object, inside


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
