"""dvc.yaml, the stage modules and the params schema must describe the same pipeline."""

from pathlib import Path

import pytest

from runner import keys
from runner.snapshot import check_declaration
from runner.spec import load_pipeline, select_stages, stage_folders
from project import config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stages():
    return load_pipeline(REPO)


def test_stage_order_follows_the_data(stages):
    assert [s.name for s in stages] == list(config.STAGES)


@pytest.mark.parametrize("name", config.STAGES)
def test_outputs_and_params_match_the_code(stages, name):
    spec = next(s for s in stages if s.name == name)
    check_declaration(spec)  # raises on any disagreement


@pytest.mark.parametrize("name", config.STAGES)
def test_code_deps_are_exactly_what_the_stage_imports(stages, name):
    spec = next(s for s in stages if s.name == name)
    closure = {p.relative_to(REPO).as_posix() for p in keys.code_closure(spec.module).values()}
    declared = {d for d in spec.deps if d.endswith(".py")}
    assert declared == closure, f"dvc.yaml {name}.deps should list exactly {sorted(closure)} (python -m runner.keys --write)"


def test_select_stages_takes_only_what_until_needs(stages):
    assert [s.name for s in select_stages(stages, "prune")] == ["prepare", "surrogate", "prune"]
    assert len(select_stages(stages, None)) == len(stage_folders(REPO))
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        select_stages(stages, "nope")


def test_main_guard_imports_stay_out_of_the_code_hash():
    closure = {p.relative_to(REPO).as_posix() for p in keys.code_closure("tasks.prune").values()}
    assert not any(path.startswith("runner/") for path in closure)  # `python -m tasks.prune` ends in runner.command
    assert {"tasks/prune.py", "src/tlpipe/pruning/label_mapping.py", "src/tlpipe/pruning/feature_mapping.py"} <= closure


def test_plain_yaml_reading_agrees_with_dvc(stages):
    import os

    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        theirs = {s.name: s for s in repo.index.stages}
    assert set(theirs) == {s.name for s in stages}
    for spec in stages:
        stage = theirs[spec.name]
        rel = lambda p: os.path.relpath(p, REPO)  # noqa: E731
        assert stage.cmd == spec.cmd
        assert {rel(d.fs_path) for d in stage.deps if not hasattr(d, "params")} == set(spec.deps)
        assert {rel(o.fs_path) for o in stage.outs} == {*spec.outs, spec.record}
        params = {rel(d.fs_path): tuple(d.params) for d in stage.deps if hasattr(d, "params")}
        assert params == spec.params


def test_a_stage_that_does_not_declare_its_record_is_refused(stages):
    import dataclasses

    with pytest.raises(config.ParamsError, match="must declare its record data/records/prepare.json"):
        check_declaration(dataclasses.replace(stages[0], record=None))
