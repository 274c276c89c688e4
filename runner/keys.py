"""Cache keys of stages: what a stage's result depends on, hashed.

sha256 over the stage name and cmd, the content hash of every data and code dependency (upstream
outputs enter by their hash, so keys chain), the values of the params the stage declares, the code
the stage runs (its task module and every project module it imports, found by reading the imports),
and the environment that changes results (library versions, device type, precision). Absolute paths
never enter the key. The runner's own code does not either: it decides where results go, not what
they are.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from tlpipe.training import devices

from runner.spec import StageSpec

PROJECT_PACKAGES = ("tlpipe", "project", "tasks")
RESULT_PACKAGES = ("torch", "torchvision", "transformers", "peft", "datasets", "numpy", "scikit-learn", "safetensors")
DEVICE_VARIABLE = "TLPIPE_DEVICE"


def module_file(module: str) -> Path | None:
    """The source file of a project module (`tlpipe.data.storage` -> .../tlpipe/data/storage.py), or None for others.

    Only the top-level package is located through the import system (its __init__ is light); the
    rest follows the package folders, so finding a module never runs it.
    """
    top, *rest = module.split(".")
    if top not in PROJECT_PACKAGES:
        return None
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        base = Path(folder).joinpath(*rest)
        for candidate in (base / "__init__.py", base.with_suffix(".py")) if rest else (base / "__init__.py",):
            if candidate.is_file():
                return candidate
    return None


def _is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` (the command-line entry, which does not shape results)."""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _walk(node: ast.AST):
    yield node
    for child in ast.iter_child_nodes(node):
        if not _is_main_guard(child):
            yield from _walk(child)


def imported_modules(path: Path, *, main_guard: bool = False) -> set[str]:
    """Every module an import statement in `path` names, including `from pkg import submodule`.

    Imports under the `__main__` guard are left out unless `main_guard`: they start the stage, they
    do not compute it.
    """
    stat = path.stat()
    return set(_imports_of(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, main_guard))


@functools.lru_cache(maxsize=512)
def _imports_of(path: str, mtime_ns: int, size: int, main_guard: bool) -> frozenset[str]:
    """Parses a file once per version (every stage of a run walks the same library files)."""
    found: set[str] = set()
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree) if main_guard else _walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(found)


def code_closure(module: str) -> dict[str, Path]:
    """The project modules `module` runs: itself, what it imports, their packages, recursively.

    Files are found the way the import system finds them, so the hash covers the code that runs.
    """
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # a submodule import also runs its packages' __init__
            prefix = ".".join(parts[:i])
            if prefix in seen:
                continue
            path = module_file(prefix)
            if path is None:
                continue
            seen[prefix] = path
            todo.extend(imported_modules(path))
    return dict(sorted(seen.items()))


def code_hashes(module: str) -> dict[str, str]:
    """{module: sha256 of its source} over the project code `module` runs (`code_closure`)."""
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in code_closure(module).items()}


def environment(device_type: str, precision: str) -> dict[str, str]:
    """The parts of the environment that change numeric results."""
    versions = {}
    for name in RESULT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {
        **versions,
        "python": ".".join(platform.python_version_tuple()[:2]),
        "device": device_type,
        "precision": precision,
    }


def device_name() -> str:
    """The device stages run on: TLPIPE_DEVICE (auto | cpu | cuda | cuda:N | mps), default auto.

    "cpu", and "auto" where no accelerator can exist, are answered without importing torch.

    Raises:
        ValueError: naming the variable, when it names no device or one this machine lacks.
    """
    name = os.environ.get(DEVICE_VARIABLE, "auto")
    if name == "cpu" or (name == "auto" and not devices.accelerator_possible()):
        return "cpu"
    from tlpipe.training.runtime import resolve_device

    try:
        return str(resolve_device(name))
    except ValueError as exc:
        raise ValueError(f"{DEVICE_VARIABLE}: {exc}") from None


def run_environment(device: str) -> dict[str, str]:
    """The environment part of cache keys for a device ("cpu", "cuda:0", ...)."""
    device_type = device.split(":")[0]
    return environment(device_type, devices.PRECISION[device_type])


def stage_cache_key(spec: StageSpec, *, declared: dict[str, dict], dep_hashes: dict[str, str],
                    env: dict[str, str]) -> str:
    """sha256 hex of everything the stage's outputs depend on (see the module docstring).

    `declared` holds the values of the params the stage declares, by file (`StageSpec.declared`).
    """
    code = code_hashes(spec.module)
    record = {
        "stage": spec.name,
        "cmd": spec.cmd,
        "deps": dict(sorted(dep_hashes.items())),
        "params": declared,
        "code": code,
        "env": dict(sorted(env.items())),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


def write_code_deps(root: Path, *, write: bool) -> str:
    """The code each stage of dvc.yaml runs, as text; with `write`, also put into dvc.yaml's deps
    (comments and layout of the file kept)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load((root / "dvc.yaml").read_text())
    lines = []
    for name, stage in document["stages"].items():
        module = StageSpec(name, stage["cmd"], (), {}, ()).module
        code = [p.resolve().relative_to(root).as_posix() for p in code_closure(module).values()]
        lines += [f"{name}:"] + [f"  - {f}" for f in code]
        data = [d for d in stage["deps"] if not str(d).endswith(".py")]
        stage["deps"].clear()
        stage["deps"].extend(data + code)
    if write:
        with open(root / "dvc.yaml", "w") as fh:
            yaml.dump(document, fh)
    return "\n".join(lines)


if __name__ == "__main__":
    # `python -m runner.keys` prints the code each stage runs; `--write` puts it into dvc.yaml's deps.
    import sys

    print(write_code_deps(Path.cwd().resolve(), write="--write" in sys.argv))
