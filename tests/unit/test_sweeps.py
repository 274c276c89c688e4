import numpy as np
import pandas as pd
import pytest

from tlpipe.evaluation import plots
from project import sweeps


def table() -> pd.DataFrame:
    rows = []
    for seed, full_acc in [(0, 0.80), (1, 0.70), (2, 0.75)]:
        rows.append({"method": "full", "ratio": 0.0, "seed": seed, "acc": full_acc, "time": 10.0})
        for ratio in (0.5, 0.8):
            rows.append({"method": "lm", "ratio": ratio, "seed": seed, "acc": full_acc - 0.01 * ratio * 10,
                         "time": 10.0 * (1 - ratio) * 1.1})
            rows.append({"method": "random", "ratio": ratio, "seed": seed, "acc": full_acc - 0.1 - seed * 0.01,
                         "time": 10.0 * (1 - ratio)})
    return pd.DataFrame(rows)


def test_grid_crosses_every_value_and_adds_full_source_per_seed():
    points = sweeps.grid(["lm", "random"], [0.5, 0.9], [0, 1, 2], full_source=True)
    assert len(points) == 2 * 2 * 3 + 3
    assert points[0] == {"method": "lm", "ratio": 0.5, "seed": 0}
    assert [p for p in points if p["method"] == sweeps.FULL] == [
        {"method": "full", "ratio": 0.0, "seed": s} for s in (0, 1, 2)]
    assert len(sweeps.grid(["lm"], [0.5], [0], full_source=False)) == 1


@pytest.mark.parametrize("methods, ratios, seeds", [([], [0.5], [0]), (["lm"], [], [0]), (["lm"], [0.5], []),
                                                    (["lm"], [1.0], [0]), (["lm"], [0.0], [0])])
def test_grid_rejects_empty_or_out_of_range(methods, ratios, seeds):
    with pytest.raises(ValueError):
        sweeps.grid(methods, ratios, seeds, full_source=True)


def test_summarise_mean_std_count():
    summary = sweeps.summarise(table(), "acc").set_index(["method", "ratio"])
    assert summary.loc[("full", 0.0), "mean"] == pytest.approx(0.75)
    assert summary.loc[("full", 0.0), "std"] == pytest.approx(np.std([0.8, 0.7, 0.75], ddof=1))
    assert summary.loc[("lm", 0.5), "n"] == 3


def test_paired_differences_against_a_method_and_against_full():
    t = table()
    vs_random = sweeps.paired_differences(t, "acc", method="lm", baseline="random").set_index("ratio")
    # lm - random at seed s = (full_s - 0.1 r*... ) - (full_s - 0.1 - 0.01 s): pairing removes the seed effect
    expected = [(-0.01 * 0.5 * 10) + 0.1 + 0.01 * s for s in range(3)]
    assert vs_random.loc[0.5, "mean"] == pytest.approx(np.mean(expected))
    assert vs_random.loc[0.5, "std"] == pytest.approx(np.std(expected, ddof=1))
    assert vs_random.loc[0.5, "pairs"] == 3
    vs_full = sweeps.paired_differences(t, "acc", method="lm", baseline="full").set_index("ratio")
    assert vs_full.loc[0.8, "mean"] == pytest.approx(-0.08)
    assert vs_full.loc[0.8, "std"] == pytest.approx(0.0, abs=1e-12)  # the same drop at every seed


def test_cost_ratios_against_ideal():
    costs = sweeps.cost_ratios(table(), "time").set_index(["method", "ratio"])
    assert costs.loc[("random", 0.8), "relative"] == pytest.approx(0.2)
    assert costs.loc[("random", 0.8), "off_ideal"] == pytest.approx(0.0, abs=1e-12)
    assert costs.loc[("lm", 0.5), "off_ideal"] == pytest.approx(0.1)


def test_sweep_plots_draw_one_line_per_method():
    t = table()
    summary = sweeps.summarise(t[t.method != "full"], "acc")
    fig = plots.plot_metric_vs_ratio(summary, ylabel="1-shot accuracy", full=(0.75, 0.05))
    assert {text.get_text() for text in fig.axes[0].get_legend().get_texts()} == {"lm", "random", "full source"}
    fig = plots.plot_cost_vs_ratio(sweeps.cost_ratios(t, "time"))
    assert len(fig.axes[0].lines) == 3  # ideal + two methods


