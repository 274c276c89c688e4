"""What stages read from outside the pipeline, and the checks of a run against its data: made before
any compute, each failure one message naming the params file and key, and what is allowed.

Kept apart from the stage modules, so checking a run does not import what the stages train with.
"""

from __future__ import annotations

from pathlib import Path

from tlpipe import io
from tlpipe.distillation import SYNTHETIC_META
from project import files, sources

from runner.dvc import read_lock
from runner.spec import StageSpec, stage_dir


class DataCheck:
    """The data the checks of one run look at; the target is loaded and split at most once."""

    def __init__(self, project: Path, stages: list[StageSpec], params: dict[str, dict]):
        self.project, self.params = Path(project), params
        self.specs = {spec.name: spec for spec in stages}
        self._target = None

    def ran_before(self, *names: str) -> bool:
        """True when these stages (all of this run) last ran with these params."""
        return all(n in self.specs and ran_with(self.project, self.specs[n], self.params[n]) for n in names)

    def target(self):
        """The target split the `prepare` params describe (train, unlabeled, test): the prepared one
        when `prepare` last ran with these params, else loaded and split now."""
        if self._target is None:
            prepared = stage_dir(self.project, "prepare") / files.TARGET
            if self.ran_before("prepare") and (prepared / "dataset_dict.json").is_file():
                from tlpipe.data import storage

                self._target = storage.load_prepared(prepared)
            else:
                params = self.params["prepare"]
                pool, test = _named(f"params/prepare.yaml: target.name={params['target']['name']!r}: ",
                                    lambda: sources.load_target(params, self.project))
                self._target = _named("params/prepare.yaml: target.", lambda: sources.split_target(params, pool, test))
        return self._target


def _named(prefix: str, load):
    """Runs `load`; a data error it raises gets `prefix` (the params file and key) in front."""
    try:
        return load()
    except ValueError as exc:
        raise ValueError(prefix + str(exc)) from None


def check_prepare(check: DataCheck) -> None:
    """The target loads and splits with at least two classes; a source other than the built-in loads."""
    params = check.params["prepare"]
    names = check.target()["train"].features["label"].names
    if len(names) < 2:
        raise ValueError(f"params/prepare.yaml: target.name={params['target']['name']!r} has {len(names)} class "
                         f"({', '.join(names)}); a target needs at least 2")
    if params["source"]["name"] != sources.BUILTIN["source"]:  # opened and its labels read; decoded by prepare
        classes = _named(f"params/prepare.yaml: source.name={params['source']['name']!r}: ",
                         lambda: sources.source_parts(params, check.project).names())
        if len(classes) < 2:
            raise ValueError(f"params/prepare.yaml: source.name={params['source']['name']!r} has {len(classes)} "
                             f"class; a source needs at least 2")


def check_distill(check: DataCheck) -> None:
    """Every teacher can be found: no duplicates, local folders hold a backbone, hub ids resolve; a
    synthetic set to reuse (krr_st.synthetic) holds one."""
    teachers = sources.teacher_candidates(check.params["distill"])
    synthetic = sources.synthetic_folder(check.params["distill"], check.project)  # its error names the file
    prepare = check.params.get("prepare")
    if synthetic is not None and prepare is not None:
        shape = io.read_json(synthetic / SYNTHETIC_META).get("image_shape")
        expected = [prepare["channels"], prepare["image_size"], prepare["image_size"]]
        if shape != expected:
            raise ValueError(f"params/distill.yaml: krr_st.synthetic: its images are {shape} (C, H, W), this "
                             f"project's are {expected} (params/prepare.yaml channels, image_size)")
    if len(set(teachers)) != len(teachers):
        raise ValueError(f"params/distill.yaml: teachers lists a teacher twice: {teachers}")
    for entry in teachers:
        if entry != sources.OWN_TEACHER and _named("params/distill.yaml: ", lambda: sources.teacher_folder(
                entry, check.project)) is None:
            import transformers

            try:
                transformers.AutoConfig.from_pretrained(entry)
            except (OSError, ValueError) as exc:
                raise ValueError(f"params/distill.yaml: teachers: {entry!r} is neither {sources.OWN_TEACHER!r}, "
                                 f"a local folder nor a reachable hub id ({type(exc).__name__})") from None


def check_surrogate(check: DataCheck) -> None:
    """A pretrained classifier as the surrogate: its architecture, channels and labels fit the source."""
    name = sources.surrogate_classifier(check.params["surrogate"], check.project)
    if name is None or "prepare" not in check.params:
        return
    from tlpipe.pretraining import pretrained

    prepare = check.params["prepare"]
    classes = _named(f"params/prepare.yaml: source.name={prepare['source']['name']!r}: ",
                     lambda: sources.source_parts(prepare, check.project).names())
    _named("params/surrogate.yaml: pretrained: ", lambda: pretrained.check(name, classes, prepare["channels"]))


