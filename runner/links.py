"""One copy on disk of each output: the file in data/ and its object in the DVC cache share their blocks.

The project's `.dvc/config` names the link types (`cache.type`, e.g. `reflink,hardlink,symlink`).
`dvc pull` and `dvc checkout` link outputs from the cache by that list. A stage's new outputs go the
other way: before DVC commits them, each file is put into the cache as a reflink or a hardlink of
itself (the first of the two the list allows that the file system takes), so the commit finds its
objects there and copies nothing. The stage's files are never replaced or rewritten for this (a
later stage may be reading them), except a file whose bytes the cache already holds in another
copy: that one is swapped for a link to the cache object by an atomic rename.

Cache objects are made read-only, as DVC protects them; a hardlinked output is then read-only too,
and the stages never write into an output in place (they write a new one and rename it into place),
so nothing in the cache changes under it. Where neither link works (the cache on another file
system), DVC copies as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

FICLONE = 0x40049409  # Linux ioctl: the destination shares the source's blocks (Btrfs, XFS)
READ_ONLY = 0o444
_UNSUPPORTED = {errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EPERM, errno.EMLINK}


def cache_types(project: Path) -> list[str]:
    """The link types of the project's DVC config, in order (DVC's default when none is set: copy).
    None but copy where the config moves the cache elsewhere (`cache.dir`): DVC then places the objects."""
    from dvc.config import Config

    cache = Config(dvc_dir=str(Path(project) / ".dvc"))["cache"]
    if cache.get("dir"):
        return ["copy"]
    return list(cache.get("type") or ["copy"])


def reflink(src: Path, dst: Path) -> None:
    """`dst` (new) shares the blocks of `src`; OSError where the file system cannot."""
    with open(src, "rb") as source, open(dst, "xb") as target:
        try:
            fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
        except OSError:
            target.close()
            os.unlink(dst)
            raise


def hardlink(src: Path, dst: Path) -> None:
    os.link(src, dst)


MAKERS = {"reflink": reflink, "hardlink": hardlink}
LINKS = tuple(MAKERS)  # the types that keep one copy of a new output without moving it


def link(src: Path, dst: Path, types: list[str]) -> str | None:
    """Makes `dst` (absent) one copy with `src` by the first of `types` that works; the type, or None."""
    for kind in (t for t in types if t in MAKERS):
        try:
            MAKERS[kind](src, dst)
            return kind
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
    return None


def share(files: dict[Path, Path], types: list[str]) -> int:
    """Puts each workspace file into the cache as one copy with it ({workspace file: its cache object}).

    A file whose object is absent becomes that object by a link; a file whose object exists as another
    copy is replaced by a link to the object (by rename, so a reader never finds it missing). Returns
    the number of files that share their blocks with the cache afterwards."""
    types = [t for t in types if t in LINKS]
    shared = 0
    for path, obj in files.items():
        if not types:
            break
        if obj.exists():
            if os.path.samefile(path, obj):
                shared += 1
                continue
            temp = obj.with_name(f"{obj.name}.link.{os.getpid()}")  # beside the object: data/ never holds it
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            if link(obj, temp, types) is None:
                continue
            os.replace(temp, path)
        else:
            obj.parent.mkdir(parents=True, exist_ok=True)
            if link(path, obj, types) is None:
                continue
            os.chmod(obj, READ_ONLY)
        shared += 1
    return shared


def place(src: Path, dst: Path, types: list[str]) -> None:
    """`dst` (new) as the cache object `src`: a link where the types allow one, else a copy."""
    import shutil

    if link(src, dst, types) is None:
        shutil.copyfile(src, dst)
