"""File I/O for stage outputs: atomic replacement, deterministic JSON, tables and figures.

Every output is written to a temporary sibling first and renamed into place only when the whole
stage has succeeded, so a crash never leaves a half-written artifact under its final name.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

_TMP_MARK = ".tmp-"
# libyaml's parser with the safe constructor when PyYAML was built with it: the same data as
# yaml.safe_load, about 6x faster on a dvc.lock, which a cached run reads once per stage
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@contextlib.contextmanager
def staged_outputs(*finals: Path) -> Iterator[tuple[Path, ...]]:
    """Yields one temporary path per final path; on success moves each into place, else deletes them.

    The temporary paths are siblings of the finals (same file system, so the rename is atomic).
    Missing parent folders are created. An existing final is replaced only after the block succeeded.
    """
    temps = []
    for final in finals:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        temps.append(temporary_sibling(final))
    try:
        yield tuple(temps)
        missing = [str(f) for f, t in zip(finals, temps) if not t.exists()]
        if missing:
            raise FileNotFoundError(f"stage did not write its outputs: {', '.join(missing)}")
        for final, temp in zip(finals, temps):
            replace_path(temp, Path(final))
    finally:
        for temp in temps:
            remove_path(temp)


def replace_path(src: Path, dst: Path) -> None:
    """Moves `src` to `dst`, replacing a file or a whole folder; `dst` is never half-written."""
    if dst.is_dir() and not dst.is_symlink():
        graveyard = temporary_sibling(dst, "old")
        os.replace(dst, graveyard)
        os.replace(src, dst)
        shutil.rmtree(graveyard, ignore_errors=True)
    else:
        os.replace(src, dst)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def temporary_sibling(path: Path, kind: str = "") -> Path:
    """A free name beside `path` for writing it: `<name>.tmp-<pid>-[<kind>-]<hex>`; the pid tells
    whether the writer still runs (`remove_stale_temporaries`)."""
    path = Path(path)
    return path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}-{kind + '-' if kind else ''}{uuid.uuid4().hex[:8]}")


def stale_temporaries(folder: Path) -> list[Path]:
    """Leftovers of interrupted writes below `folder` (safe to delete when no stage is running)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob(f"*{_TMP_MARK}*"))


_WRITER = re.compile(re.escape(_TMP_MARK) + r"(\d+)-")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Removes the temporaries in `folder` (not below it) whose writer no longer runs on this machine,
    as a killed process leaves them; returns what it removed."""
    removed = []
    for path in sorted(Path(folder).glob(f"*{_TMP_MARK}*")) if Path(folder).is_dir() else ():
        writer = _WRITER.search(path.name)
        if writer and not process_alive(int(writer.group(1))):
            remove_path(path)
            removed.append(path)
    return removed


def remove_temporaries(folder: Path, name: str = "") -> list[Path]:
    """Removes the temporaries in `folder` of the files named `name` (of every file, by default),
    whatever process wrote them; returns what it removed. Call it holding the lock that every writer of
    those files holds (a shared store is written from several machines, where a process id tells
    nothing), so that none of them is still being written."""
    pattern = f"{glob.escape(name)}{_TMP_MARK}*" if name else f"*{_TMP_MARK}*"
    found = sorted(Path(folder).glob(pattern)) if Path(folder).is_dir() else []
    for path in found:
        remove_path(path)
    return found


def process_alive(pid: int) -> bool:
    """True while a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(data: Any, *, sort_keys: bool = True) -> str:
    """JSON of plain data (numpy values and paths included) with a trailing newline; with `sort_keys`
    equal data gives equal bytes, without it the order of the dicts is kept."""
    return json.dumps(_jsonable(data), indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n"


def write_json(path: Path, data: Any, *, sort_keys: bool = True) -> None:
    Path(path).write_text(json_text(data, sort_keys=sort_keys), encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def parse_yaml(text: str) -> Any:
    """YAML text -> plain data, as `yaml.safe_load` (no arbitrary objects), through libyaml if present."""
    return yaml.load(text, Loader=_SAFE_LOADER)


def read_yaml(path: Path) -> Any:
    """The plain data of a YAML file (None when it is empty)."""
    return parse_yaml(Path(path).read_text(encoding="utf-8"))


def write_array(path: Path, array) -> None:
    """A numpy array as .npy (no pickles, so it loads safely)."""
    with open(path, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def read_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def write_table(path: Path, frame) -> None:
    """Writes a pandas DataFrame as CSV (no index; floats in full precision); makes its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")


def write_history(path: Path, history: list[dict]):
    """Per-epoch metrics ({"epoch": ..., metric: value}) as CSV; wall-clock columns are left out so
    the file is reproducible. Returns the table written (a pandas DataFrame)."""
    import pandas as pd

    frame = pd.DataFrame(history).drop(columns=["elapsed_s"], errors="ignore")
    write_table(path, frame)
    return frame


def write_figure(path: Path, figure) -> None:
    """Saves a matplotlib Figure as PNG without timestamps in the metadata (stable bytes)."""
    figure.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})


def write_text(path: Path, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


RAN, CACHED = "ran", "cached"


def lock_exclusive(handle, on_wait: Callable[[], None] | None = None) -> None:
    """Takes an exclusive flock on an open file (object or descriptor, a folder's too), waiting for it;
    `on_wait` is called once first when another process holds it. Closing the handle releases it."""
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if on_wait is not None:
            on_wait()
        fcntl.flock(handle, fcntl.LOCK_EX)


@contextlib.contextmanager
def locked(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive lock across processes (flock on `path`, created if missing), held for the block.

    `on_wait` is called once when another process holds the lock, before waiting for it.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        lock_exclusive(handle, on_wait)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_file(path: Path, compute: Callable, write: Callable, read: Callable) -> tuple[Any, str]:
    """(value, RAN or CACHED): the file at `path` read back, or computed and written atomically, once
    (concurrent callers wait on a lock beside it instead of computing it twice)."""
    path = Path(path)
    with locked(path.with_name(path.name + ".lock")):
        if path.is_file():
            return read(path), CACHED
        remove_temporaries(path.parent, path.name)  # of a writer that was killed
        value = compute()
        with staged_outputs(path) as (temp,):
            write(temp, value)
        return value, RAN