def test_every_method_line_looks_different_even_past_ten_methods():
    import pandas as pd

    methods = [f"m{i:02d}" for i in range(12)]
    summary = pd.DataFrame([{"method": m, "ratio": r, "mean": 0.5, "std": 0.01} for m in methods for r in (0.5, 0.8)])
    ax = plots.plot_metric_vs_ratio(summary, ylabel="acc").axes[0]
    lines = [bars.lines[0] for bars in ax.containers if bars.get_label() in methods]  # errorbar: data line first
    looks = {(line.get_color(), line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(looks) == len(methods)


def test_probe_columns_in_shot_order():
    assert sweeps.probe_columns(["seed", "probe_10shot", "probe_1shot", "probe_3shot", "probe_1shot_std"]) == [
        "probe_1shot", "probe_3shot", "probe_10shot"]


def test_rank_correlations_against_measured_accuracy():
    table = pd.DataFrame({"logme": [0.1, 0.2, 0.3, 0.4], "h_score": [4.0, 3.0, 2.0, 1.0], "leep": [1.0] * 4,
                          "tmi": [2.0, 1.0, 4.0, 3.0],
                          "finetune_accuracy": [0.5, 0.6, 0.7, 0.8], "probe_1shot": [0.3, 0.2, 0.5, 0.4]})
    found = sweeps.rank_correlations(table).set_index(["score", "target"])
    assert found.loc[("logme", "finetune_accuracy"), "tau"] == pytest.approx(1.0)
    assert found.loc[("h_score", "finetune_accuracy"), "tau"] == pytest.approx(-1.0)
    assert found.loc[("tmi", "finetune_accuracy"), "tau"] == pytest.approx(1 / 3)
    assert found.loc[("logme", "probe_1shot"), "tau"] == pytest.approx(1 / 3)
    assert np.isnan(found.loc[("leep", "finetune_accuracy"), "tau"])  # a constant score ranks nothing
    assert "nce" not in found.index.get_level_values(0)  # absent columns are skipped
    assert set(found["points"]) == {4}


def test_rank_correlations_skip_missing_values():
    table = pd.DataFrame({"logme": [0.1, np.nan, 0.3], "finetune_accuracy": [0.5, 0.6, 0.7]})
    found = sweeps.rank_correlations(table)
    assert found.iloc[0]["points"] == 2 and found.iloc[0]["tau"] == pytest.approx(1.0)


def test_submission_order_starts_with_the_largest_pretrainings():
    points = sweeps.grid(["lm", "random"], [0.9, 0.5], [0, 1], full_source=True)
    order = sweeps.submission_order(points)
    assert sorted(order) == list(range(len(points)))  # every point once
    ratios = [points[i]["ratio"] for i in order]
    assert ratios == sorted(ratios) and ratios[:2] == [0.0, 0.0]  # the full source first


def test_upgrade_timing_moves_old_stage_wall_time_out_of_the_training_time_column():
    old = pd.DataFrame({"method": ["full", "lm"], "ratio": [0.0, 0.8], "seed": [0, 0], "pretrain_time_s": [100.0, 25.0]})
    upgraded = sweeps.upgrade_timing(old)
    assert upgraded["pretrain_wall_s"].tolist() == [100.0, 25.0]
    assert upgraded["pretrain_time_s"].isna().all()
    current = upgraded.assign(pretrain_time_s=[90.0, 20.0])
    pd.testing.assert_frame_equal(sweeps.upgrade_timing(current), current)  # already current: untouched


@pytest.mark.parametrize("full_train_times, expected", [
    ([90.0, 80.0], "pretrain_time_s"),
    ([90.0, np.nan], "pretrain_wall_s"),  # one full-source row from an older table: compare wall times
    ([], "pretrain_wall_s"),  # no full source at all
])
def test_seconds_column_divides_like_by_like(full_train_times, expected):
    n = len(full_train_times)
    table = pd.DataFrame({"method": ["full"] * n + ["lm"], "ratio": [0.0] * n + [0.8], "seed": list(range(n)) + [0],
                          "pretrain_time_s": full_train_times + [20.0], "pretrain_wall_s": [100.0] * n + [25.0]})
    assert sweeps.seconds_column(table) == expected
