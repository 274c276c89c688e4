from pathlib import Path

import pytest

from tlpipe import config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params():
    return config.load_all_params(REPO)


def test_shipped_params_are_valid(params):
    assert set(params) == set(config.STAGES)


@pytest.mark.parametrize(
    "override, message",
    [
        ("prune.ratio=1.0", "ratio=1.0 is out of range; allowed [0.0, 1.0)"),
        ("prune.ratio=-0.1", "out of range"),
        ("prune.ratio=abc", "expected a number"),
        ("prune.method=magic", "expected one of lm, random"),
        ("prune.colour=red", "unknown key colour; allowed keys: method, ratio, seed"),
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
        config.apply_overrides(params, [override])
    assert message in str(info.value)


def test_override_sets_value_and_reports_stage(params):
    updated, touched = config.apply_overrides(params, ["prune.ratio=0.5", "distill.model.depths=[1, 1, 2]"])
    assert updated["prune"]["ratio"] == 0.5
    assert updated["distill"]["model"]["depths"] == [1, 1, 2]
    assert touched == {"prune", "distill"}
    assert params["prune"]["ratio"] != 0.5 or params is not updated  # the input is not modified


def test_int_accepted_where_float_expected(params):
    updated, _ = config.apply_overrides(params, ["prune.ratio=0"])
    assert updated["prune"]["ratio"] == 0.0 and isinstance(updated["prune"]["ratio"], float)


def test_missing_and_unknown_keys_in_file(tmp_path):
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "prune.yaml").write_text("method: lm\nratio: 0.5\n")
    with pytest.raises(config.ParamsError, match=r"params/prune.yaml: missing key seed"):
        config.load_stage_params(tmp_path, "prune")
    (tmp_path / "params" / "prune.yaml").write_text("method: lm\nratio: 0.5\nseed: 0\nextra: 1\n")
    with pytest.raises(config.ParamsError, match=r"params/prune.yaml: unknown key extra"):
        config.load_stage_params(tmp_path, "prune")


def test_unreadable_files(tmp_path):
    with pytest.raises(config.ParamsError, match="parameter file not found"):
        config.load_stage_params(tmp_path, "prune")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "prune.yaml").write_text("method: [lm\n")
    with pytest.raises(config.ParamsError, match="not valid YAML"):
        config.load_stage_params(tmp_path, "prune")
    (tmp_path / "params" / "prune.yaml").write_text("- a list\n")
    with pytest.raises(config.ParamsError, match="must be a mapping"):
        config.load_stage_params(tmp_path, "prune")
