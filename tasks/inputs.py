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


OWN_TEACHER = "pretrain"  # distill.teachers entry for this run's own pretrained teacher


def teacher_folder(entry: str, project: Path) -> Path | None:
    """The saved backbone a local `distill.teachers` entry names; None for `pretrain` or a hub id.

    A folder counts when it holds a backbone (config.json) itself, in backbone/ (a pretrain or
    distill output) or in model/backbone/ (a finetune output).
    """
    if entry == OWN_TEACHER:
        return None
    local = Path(project) / Path(entry).expanduser()
    if not local.exists():
        return None
    for candidate in (local, local / "backbone", local / "model" / "backbone"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(f"distill.teachers: {entry!r} has no saved backbone "
                     "(config.json in it, in backbone/ or in model/backbone/)")


def check_distill(params: dict, project: Path) -> None:
    """Every teacher can be found: no duplicates, local folders hold a backbone, hub ids resolve."""
    teachers = params["teachers"]
    if len(set(teachers)) != len(teachers):
        raise ValueError(f"distill.teachers lists a teacher twice: {teachers}")
    for entry in teachers:
        if entry != OWN_TEACHER and teacher_folder(entry, project) is None:
            import transformers

            try:
                transformers.AutoConfig.from_pretrained(entry)
            except (OSError, ValueError) as exc:
                raise ValueError(f"distill.teachers: {entry!r} is neither {OWN_TEACHER!r}, a local folder nor a "
                                 f"reachable hub id ({type(exc).__name__})") from None


def distill_inputs(params: dict, project: Path) -> dict[str, Path]:
    """The local teacher folders `distill` reads (this run's teacher is an upstream output already)."""
    folders = [teacher_folder(entry, project) for entry in params["teachers"]]
    # named by position (a path string never enters a cache key): the order sets each teacher's seed
    return {f"distill.teacher{k}": folder for k, folder in enumerate(folders) if folder is not None}


CHECKS = {"prepare": check_prepare, "distill": check_distill}
EXTERNAL = {"prepare": prepare_inputs, "distill": distill_inputs}
