"""What stages read from outside the pipeline: checks made before any compute, and the content
hashes of external data sets, which enter the cache keys (a path string never does).

Kept apart from the stage modules, so checking a run does not import what the stages train with.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN = {"source": "glyphs", "target": "digits"}


def dataset_location(name: str, project: Path) -> str:
    """A dataset name as the loaders need it: a local path resolved against the project, else as given (hub id)."""
    local = Path(project) / Path(name).expanduser()
    return str(local) if local.exists() else name


def check_prepare(params: dict, project: Path) -> None:
    """Loads the target (cheap) and makes its split, so a bad dataset, column or shot count fails first."""
    from tasks import prepare

    pool, test = prepare.load_target(params, project)
    prepare.split_target(params, pool, test)
    if params["source"]["name"] != BUILTIN["source"]:
        prepare.load_source(params, project)
    elif params["channels"] != 1:
        raise ValueError("prepare.channels: the built-in glyphs source is grayscale; use channels: 1")


def prepare_inputs(params: dict, project: Path) -> dict[str, Path]:
    """The local data sets `prepare` reads (hub ids are versioned by their hub, built-ins by the code)."""
    found = {}
    for role in ("source", "target"):
        name = params[role]["name"]
        if name != BUILTIN[role] and Path(dataset_location(name, project)).exists():
            found[f"prepare.{role}"] = Path(dataset_location(name, project))
    return found


CHECKS = {"prepare": check_prepare}
EXTERNAL = {"prepare": prepare_inputs}
