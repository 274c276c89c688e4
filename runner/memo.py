"""Results computed once and shared across runs (a method's scores for every pruning ratio, teacher
embeddings for every student, a sweep point's probe): files in the store, keyed like stages by what
they are computed from, the code that computes them and the environment that changes their numbers.

A memo's key is sha256 over its name, its `parts` (plain data: the params and the content digests of
its inputs), the source of every project module the computation runs (`keys.code_closure` of the
module that defines `code`), and `keys.run_environment(device)`. Editing the scoring code, upgrading
torch or moving to a GPU computes the memo again; nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from tlpipe import io

from runner import keys

ARRAY = (".npy", io.write_array, io.read_array)  # (suffix, write, read) of a memo's file
JSON = (".json", io.write_json, io.read_json)


def code_module(code: str | Callable) -> str:
    """The module whose code closure keys a memo: a module name, or the module defining a function."""
    return code if isinstance(code, str) else code.__module__


def memo_key(name: str, parts: Any, *, code: str | Callable, device: str) -> str:
    record = {"memo": name, "parts": parts, "code": keys.code_hashes(code_module(code)),
              "env": keys.run_environment(device)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


def memo(store: Path, name: str, parts: Any, compute: Callable[[], Any], *, code: str | Callable | None = None,
         device: str, form: tuple = ARRAY) -> tuple[Any, str]:
    """(value, RAN or CACHED): `compute()` once per key, kept at `<store>/<name>/<key><suffix>`.

    `code` is the function (or module) that does the work, default `compute` itself: a lambda in a
    stage module keys by everything that module runs, naming the library function keys more narrowly
    (other edits to the stage leave the memo valid). Concurrent callers of one key compute it once.
    """
    suffix, write, read = form
    key = memo_key(name, parts, code=compute if code is None else code, device=device)
    return io.cached_file(Path(store) / name / f"{key}{suffix}", compute, write, read)
