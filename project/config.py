"""Validated stage parameters.

Each stage reads one flat-at-the-top YAML file (`params/<stage>.yaml`). The schema below is the one
place that says which keys exist, their types and their ranges (fields from `project.schema`); every
error names the file, the key and what is allowed, and is raised before any compute. Reading the
files, `-s` overrides and the sweep file is `project.paramfiles`.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping


from tlpipe import registry
from project.schema import BOOL, Choice, Field, Float, Int, IntList, OPTIONAL_STR, ParamsError, Positive, STR

SEED = Int(0, 2**31 - 1)
RATIO = Float(0.0, 1.0, closed_hi=False)
FRACTION_OPEN = Field("float", "(0, 1)", check=lambda v: 0 < v < 1)

MODEL = {  # tlpipe.training.models.build_backbone; presets of real backbones: params/presets/
    "arch": Choice("resnet", "convnext", "vit"),
    "embedding_size": Int(1, 4096),
    "hidden_sizes": IntList(1),
    "depths": IntList(1),
    "downsample_in_first_stage": BOOL,
    "layer_type": Choice("basic", "bottleneck"),  # resnet blocks
    "patch_size": Int(1, 64),  # convnext stem stride, vit patch side
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
AUGMENT = {"augment": Choice("auto", "none", "crop_flip")}  # tlpipe.data.recipes.training_augmentation
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
        "storage": Choice("raw", "encoded", "auto"),  # tlpipe.data.encoding: auto = raw up to 64 px
        "quality": Int(1, 100),  # JPEG quality of the images prepare encodes
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
    "surrogate": {"mode": Choice(*SURROGATE_MODES), "seed": SEED, "model": MODEL, "pretrained": OPTIONAL_STR,
                  **OPTIM, **AUGMENT, **PARALLEL, **SSL},
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
        **AUGMENT,
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
        "method": Choice(*registry.FINETUNING),
        "l2sp": {"alpha": Float(0.0, 100.0), "beta": Float(0.0, 100.0)},  # tlpipe.finetuning.regularizers
        "bss": {"eta": Float(0.0, 10.0), "k": Int(1, 4096)},
        "fixmatch": {"threshold": Field("float", "(0, 1]", check=lambda v: 0 < v <= 1),  # tlpipe.finetuning.fixmatch
                     "mu": Int(1, 1024), "lambda_u": Float(0.0, 100.0), "flip": BOOL},
        "lora": {"r": Int(1, 4096), "alpha": Field("float", "> 0", check=lambda v: v > 0),  # tlpipe.finetuning.lora
                 "dropout": Field("float", "[0, 1)", check=lambda v: 0 <= v < 1)},
        "compare": BOOL,
        "seed": SEED,
        **OPTIM,
        **AUGMENT,
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
    out = validate_mapping(SCHEMA[stage], values, prefix="", source=source)
    _check_cross_fields(stage, out, source)
    return out


def validate_mapping(schema: Mapping, values: Any, *, prefix: str, source: str) -> dict:
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
            out[key] = validate_mapping(rule, values[key], prefix=f"{prefix}{key}.", source=source)
        else:
            out[key] = rule.validate(f"{source}: {prefix}{key}", copy.deepcopy(values[key]))
    return out


def _check_cross_fields(stage: str, values: dict, source: str) -> None:
    if stage == "distill":
        _check_teachers(values, source)
    if stage == "surrogate" and values["pretrained"] is not None:
        if values["mode"] != "supervised":
            raise ParamsError(f"{source}: pretrained={values['pretrained']!r} is a classifier used as it is, but "
                              f"mode={values['mode']}; set mode: supervised (or pretrained: null to train one)")
        if values["nproc"] * values["nnodes"] != 1:
            raise ParamsError(f"{source}: pretrained={values['pretrained']!r} trains nothing; nproc and nnodes must be 1")
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
    if model is not None and model["arch"] == "vit" and (len(model["hidden_sizes"]) != 1 or model["hidden_sizes"][0] % 64):
        raise ParamsError(f"{source}: model.arch=vit takes one stage: hidden_sizes=[width] (a multiple of 64, "
                          f"one attention head per 64) and depths=[layers]; got {model['hidden_sizes']}")


def _check_teachers(values: dict, source: str) -> None:
    """`teachers` as a selection is validated as a section of its own; KRR-ST distils one teacher."""
    teachers = values["teachers"]
    if isinstance(teachers, dict):
        teachers = values["teachers"] = validate_mapping(TEACHER_SELECT, teachers, prefix="teachers.", source=source)
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
