import re
from pathlib import Path

import pytest

from project import config, paramfiles, sources
from project.schema import ParamsError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params():
    return paramfiles.load_all_params(REPO)


def test_shipped_params_are_valid(params):
    assert set(params) == set(config.STAGES)


@pytest.mark.parametrize(
    "override, message",
    [
        ("prune.ratio=1.0", "ratio=1.0 is out of range; allowed [0.0, 1.0)"),
        ("prune.ratio=-0.1", "out of range"),
        ("prune.ratio=abc", "expected a number"),
        ("prune.method=magic", "expected one of lm, lm_bottom, lm_soft, lm_balanced, random, fm, random_samples"),
        ("prune.colour=red", "unknown key colour; allowed keys: method, ratio, seed, groups, num_clusters, scores"),
        ("prepare.target.shots_per_class=0", "target.shots_per_class=0 is out of range"),
        ("prepare.target.shots_per_class=2.5", "expected an integer"),
        ("surrogate.model.depths=[1]", "model.hidden_sizes has 3 entries but model.depths has 1"),
        ("surrogate.epochs=true", "expected an integer"),
        ("nosuchstage.x=1", "unknown stage 'nosuchstage'"),
        ("prune=1", "expected STAGE.KEY=VALUE"),
        ("prune.ratio", "expected STAGE.KEY=VALUE"),
        ("prepare.nosection.x=1", "has no section 'nosection'"),
    ],
)
def test_bad_overrides_name_the_key_and_rule(params, override, message):
    with pytest.raises(config.ParamsError, match=None) as info:
        paramfiles.apply_overrides(params, [override])
    assert message in str(info.value)


def test_override_sets_value_and_reports_stage(params):
    updated, touched = paramfiles.apply_overrides(params, ["prune.ratio=0.5", "distill.model.depths=[2]"])
    assert updated["prune"]["ratio"] == 0.5
    assert updated["distill"]["model"]["depths"] == [2]
    assert touched == {"prune", "distill"}
    assert params["prune"]["ratio"] != 0.5 or params is not updated  # the input is not modified


def test_int_accepted_where_float_expected(params):
    updated, _ = paramfiles.apply_overrides(params, ["prune.ratio=0"])
    assert updated["prune"]["ratio"] == 0.0 and isinstance(updated["prune"]["ratio"], float)


def test_missing_and_unknown_keys_in_file(tmp_path):
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "prune.yaml").write_text("method: lm\nratio: 0.5\n")
    with pytest.raises(config.ParamsError, match=r"params/prune.yaml: missing key seed"):
        paramfiles.load_stage_params(tmp_path, "prune")
    (tmp_path / "params" / "prune.yaml").write_text("method: lm\nratio: 0.5\nseed: 0\nextra: 1\n")
    with pytest.raises(config.ParamsError, match=r"params/prune.yaml: unknown key extra"):
        paramfiles.load_stage_params(tmp_path, "prune")


def test_unreadable_files(tmp_path):
    with pytest.raises(config.ParamsError, match="parameter file not found"):
        paramfiles.load_stage_params(tmp_path, "prune")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "prune.yaml").write_text("method: [lm\n")
    with pytest.raises(config.ParamsError, match="not valid YAML"):
        paramfiles.load_stage_params(tmp_path, "prune")
    (tmp_path / "params" / "prune.yaml").write_text("- a list\n")
    with pytest.raises(config.ParamsError, match="must be a mapping"):
        paramfiles.load_stage_params(tmp_path, "prune")


SWEEP = {"methods": ["lm", "random"], "ratios": [0.5, 0.8], "seeds": [0, 1], "full_source": True,
         "set": {"pretrain": {"epochs": 2, "model": {"embedding_size": 8}}},
         "cluster": {"address": None, "n_workers": 2, "threads_per_worker": 1}}


def write_sweep(tmp_path, **changes):
    import yaml

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}))
    return path


def test_shipped_sweep_file_is_valid(params):
    sweep = paramfiles.load_sweep(paramfiles.params_path(REPO, "sweep"), methods=config.SCHEMA["prune"]["method"].choices,
                              base=params)
    assert sweep["methods"] and sweep["params"]["pretrain"] == params["pretrain"]


def test_sweep_overrides_apply_to_every_point_and_leave_the_rest(tmp_path, params):
    sweep = paramfiles.load_sweep(write_sweep(tmp_path), methods=("lm", "random"), base=params)
    assert sweep["params"]["pretrain"]["epochs"] == 2
    assert sweep["params"]["pretrain"]["model"]["embedding_size"] == 8
    assert sweep["params"]["pretrain"]["model"]["hidden_sizes"] == params["pretrain"]["model"]["hidden_sizes"]
    assert sweep["params"]["distill"] == params["distill"]


