import warnings

import matplotlib.colors as mcolors
import numpy as np
import pytest
from matplotlib.figure import Figure

from tlpipe.evaluation.plots import KEPT_COLOR, plot_class_votes, plot_confusion_matrix, plot_curves, plot_image_grid

# '$' alone and '$x$' would be mathtext without parse_math=False; '\\' and '_' and '^' too
GLYPHS = ["α", "Ж", "$", "$x$", "\\", "a_b^c", "%", "ß", "Ω", "#", "{", "ё"]


def _save(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    assert path.stat().st_size > 0
    return path


def test_confusion_matrix_figure(tmp_path):
    cm = np.arange(16).reshape(4, 4)
    fig = plot_confusion_matrix(cm, GLYPHS[:4])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # matrix + colour bar
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == GLYPHS[:4]
    assert len(ax.texts) == 16
    _save(fig, tmp_path, "cm")


def test_confusion_matrix_many_classes_drops_labels(tmp_path):
    cm = np.eye(120, dtype=np.int64)
    fig = plot_confusion_matrix(cm, [f"c{i}" for i in range(120)])
    assert len(fig.axes[0].texts) == 0
    _save(fig, tmp_path, "cm_big")


@pytest.mark.parametrize(("cm", "names", "match"), [(np.ones((2, 3)), ["a", "b"], "cm"), (np.ones((2, 2)), ["a"], "class_names")])
def test_confusion_matrix_errors(cm, names, match):
    with pytest.raises(ValueError, match=match):
        plot_confusion_matrix(cm, names)


def test_class_votes_few_classes(tmp_path):
    votes = np.array([3, 0, 7, 7, 1, 2, 0, 5, 4, 1, 0, 6])
    kept = [2, 3, 11]
    fig = plot_class_votes(votes, GLYPHS, kept)
    assert len(fig.axes) == 1
    bars = fig.axes[0].patches
    assert len(bars) == 12
    heights = [bar.get_height() for bar in bars]
    assert heights == sorted(heights, reverse=True)
    highlighted = [mcolors.same_color(bar.get_facecolor(), KEPT_COLOR) for bar in bars]
    assert sum(highlighted) == 3 and highlighted[:3] == [True, True, True]
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[:2] == [GLYPHS[2], GLYPHS[3]]  # equal votes: lower class id first
    assert not any(t.get_parse_math() for t in fig.axes[0].get_xticklabels())
    _save(fig, tmp_path, "votes")


def test_class_votes_many_classes_shows_top_40(tmp_path):
    votes = np.random.default_rng(0).integers(0, 50, size=1000)
    kept = np.argsort(-votes, kind="stable")[:30]
    fig = plot_class_votes(votes, [f"class-{i}" for i in range(1000)], kept)
    ax = fig.axes[0]
    assert len(ax.patches) == 40
    assert "top 40 shown" in ax.get_title() and "30 of 1000" in ax.get_title()
    _save(fig, tmp_path, "votes_big")


def test_class_votes_errors():
    with pytest.raises(ValueError, match="class_names"):
        plot_class_votes([1, 2], ["a"], [0])
    with pytest.raises(ValueError, match="max_bars"):
        plot_class_votes([1, 2], ["a", "b"], [0], max_bars=0)


def test_curves(tmp_path):
    history = {"train_loss": [2.0, 1.5, 1.1], "val_acc": [0.3, 0.5, 0.6], "lr $": [0.1, 0.1, 0.01]}
    fig = plot_curves(history, title="fine-tune $5 budget")
    assert len(fig.axes) == 3
    assert [len(ax.lines) for ax in fig.axes] == [1, 1, 1]
    np.testing.assert_array_equal(fig.axes[1].lines[0].get_xdata(), [1, 2, 3])
    _save(fig, tmp_path, "curves")


@pytest.mark.parametrize(("history", "match"), [({}, "history"), ({"loss": []}, "loss")])
def test_curves_errors(history, match):
    with pytest.raises(ValueError, match=match):
        plot_curves(history, title="t")


def test_unicode_and_dollar_names_render_without_mathtext_errors(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # also fails on missing-glyph warnings for these names
        fig = plot_confusion_matrix(np.eye(len(GLYPHS), dtype=int), GLYPHS)
        _save(fig, tmp_path, "glyphs_cm")
        fig = plot_class_votes(np.arange(len(GLYPHS)), GLYPHS, [0, 1])
        _save(fig, tmp_path, "glyphs_votes")


def test_probe_against_shots_draws_one_line_per_backbone_at_the_shots(tmp_path):
    from tlpipe.evaluation.plots import plot_probe_vs_shots

    transfer = {"teacher": {"1shot": {"mean": 0.6, "std": 0.1}, "10shot": {"mean": 0.9, "std": 0.0},
                            "3shot": {"mean": 0.8, "std": 0.05}},
                "student": {"1shot": {"mean": 0.5, "std": None}, "3shot": {"mean": 0.7, "std": 0.1},
                            "10shot": {"mean": 0.85, "std": 0.02}}}
    fig = plot_probe_vs_shots(transfer)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"teacher", "student"}
    assert list(lines["teacher"].get_xdata()) == [1, 3, 10]  # sorted by shots, not by key order
    assert list(lines["teacher"].get_ydata()) == [0.6, 0.8, 0.9]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3", "10"]
    fig.savefig(tmp_path / "probe.png")
    with pytest.raises(ValueError, match="at least one backbone"):
        plot_probe_vs_shots({})


def test_image_grid_places_each_image_and_maps_the_input_range(tmp_path):
    images = np.full((5, 1, 4, 4), -1.0)
    images[2] = 1.0  # white
    images[4] = 3.0  # outside [-1, 1]: clipped to white
    fig = plot_image_grid(images, title="$ 5 images")
    grid = fig.axes[0].get_images()[0].get_array()
    assert grid.shape == (2 * 5 - 1, 3 * 5 - 1)  # 2 rows x 3 columns of 4 px with 1 px gaps
    assert grid[0:4, 0:4].max() == 0 and grid[0:4, 10:14].min() == 1 and grid[5:9, 5:9].min() == 1
    assert fig.texts[0].get_text() == "$ 5 images"
    _save(fig, tmp_path, "grid")


def test_image_grid_caps_and_checks():
    fig = plot_image_grid(np.zeros((30, 3, 2, 2)), title="t", max_images=9)
    assert fig.axes[0].get_images()[0].get_array().shape == (8, 8, 3) and "first 9 of 30" in fig.texts[0].get_text()
    with pytest.raises(ValueError, match="1 or 3"):
        plot_image_grid(np.zeros((2, 2, 4, 4)), title="t")
