"""Arrow stream files (the shards of a prepared split) mapped by this process itself, so that readers
can let go of the pages they have read (madvise)."""

from __future__ import annotations

import mmap

import pyarrow as pa

__all__ = ["map_arrow_files", "file_rows"]


def map_arrow_files(files: list[str]) -> tuple[list[mmap.mmap], pa.Table | None]:
    """The Arrow stream files of a split, each mapped by this process (its mappings, to let pages go),
    read as one zero-copy table (None for no files)."""
    maps, tables = [], []
    for name in files:
        with open(name, "rb") as fh:
            maps.append(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
        tables.append(pa.ipc.open_stream(pa.py_buffer(maps[-1])).read_all())
    return maps, pa.concat_tables(tables) if tables else None


def file_rows(name: str) -> int:
    """Rows of an Arrow stream file, from its record batch headers (nothing else is read)."""
    with pa.memory_map(name) as source:
        return pa.ipc.open_stream(source).read_all().num_rows
