"""The data sets and models that params name: the built-in benchmark, local paths and hub ids.

`prepare` loads its source and target through these functions, and the checks before a run use the
same ones, so a bad data set fails the same way in both. Finding which local folders a run reads is
kept free of heavy imports (`datasets` is imported only to load), because every run asks it.
"""

from __future__ import annotations

from pathlib import Path

from tlpipe.distillation import SYNTHETIC_FILE, SYNTHETIC_META
from project import files

BUILTIN = {"source": "glyphs", "target": "digits"}
OWN_TEACHER = "pretrain"  # distill.teachers entry for this run's own pretrained teacher


def locate(name: str, base: Path) -> str:
    """A data set or model name as the loaders need it: a local path resolved against `base` when it
    exists there, else the name as given (a hub id)."""
    local = Path(base) / Path(name).expanduser()
    return str(local) if local.exists() else name


def source_parts(params: dict, base: Path):
    """The source of the `prepare` params as `tlpipe.data.shards` writes it: rendered or decoded a unit at a
    time by worker processes (a `shards.Glyphs` or `shards.Outside`)."""
    from tlpipe.data import shards

    spec, stored = params["source"], {"storage": params["storage"], "quality": params["quality"]}
    if spec["name"] == BUILTIN["source"]:
        return shards.Glyphs(charset=spec["charset"], images_per_class=spec["images_per_class"], seed=params["seed"],
                             image_size=params["image_size"], degrade_fraction=spec["degrade_fraction"],
                             channels=params["channels"], **stored)
    return shards.Outside(locate(spec["name"], base), spec["split"], spec["image_column"], spec["label_column"],
                          image_size=params["image_size"], channels=params["channels"], **stored)


def layout(params: dict):
    """How the `prepare` params store images (`tlpipe.data.storage.Layout`: storage auto decided)."""
    from tlpipe.data import storage

    return storage.Layout.chosen(params["storage"], channels=params["channels"], image_size=params["image_size"],
                                 quality=params["quality"])


def load_target(params: dict, base: Path):
    """(train pool, the data set's own test split or None) of the target of the `prepare` params."""
    from tlpipe.data import storage

    spec = params["target"]
    if spec["name"] == BUILTIN["target"]:
        return storage.load_digits_dataset(layout=layout(params)), None
    test = _load_named(spec, params, spec["test_split"], base) if spec["test_split"] else None
    return _load_named(spec, params, spec["split"], base), test


def _load_named(spec: dict, params: dict, split: str, base: Path):
    from tlpipe.data import external

    return external.load_image_dataset(locate(spec["name"], base), split=split, image_column=spec["image_column"],
                                   label_column=spec["label_column"], layout=layout(params))


def split_target(params: dict, pool, test):
    """The fixed few-shot split of the target pool that the `prepare` params describe."""
    from tlpipe.data import splits

    spec = params["target"]
    return splits.split_target(pool, shots_per_class=spec["shots_per_class"], test_fraction=spec["test_fraction"],
                             seed=params["seed"], test=test)


def prepare_inputs(params: dict, base: Path) -> dict[str, Path]:
    """The local data sets the `prepare` params name (hub ids are versioned by their hub, built-ins
    by the code), by role: {"prepare.source": path, ...}."""
    found = {}
    for role in ("source", "target"):
        name = params[role]["name"]
        if name != BUILTIN[role] and Path(locate(name, base)).exists():
            found[f"prepare.{role}"] = Path(locate(name, base))
    return found


def surrogate_classifier(params: dict, base: Path) -> str | None:
    """What `surrogate.pretrained` names: a local folder (as a path) or a hub id; None when unset."""
    name = params.get("pretrained")
    return None if name is None else locate(name, base)


def surrogate_inputs(params: dict, base: Path) -> dict[str, Path]:
    """The local classifier folder `surrogate.pretrained` names (a hub id is versioned by its hub)."""
    name = surrogate_classifier(params, base)
    return {"surrogate.pretrained": Path(name)} if name is not None and Path(name).exists() else {}


def teacher_folder(entry: str, base: Path) -> Path | None:
    """The saved backbone a local `distill.teachers` entry names; None for `pretrain` or a hub id.

    A folder counts when it holds a backbone (config.json) itself, in backbone/ (a pretrain or
    distill output) or in model/backbone/ (a finetune output).

    Raises:
        ValueError: the entry is a local folder without a saved backbone.
    """
    if entry == OWN_TEACHER:
        return None
    local = Path(base) / Path(entry).expanduser()
    if not local.exists():
        return None
    for candidate in (local, local / files.BACKBONE, local / files.CLASSIFIER / files.BACKBONE):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(f"teachers: {entry!r} has no saved backbone "
                     "(config.json in it, in backbone/ or in model/backbone/)")


def synthetic_folder(params: dict, base: Path) -> Path | None:
    """The synthetic set `distill.krr_st.synthetic` names for reuse (method krr_st), or None.

    Raises:
        ValueError: the folder does not exist or holds no synthetic set.
    """
    entry = params["krr_st"]["synthetic"] if params["method"] == "krr_st" else None
    if entry is None:
        return None
    folder = Path(base) / Path(entry).expanduser()
    for candidate in (folder, folder / files.SYNTHETIC):
        if (candidate / SYNTHETIC_FILE).is_file() and (candidate / SYNTHETIC_META).is_file():
            return candidate
    raise ValueError(f"params/distill.yaml: krr_st.synthetic: {entry!r} holds no synthetic set ({SYNTHETIC_FILE} and {SYNTHETIC_META} "
                     "in it or in synthetic/, as a krr_st distill output has)")


def teacher_candidates(distill: dict) -> list[str]:
    """Every teacher entry `distill.teachers` names: the list, or the candidates of a selection."""
    teachers = distill["teachers"]
    return list(teachers["from"]) if isinstance(teachers, dict) else list(teachers)


def distill_inputs(params: dict, base: Path) -> dict[str, Path]:
    """The local teacher folders the `distill` params name (this run's teacher is an upstream output),
    and a synthetic set to reuse."""
    folders = [teacher_folder(entry, base) for entry in teacher_candidates(params)]
    # named by position (a path string never enters a cache key): the order sets each teacher's seed
    found = {f"distill.teacher{k}": folder for k, folder in enumerate(folders) if folder is not None}
    synthetic = synthetic_folder(params, base)
    return found if synthetic is None else {**found, "distill.synthetic": synthetic}