def check_evaluate(check: DataCheck) -> None:
    """Every probe shot count fits the labeled images of the smallest class of the target's pool."""
    import numpy as np

    from tlpipe.data import storage

    target, shots = check.target(), check.params["evaluate"]["probe_shots"]
    labels = np.concatenate([storage.labels_of(target[split]) for split in ("train", "unlabeled")])
    counts = np.bincount(labels[labels >= 0], minlength=target["train"].features["label"].num_classes)
    smallest = int(np.argmin(counts))
    if max(shots) > counts[smallest]:
        name = target["train"].features["label"].names[smallest]
        raise ValueError(f"params/evaluate.yaml: probe_shots={shots}: class {name!r} has {counts[smallest]} labeled "
                         f"images in the target's train pool; each shot count must be at most {counts[smallest]}")


def check_finetune(check: DataCheck) -> None:
    """A method that trains on the target's unlabeled images finds some; lora can adapt every backbone
    it fine-tunes (the student's architecture is distill's model, the teacher's pretrain's)."""
    from tlpipe import registry

    params = check.params["finetune"]
    method = registry.FINETUNING[params["method"]]
    if method.unlabeled and "prepare" in check.params and len(check.target()["unlabeled"]) == 0:
        raise ValueError(f"params/finetune.yaml: method={params['method']} trains on the target's unlabeled images, "
                         f"but its unlabeled split is empty (params/prepare.yaml target: every image is a train "
                         f"shot or a test image); use another method or a target with more images")
    if method.adapter:
        stage_of = {"student": "distill", "teacher": "pretrain"}
        used = [params["backbone"]] + ([b for b in stage_of if b != params["backbone"]] if params["compare"] else [])
        for backbone in used:
            model = check.params.get(stage_of[backbone], {}).get("model")
            if model:
                _check_lora_target(params["method"], backbone, stage_of[backbone], model, check.project)


def _check_lora_target(method: str, backbone: str, stage: str, model: dict, project: Path) -> None:
    import importlib

    import torch
    import transformers

    from tlpipe import registry
    from tlpipe.training import models

    adapter = importlib.import_module(registry.FINETUNING[method].adapter)
    where = f"params/finetune.yaml: method={method} on the {backbone} (params/{stage}.yaml model"
    with torch.device("meta"):  # its layers' names only: no weights are made
        if model.get("pretrained"):
            try:
                config = transformers.AutoConfig.from_pretrained(sources.locate(model["pretrained"], project))
            except (OSError, ValueError):
                return  # the stage that loads it reports what is wrong with it
            built = transformers.AutoModel.from_config(config)
        else:
            built = models.build_backbone(**{k: v for k, v in model.items() if k != "pretrained"})
    try:
        adapter.target_modules(built)
    except ValueError as exc:
        raise ValueError(f"{where}): {exc}") from None


# Each check, and the stages whose params it reads: it is skipped when all of them last ran with
# these params (its data passed it then and has not changed since).
CHECKS = {"prepare": (check_prepare, ("prepare",)), "surrogate": (check_surrogate, ("prepare", "surrogate")),
          "distill": (check_distill, ("distill",)), "evaluate": (check_evaluate, ("prepare", "evaluate")),
          "finetune": (check_finetune, ("prepare", "pretrain", "distill", "finetune"))}
_EXTERNAL = {"prepare": sources.prepare_inputs, "surrogate": sources.surrogate_inputs, "distill": sources.distill_inputs}


def external_inputs(stage: str, params: dict, project: Path) -> dict[str, Path]:
    """{name: local path} of the data outside the pipeline that the stage reads with these params."""
    found = _EXTERNAL.get(stage)
    return found(params, Path(project)) if found else {}


def ran_with(project: Path, spec: StageSpec, params: dict) -> bool:
    """True when dvc.lock shows the stage completed with these params and it reads no external data
    (built-in data only change with the code)."""
    if external_inputs(spec.name, params, project):
        return False
    entry = read_lock(project).get("stages", {}).get(spec.name, {})
    return bool(entry) and entry.get("params") == spec.declared(params)


def check_data(project: Path, stages: list[StageSpec], params: dict[str, dict]) -> None:
    """Runs the checks of `stages` against their data (see CHECKS)."""
    check = DataCheck(project, stages, params)
    for spec in stages:
        found = CHECKS.get(spec.name)
        if found and not check.ran_before(*found[1]):
            found[0](check)
