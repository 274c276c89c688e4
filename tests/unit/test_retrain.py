"""What a retraining run says: the data that changed, the stages that ran, the model's fate."""

import pytest

from flows.retrain import changed_data, summarise


def test_changed_data_lists_added_removed_and_changed_paths():
    before = {"data/raw/a": "1.dir", "data/raw/b": "2.dir", "data/raw/c": "3"}
    now = {"data/raw/a": "1.dir", "data/raw/b": "9.dir", "data/raw/d": "4"}
    assert changed_data(before, now) == {"data/raw/b": ["2.dir", "9.dir"], "data/raw/c": ["3", None],
                                         "data/raw/d": [None, "4"]}
    assert changed_data(now, now) == {}
    assert changed_data(None, {"x": "1"}) == {"x": [None, "1"]}


def result(statuses: dict, registered: dict | None = None) -> dict:
    return {"stages": [{"stage": s, "status": st} for s, st in statuses.items()], "registered": registered}


def test_summary_of_a_run_with_nothing_new():
    text = summarise({}, {"pipeline_run": "abc"}, result({"prepare": "cached", "evaluate": "restored"},
                                                        {"model": "m", "version": "3", "new_version": False}))
    assert text == ("no tracked data changed since run abc. nothing to retrain: all 2 stages were cache hits. "
                    "The model is unchanged (m version 3).")


@pytest.mark.parametrize("alias", ["champion", "challenger"])
def test_summary_of_a_run_on_new_data_names_the_data_the_stages_and_the_alias(alias):
    registered = {"model": "m", "version": "4", "new_version": True, "alias": alias, "reason": "because"}
    text = summarise({"data/raw/t": ["aaaa.dir", "bbbb.dir"]}, {"pipeline_run": "abc"},
                     result({"prepare": "ran", "surrogate": "cached", "prune": "ran"}, registered))
    assert text.startswith("data changed since run abc: data/raw/t aaaa.dir -> bbbb.dir. ")
    assert "re-ran prepare, prune; cache hits: surrogate." in text
    assert text.endswith(f"Registered m version 4 as {alias}: because.")


def test_summary_of_the_first_run():
    assert summarise({"x": [None, "1"]}, None, result({"prepare": "ran"})).startswith("first recorded run. re-ran prepare.")
