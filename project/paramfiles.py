"""The params files of a project, `-s` overrides and the sweep file, read into checked stage params.

Every value goes through `project.config` (the schema); a file that is missing or not YAML, an
override that names no stage or key, and a sweep that names an unknown method are errors that name
the file or the override, raised before any compute.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml

from project import config
from project.config import SCHEMA, STAGES, ParamsError
from project.schema import BOOL, OPTIONAL_STR, Field, Int
from tlpipe import io


def params_path(project: Path, stage: str) -> Path:
    return Path(project) / "params" / f"{stage}.yaml"


def load_stage_params(project: Path, stage: str) -> dict:
    """Reads and validates `params/<stage>.yaml` of a project."""
    path = params_path(project, stage)
    return config.validate(stage, read_yaml(path), source=_display(project, path))


def load_all_params(project: Path, stages=STAGES) -> dict[str, dict]:
    return {stage: load_stage_params(project, stage) for stage in stages}


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    try:
        return io.read_yaml(path)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})") from None


def _display(project: Path, path: Path) -> str:
    try:
        return str(path.relative_to(project))
    except ValueError:
        return str(path)


def parse_override(text: str) -> tuple[str, list[str], Any]:
    """Parses `stage.key[.sub]=value` (value in YAML syntax) into (stage, key path, value)."""
    if "=" not in text:
        raise ParamsError(f"override {text!r}: expected STAGE.KEY=VALUE, e.g. prune.ratio=0.5")
    lhs, raw = text.split("=", 1)
    parts = lhs.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ParamsError(f"override {text!r}: expected STAGE.KEY=VALUE, e.g. prune.ratio=0.5")
    if parts[0] not in SCHEMA:
        raise ParamsError(f"override {text!r}: unknown stage {parts[0]!r}; stages are {', '.join(STAGES)}")
    try:
        value = io.parse_yaml(raw)
    except yaml.YAMLError:
        value = raw
    return parts[0], parts[1:], value


def apply_overrides(params: dict[str, dict], overrides: list[str]) -> tuple[dict[str, dict], set[str]]:
    """Returns validated copies of the stage params with the overrides set, and the stages touched."""
    updated = copy.deepcopy(params)
    touched: set[str] = set()
    for text in overrides:
        stage, keys, value = parse_override(text)
        node = updated[stage]
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise ParamsError(f"override {text!r}: params/{stage}.yaml has no section {key!r}")
            node = node[key]
        node[keys[-1]] = value
        touched.add(stage)
    for stage in touched:
        updated[stage] = config.validate(stage, updated[stage], source=f"params/{stage}.yaml (with -s overrides)")
    return updated, touched


SWEEP_SCHEMA: dict[str, Any] = {
    "methods": Field("str_list"),
    "ratios": Field("float_list", "[0, 1) each", check=lambda v: all(0.0 <= x < 1.0 for x in v)),
    "seeds": Field("int_list", "[0, 2**31) each", check=lambda v: all(0 <= x < 2**31 for x in v)),
    "full_source": BOOL,
    "set": Field("mapping"),
    "cluster": {
        "address": OPTIONAL_STR,
        "n_workers": Int(1, 1024),
        "threads_per_worker": Int(1, 1024),
    },
}


def load_sweep(path: Path, *, methods: tuple[str, ...], base: dict[str, dict]) -> dict:
    """Reads and validates a sweep file: the grid, per-point overrides and the Dask cluster.

    Args:
        path: the sweep YAML file.
        methods: the pruning methods that exist (prune.method choices).
        base: the validated params of every stage, which `set` overrides for every point.

    Raises:
        ParamsError: unknown method, ratio outside [0, 1), duplicate or empty grid, bad overrides.
    """
    source = str(path)
    sweep = config.validate_mapping(SWEEP_SCHEMA, read_yaml(Path(path)), prefix="", source=source)
    unknown = [m for m in sweep["methods"] if m not in methods]
    if unknown:
        raise ParamsError(f"{source}: methods: unknown method {unknown[0]!r}; allowed: {', '.join(methods)}")
    for key in ("methods", "ratios", "seeds"):
        if len(set(sweep[key])) != len(sweep[key]):
            raise ParamsError(f"{source}: {key} lists a value twice: {sweep[key]}")
    if 0.0 in sweep["ratios"]:
        raise ParamsError(f"{source}: ratios: 0 is the full source; set full_source: true instead")
    overrides = as_overrides(sweep["set"], source)
    for stage in sweep["set"]:
        if stage == "prune" or stage not in SCHEMA:
            raise ParamsError(f"{source}: set: {stage!r} cannot be set here; allowed: "
                              f"{', '.join(s for s in STAGES if s != 'prune')} (prune comes from the grid)")
    sweep["params"], _ = apply_overrides(base, overrides)
    for method in sweep["methods"]:
        config.check_combination({**sweep["params"], "prune": {**sweep["params"]["prune"], "method": method}})
    return sweep


def presets(project: Path) -> list[str]:
    """The names of the presets a project ships (`params/presets/<name>.yaml`)."""
    return sorted(p.stem for p in (Path(project) / "params" / "presets").glob("*.yaml"))


def load_preset(project: Path, name: str) -> list[str]:
    """A preset (a name under params/presets/ or a YAML file: {stage: {key: value}}) as `-s` overrides,
    which go before the command line's own (so `-s` can still change what a preset sets).

    Raises:
        ParamsError: no such preset, or one that names no stage or key of the schema.
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else Path(project) / "params" / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ParamsError(f"preset {name!r}: no such file {path}; presets here: {', '.join(presets(project)) or 'none'}")
    values = read_yaml(path)
    if not isinstance(values, Mapping) or not values:
        raise ParamsError(f"{path}: a preset maps stages to the keys it sets")
    unknown = [stage for stage in values if stage not in SCHEMA]
    if unknown:
        raise ParamsError(f"{path}: unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    return as_overrides(values, str(path))


def as_overrides(values: Mapping, source: str) -> list[str]:
    """{stage: {key: value, section: {...}}} as `stage.key[.sub]=value` overrides (values in YAML)."""
    return [f"{stage}.{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
            for stage, keys in values.items() for key, value in _flat_items(keys, stage, source)]


def _flat_items(values: Any, stage: str, source: str) -> list[tuple[str, Any]]:
    if not isinstance(values, Mapping):
        raise ParamsError(f"{source}: set.{stage} must map keys to values, got {values!r}")
    items = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            items += [(f"{key}.{sub}", v) for sub, v in _flat_items(value, stage, source)]
        else:
            items.append((str(key), value))
    return items
