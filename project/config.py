"""Validated stage parameters.

Each stage reads one flat-at-the-top YAML file (`params/<stage>.yaml`). The schema below is the one
place that says which keys exist, their types and their ranges (fields from `project.schema`); every
error names the file, the key and what is allowed, and is raised before any compute. A sweep file
and `-s` overrides are checked here too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml

from tlpipe import io, registry
from project.schema import BOOL, Choice, Field, Float, Int, IntList, OPTIONAL_STR, ParamsError, Positive, STR

SEED = Int(0, 2**31 - 1)
RATIO = Float(0.0, 1.0, closed_hi=False)
FRACTION_OPEN = Field("float", "(0, 1)", check=lambda v: 0 < v < 1)

MODEL = {
    "arch": Choice("resnet"),
    "embedding_size": Int(1, 4096),
    "hidden_sizes": IntList(1),
    "depths": IntList(1),
    "downsample_in_first_stage": BOOL,
    "pretrained": OPTIONAL_STR,
}
OPTIM = {
    "epochs": Int(1, 10_000),
    "batch_size": Int(1, 65_536),
    "lr": Positive(),
    "weight_decay": Float(0.0, 1.0),
}

# Data-parallel training: processes per host and hosts (runner/ranks.py); the global batch is split over them
PARALLEL = {"nproc": Int(1, 1024), "nnodes": Int(1, 1024)}
SSL = {"temperature": Positive(), "projection_dim": Int(1, 65_536)}  # SimCLR/BYOL heads (unused when supervised)
NEEDS_CLASSIFIER = tuple(name for name, m in registry.PRUNING.items() if "logits" in m.needs)
SURROGATE_MODES = tuple(name for name, m in registry.SOURCE_MODES.items() if m.surrogate)

# `distill.teachers` as a mapping: k teachers picked out of candidates (registry.TEACHER_SELECTION)
TEACHER_SELECT = {"select": Choice(*registry.TEACHER_SELECTION), "from": Field("str_list"), "size": Int(1, 1024)}

SCHEMA: dict[str, dict[str, Any]] = {
    "prepare": {
        "seed": SEED,
        "image_size": Int(8, 512),
        "channels": Choice(1, 3),
        "source": {
            "name": STR,
            "charset": Choice("ascii", "extended"),
            "images_per_class": Int(2, 100_000),
            "degrade_fraction": Float(0.0, 1.0),
            "val_fraction": FRACTION_OPEN,
            "split": STR,
            "image_column": STR,
            "label_column": STR,
        },
        "target": {
            "name": STR,
            "shots_per_class": Int(1, 100_000),
            "test_fraction": FRACTION_OPEN,
            "split": STR,
            "test_split": OPTIONAL_STR,
            "image_column": STR,
            "label_column": STR,
        },
    },
    "surrogate": {"mode": Choice(*SURROGATE_MODES), "seed": SEED, "model": MODEL, **OPTIM, **PARALLEL, **SSL},
    "prune": {
        "method": Choice(*registry.PRUNING),
        "ratio": RATIO,
        "seed": SEED,
        "groups": Choice("classes", "kmeans"),
        "num_clusters": Int(1, 1_000_000),
        "scores": {"runs": Int(1, 100), "epochs": Int(1, 10_000), "batch_size": Int(1, 65_536), "lr": Positive()},
    },
    "pretrain": {
        "mode": Choice(*registry.SOURCE_MODES),
        "seed": SEED,
        "model": MODEL,
        **OPTIM,
        **PARALLEL,
        "label_smoothing": Float(0.0, 0.5),
        **SSL,
        "predictor_hidden": Int(1, 65_536),
        "base_momentum": Float(0.0, 1.0),
    },
    "distill": {
        "method": Choice(*registry.DISTILLATION),
        "teachers": Field("str_list_or_mapping"),  # a list, or {select, from, size}: TEACHER_SELECT
        "teacher_weighting": Choice("nearest", "weighted"),
        "weighting_temperature": Positive(),
        "seed": SEED,
        "model": MODEL,
        **OPTIM,
        **PARALLEL,
        "queue_size": Int(1, 1_000_000),
        "tau_s": Positive(),
        "tau_t": Positive(),
        "use_source": BOOL,
        "augment": BOOL,
        "krr_st": {  # method krr_st (tlpipe.distillation.krr_st)
            "synthetic_size": Int(1, 1_000_000),
            "init": Choice(*registry.KRR_ST_INITS),
            "steps": Int(0, 10_000_000),
            "batch_size": Int(1, 65_536),
            "lr": Positive(),
            "pool_size": Int(1, 1024),
            "online_steps": Int(2, 1_000_000),
            "online_lr": Positive(),
            "online_weight_decay": Float(0.0, 1.0),
            "epochs": Int(1, 1_000_000),
            "synthetic": OPTIONAL_STR,
        },
    },
    "finetune": {
        "backbone": Choice("student", "teacher"),
        "mode": Choice("linear", "full"),
        "compare": BOOL,
        "seed": SEED,
        **OPTIM,
    },
    "evaluate": {
        "seed": SEED,
        "probe_shots": IntList(1),
        "probe_draws": Int(1, 10_000),
        "batch_size": Int(1, 65_536),
        "promote_margin": Float(0.0, 1.0),
    },
}
# The stages that take params, each with its params/<stage>.yaml; dvc.yaml declares the same stages in the
# same order (check_declaration and tests/unit/test_declaration.py hold the two together).
STAGES = tuple(SCHEMA)


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
    sweep = _validate_mapping(SWEEP_SCHEMA, read_yaml(Path(path)), prefix="", source=source)
    unknown = [m for m in sweep["methods"] if m not in methods]
    if unknown:
        raise ParamsError(f"{source}: methods: unknown method {unknown[0]!r}; allowed: {', '.join(methods)}")
    for key in ("methods", "ratios", "seeds"):
        if len(set(sweep[key])) != len(sweep[key]):
            raise ParamsError(f"{source}: {key} lists a value twice: {sweep[key]}")
    if 0.0 in sweep["ratios"]:
        raise ParamsError(f"{source}: ratios: 0 is the full source; set full_source: true instead")
    overrides = [f"{stage}.{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                 for stage, values in sweep["set"].items() for key, value in _flat_items(values, stage, source)]
    for stage in sweep["set"]:
        if stage == "prune" or stage not in SCHEMA:
            raise ParamsError(f"{source}: set: {stage!r} cannot be set here; allowed: "
                              f"{', '.join(s for s in STAGES if s != 'prune')} (prune comes from the grid)")
    sweep["params"], _ = apply_overrides(base, overrides)
    for method in sweep["methods"]:
        check_combination({**sweep["params"], "prune": {**sweep["params"]["prune"], "method": method}})
    return sweep


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


def params_path(project: Path, stage: str) -> Path:
    return Path(project) / "params" / f"{stage}.yaml"


def validate(stage: str, values: Any, *, source: str) -> dict:
    """Checks `values` against the stage schema and returns a validated deep copy.

    Args:
        stage: one of STAGES.
        values: the parsed YAML mapping.
        source: the file name to put in error messages.

    Raises:
        ParamsError: unknown or missing key, wrong type, value out of range.
    """
    if stage not in SCHEMA:
        raise ParamsError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    out = _validate_mapping(SCHEMA[stage], values, prefix="", source=source)
    _check_cross_fields(stage, out, source)
    return out


def _validate_mapping(schema: Mapping, values: Any, *, prefix: str, source: str) -> dict:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(values, Mapping):
        raise ParamsError(f"{source}: {where} must be a mapping of keys, got {type(values).__name__}")
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise ParamsError(
            f"{source}: unknown key {prefix}{unknown[0]!s}; allowed keys: {', '.join(prefix + k for k in schema)}"
        )
    missing = [k for k in schema if k not in values]
    if missing:
        raise ParamsError(f"{source}: missing key {prefix}{missing[0]}")
    out = {}
    for key, rule in schema.items():
        if isinstance(rule, Mapping):
            out[key] = _validate_mapping(rule, values[key], prefix=f"{prefix}{key}.", source=source)
        else:
            out[key] = rule.validate(f"{source}: {prefix}{key}", copy.deepcopy(values[key]))
    return out


def _check_cross_fields(stage: str, values: dict, source: str) -> None:
    if stage == "distill":
        _check_teachers(values, source)
    processes = values.get("nproc", 1) * values.get("nnodes", 1)
    if values.get("batch_size", 0) % processes:
        raise ParamsError(f"{source}: batch_size={values['batch_size']} must be a multiple of nproc x nnodes "
                          f"= {processes} (every process takes an equal share of each batch)")
    model = values.get("model")
    if model is not None and len(model["hidden_sizes"]) != len(model["depths"]):
        raise ParamsError(
            f"{source}: model.hidden_sizes has {len(model['hidden_sizes'])} entries but model.depths has "
            f"{len(model['depths'])}; they must have the same length (one per stage of the backbone)"
        )


def _check_teachers(values: dict, source: str) -> None:
    """`teachers` as a selection is validated as a section of its own; KRR-ST distils one teacher."""
    teachers = values["teachers"]
    if isinstance(teachers, dict):
        teachers = values["teachers"] = _validate_mapping(TEACHER_SELECT, teachers, prefix="teachers.", source=source)
        candidates = teachers["from"]
        if len(set(candidates)) != len(candidates):
            raise ParamsError(f"{source}: teachers.from lists a teacher twice: {candidates}")
        if not 1 <= teachers["size"] <= len(candidates):
            raise ParamsError(f"{source}: teachers.size={teachers['size']} must be between 1 and the "
                              f"{len(candidates)} candidates of teachers.from")
    count = teachers["size"] if isinstance(teachers, dict) else len(teachers)
    if values["method"] in registry.DATASET_DISTILLATION and count != 1:
        raise ParamsError(f"{source}: method={values['method']} distils the source with one teacher, but teachers "
                          f"gives {count}; list one (or select size: 1)")


def check_combination(params: dict[str, dict]) -> None:
    """Rules across stages: label-mapping methods read the surrogate's classifier, so it must be supervised."""
    prune, surrogate = params.get("prune"), params.get("surrogate")
    if prune and surrogate and prune["method"] in NEEDS_CLASSIFIER and surrogate["mode"] != "supervised":
        raise ParamsError(
            f"params/prune.yaml: method={prune['method']} votes with the surrogate's source classifier, but "
            f"params/surrogate.yaml: mode={surrogate['mode']} trains no classifier; use surrogate mode supervised "
            f"or a feature method (fm, fm_samples, moderate)"
        )


def load_stage_params(project: Path, stage: str) -> dict:
    """Reads and validates `params/<stage>.yaml` of a project."""
    path = params_path(project, stage)
    return validate(stage, read_yaml(path), source=_display(project, path))


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
        updated[stage] = validate(stage, updated[stage], source=f"params/{stage}.yaml (with -s overrides)")
    return updated, touched
