"""What stages read from outside the pipeline: the checks made on it before any compute, and its
content hashes, which enter the cache keys (a path string never does).

Kept apart from the stage modules, so checking a run does not import what the stages train with.
"""

from __future__ import annotations

from pathlib import Path

from tlpipe import sources


def check_prepare(params: dict, project: Path) -> None:
    """Loads the target (cheap) and makes its split, so a bad data set, column or shot count fails first."""
    pool, test = sources.load_target(params, project)
    sources.split_target(params, pool, test)
    if params["source"]["name"] != sources.BUILTIN["source"]:
        sources.load_source(params, project)
    elif params["channels"] != 1:
        raise ValueError("prepare.channels: the built-in glyphs source is grayscale; use channels: 1")


def check_distill(params: dict, project: Path) -> None:
    """Every teacher can be found: no duplicates, local folders hold a backbone, hub ids resolve."""
    teachers = params["teachers"]
    if len(set(teachers)) != len(teachers):
        raise ValueError(f"distill.teachers lists a teacher twice: {teachers}")
    for entry in teachers:
        if entry != sources.OWN_TEACHER and sources.teacher_folder(entry, project) is None:
            import transformers

            try:
                transformers.AutoConfig.from_pretrained(entry)
            except (OSError, ValueError) as exc:
                raise ValueError(f"distill.teachers: {entry!r} is neither {sources.OWN_TEACHER!r}, a local "
                                 f"folder nor a reachable hub id ({type(exc).__name__})") from None


CHECKS = {"prepare": check_prepare, "distill": check_distill}
_EXTERNAL = {"prepare": sources.prepare_inputs, "distill": sources.distill_inputs}


def external_inputs(stage: str, params: dict, project: Path) -> dict[str, Path]:
    """{name: local path} of the data outside the pipeline that the stage reads with these params."""
    found = _EXTERNAL.get(stage)
    return found(params, Path(project)) if found else {}
