"""Copies of a project: the declaration, params and code, without its data, runs or caches.

A copy is a workspace of its own (its own data/, dvc.lock and cache records), which is what a
benchmark or a throwaway experiment needs; it can be given parameter overrides on the way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tlpipe import io

COPIED = ("dvc.yaml", "params", "project", "tasks", "runner", "src", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore",
          "data/.gitignore", "data/metrics/.gitignore")


def copy_project(source: Path, target: Path, overrides: dict[str, dict] | None = None) -> Path:
    """Copies what defines the pipeline from `source` to `target` and merges `overrides` into params/<stage>.yaml."""
    source, target = Path(source), Path(target)
    for rel in COPIED:
        src, dst = source / rel, target / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for stage, values in (overrides or {}).items():
        path = target / "params" / f"{stage}.yaml"
        merged = _merge(io.read_yaml(path), values)
        path.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
    return target


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return base