@pytest.mark.parametrize("changes, message", [
    ({"methods": ["lm", "magic"]}, "unknown method 'magic'; allowed: lm, random"),
    ({"methods": []}, "methods=[]: expected a non-empty list of strings"),
    ({"ratios": [0.5, 1.0]}, "ratios=[0.5, 1.0] is out of range; allowed [0, 1) each"),
    ({"ratios": [0.0, 0.5]}, "0 is the full source"),
    ({"seeds": []}, "seeds=[]: expected a non-empty list of integers"),
    ({"seeds": [1, 1]}, "seeds lists a value twice"),
    ({"set": {"prune": {"ratio": 0.3}}}, "'prune' cannot be set here"),
    ({"set": {"pretrain": {"epochs": 0}}}, "epochs=0 is out of range"),
    ({"set": {"pretrain": {"colour": 1}}}, "unknown key colour"),
    ({"cluster": {"address": None, "n_workers": 0, "threads_per_worker": 1}}, "cluster.n_workers=0"),
    ({"grid": 1}, "unknown key grid"),
])
def test_bad_sweep_files_are_named(tmp_path, params, changes, message):
    with pytest.raises(config.ParamsError, match=None) as info:
        paramfiles.load_sweep(write_sweep(tmp_path, **changes), methods=("lm", "random"), base=params)
    assert message in str(info.value)


def test_method_choices_are_the_registries():
    from tlpipe.distillation import representation
    from tlpipe.distillation import krr_st
    from tlpipe import pruning
    from tlpipe import registry

    assert config.SCHEMA["prune"]["method"].choices == tuple(registry.PRUNING)
    assert pruning.CLASS_METHODS + pruning.SAMPLE_METHODS == tuple(registry.PRUNING)
    assert config.SCHEMA["distill"]["method"].choices == tuple(registry.DISTILLATION)
    assert representation.METHODS + registry.DATASET_DISTILLATION == tuple(registry.DISTILLATION)
    assert config.SCHEMA["distill"]["krr_st"]["init"].choices == krr_st.INITS
    assert config.TEACHER_SELECT["select"].choices == tuple(registry.TEACHER_SELECTION)
    assert config.SCHEMA["pretrain"]["mode"].choices == tuple(registry.SOURCE_MODES)
    assert set(config.SCHEMA["surrogate"]["mode"].choices) < set(registry.SOURCE_MODES)


@pytest.mark.parametrize("teachers, method, message", [
    ({"select": "osborn", "from": ["a", "a"], "size": 1}, "seed", "teachers.from lists a teacher twice"),
    ({"select": "best", "from": ["a", "b"], "size": 1}, "seed", "teachers.select='best': expected one of osborn, logme"),
    ({"select": "osborn", "from": ["a", "b"], "size": 3}, "seed", "teachers.size=3 must be between 1 and the 2"),
    ({"select": "osborn", "from": ["a", "b"]}, "seed", "missing key teachers.size"),
    ({"select": "osborn", "from": ["a", "b"], "size": 1, "k": 2}, "seed", "unknown key teachers.k"),
    (["pretrain", "b"], "krr_st", "method=krr_st distils the source with one teacher, but teachers gives 2"),
    ({"select": "logme", "from": ["a", "b"], "size": 2}, "krr_st", "teachers gives 2"),
    ("pretrain", "seed", "expected a non-empty list of strings or a mapping"),
])
def test_teachers_as_a_list_or_a_selection_are_checked(teachers, method, message):
    values = {**paramfiles.load_stage_params(REPO, "distill"), "teachers": teachers, "method": method}
    with pytest.raises(ParamsError, match=re.escape(message)):
        config.validate("distill", values, source="params/distill.yaml")


def test_a_selection_of_teachers_is_valid():
    values = {**paramfiles.load_stage_params(REPO, "distill"), "teachers": {"select": "osborn", "from": ["a", "b"], "size": 1}}
    checked = config.validate("distill", values, source="params/distill.yaml")
    assert sources.teacher_candidates(checked) == ["a", "b"]
    assert sources.teacher_candidates({"teachers": ["pretrain"]}) == ["pretrain"]


def test_checking_params_imports_no_torch():
    import subprocess
    import sys

    code = "import sys; from project import config; from tlpipe import registry; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_label_mapping_needs_a_supervised_surrogate(params):
    bad, _ = paramfiles.apply_overrides(params, ["surrogate.mode=simclr", "prune.method=lm_soft"])
    with pytest.raises(config.ParamsError, match="mode=simclr trains no classifier"):
        config.check_combination(bad)
    ok, _ = paramfiles.apply_overrides(params, ["surrogate.mode=simclr", "prune.method=fm"])
    config.check_combination(ok)


@pytest.mark.parametrize("also, message", [
    ("surrogate.mode=simclr", "is a classifier used as it is, but mode=simclr; set mode: supervised"),
    ("surrogate.nproc=2", "trains nothing; nproc and nnodes must be 1"),
])
def test_a_pretrained_surrogate_trains_nothing(params, also, message):
    with pytest.raises(ParamsError, match=message):
        paramfiles.apply_overrides(params, ["surrogate.pretrained=some/classifier", also])
    assert paramfiles.apply_overrides(params, ["surrogate.pretrained=some/classifier"])[0]["surrogate"]["pretrained"]
