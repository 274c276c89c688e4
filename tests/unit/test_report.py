import base64

import pytest

from project import report
from project.report import Section, evaluation_sections, fmt, render_html, render_markdown

PNG = b"\x89PNG\r\n\x1a\nfake"


def sections():
    return [Section("Summary", bullets=["accuracy 0.95", "a < b & c"]),
            Section("Scores", header=["backbone", "acc"], rows=[["teacher", "0.9"], ["student", "0.8"]], note="why"),
            Section("Confusion", figure="confusion.png")]


def test_markdown_has_every_section_in_order():
    text = render_markdown("Report", sections())
    assert text.startswith("# Report\n")
    assert text.index("## Summary") < text.index("## Scores") < text.index("## Confusion")
    assert "- a < b & c" in text and "| teacher | 0.9 |" in text and "|---|---|" in text
    assert "![Confusion](confusion.png)" in text and "why" in text


def test_html_is_standalone_and_escaped():
    page = render_html("Report", sections(), {"confusion.png": PNG})
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "a &lt; b &amp; c" in page  # cell text never becomes markup
    assert base64.b64encode(PNG).decode() in page  # the figure travels inside the file
    assert page.count("<tr>") == 3  # header + two rows


def test_html_needs_every_figure():
    with pytest.raises(ValueError, match="confusion.png"):
        render_html("Report", sections(), {})


@pytest.mark.parametrize("kwargs", [{}, {"bullets": ["x"], "figure": "a.png"}])
def test_a_section_has_exactly_one_body(kwargs):
    with pytest.raises(ValueError, match="exactly one"):
        Section("Bad", **kwargs)


def test_rows_must_match_the_header():
    with pytest.raises(ValueError, match="2 cells"):
        Section("Bad", header=["a", "b"], rows=[["1"]])


def test_fmt():
    assert fmt(None) == "–" and fmt(0.12345) == "0.123" and fmt(0.5, 1) == "0.5" and fmt(3) == "3"


def test_evaluation_sections_from_a_result():
    summary = {"mean": 0.5, "std": 0.1}
    profile = {"parameters": 1000, "macs": 20000, "latency_ms": 1.5, "throughput_ips": 900.0,
               "parameters_ratio": 1.0, "latency_speedup": 1.0, "throughput_ratio": 1.0}
    result = {
        "accuracy": 0.9, "macro_f1": 0.88, "deployed_backbone": "student", "test_images": 10,
        "pretrain_source_fraction": 0.2, "retention": {"probe_1shot": 0.97, "finetuned": 0.99},
        "finetuned": {"student": {"accuracy": 0.9, "macro_f1": 0.88}, "teacher": {"accuracy": 0.91, "macro_f1": 0.9}},
        "transfer": {"teacher": {"1shot": summary}, "student": {"1shot": summary}},
        "transferability": {"teacher": {"logme": -0.1, "h_score": 2.0, "tmi": 3.0, "leep": -1.0, "nce": -0.5},
                            "student": {"logme": -0.2, "h_score": 1.0, "tmi": 2.5}},
        "efficiency": {"teacher": profile, "student": {**profile, "parameters": 250, "parameters_ratio": 0.25}},
        "per_class_accuracy": {"0": 1.0, "1": None},
        "cost": {"pretrain": {"wall_time_s": 3.0, "images_seen": 100}},
    }
    text = render_markdown("t", evaluation_sections(result))
    assert "retention (student / teacher), probe 1shot: 97.0%" in text
    assert "| backbone | logme | h_score | tmi | leep | nce |" in text
    assert "| student | -0.2000 | 1.0000 | 2.5000 | – | – |" in text  # LEEP/NCE need a source classifier
    assert "| student | 250 | 20,000 |" in text and "| 1 | – |" in text


CONTEXT = {
    "source": "glyphs", "target": "digits",
    "prepare": {"target_classes": 10, "target_train": 30, "target_unlabeled": 200, "target_test": 90,
                "source_classes": 94, "source_train": 1000},
    "prune": {"method": "lm", "ratio": 0.8, "kept_classes": 19, "source_classes": 94, "kept_fraction": 0.2021},
    "distill": {"method": "seed", "teachers": 1, "parameters": 42776},
    "runs": {"pipeline_run": "p" * 32, "stage_run": "s" * 32, "flow_run": "f-1", "git_commit": "c" * 40,
             "git_dirty": True, "cache_key": "k" * 64, "date": "2026-12-04 10:00 UTC"},
}


def test_the_context_names_data_choices_and_runs():
    lines = "\n".join(report.context_bullets(CONTEXT))
    for fact in ("target data: digits: 10 classes, 30 labelled train, 200 unlabelled, 90 test images",
                 "source data: glyphs: 94 classes, 1000 train images",
                 "source pruning: lm at ratio 0.8: kept 19/94 classes, 20.2% of the source images",
                 "distillation: seed from 1 teacher(s) into a student of 42,776 parameters",
                 f"pipeline run (MLflow): {'p' * 32}", "Prefect flow run: f-1",
                 f"git commit {'c' * 40} with uncommitted changes", "2026-12-04 10:00 UTC", "k" * 16):
        assert fact in lines, fact
    alone = "\n".join(report.context_bullets({**CONTEXT, "runs": {"stage_run": "s" * 32}}))
    assert "none (stage run on its own, e.g. dvc repro)" in alone and "git commit unknown" in alone


def test_krr_st_and_a_teacher_selection_are_named_with_their_methods():
    distill = {"method": "krr_st", "teachers": 1, "parameters": 42776, "synthetic_size": 100, "source_images": 3420,
               "synthetic_reused": False, "teachers_selected_by": "osborn", "teacher_candidates": 5}
    lines = "\n".join(report.context_bullets({**CONTEXT, "distill": distill}))
    assert "distillation: krr_st: 100 synthetic images from 3,420 pruned source images, learned by a student of " \
           "42,776 parameters" in lines
    assert "teachers: 1 chosen by osborn among 5 candidates" in lines
    reused = "\n".join(report.context_bullets({**CONTEXT, "distill": {**distill, "synthetic_reused": True}}))
    assert "100 synthetic images from a reused synthetic set" in reused
    methods = "\n".join(report.method_bullets({**CONTEXT, "distill": distill}))
    for fact in ("pruning lm: label mapping (DP4TL)", "distillation krr_st: KRR-ST (Lee et al., ICLR 2024)",
                 "teacher selection osborn: OSBORN (ICCV 2023)"):
        assert fact in methods, fact
    assert report.method_bullets({"prune": {}, "distill": {}}) == []


def test_evaluation_sections_open_with_the_context_and_show_every_figure():
    summary = {"mean": 0.5, "std": 0.1}
    profile = {"parameters": 1000, "macs": 20000, "latency_ms": 1.5, "throughput_ips": 900.0,
               "parameters_ratio": 1.0, "latency_speedup": 1.0, "throughput_ratio": 1.0}
    result = {"accuracy": 0.9, "macro_f1": 0.88, "deployed_backbone": "student", "test_images": 10,
              "pretrain_source_fraction": 0.2, "retention": {}, "finetuned": {}, "per_class_accuracy": {},
              "transfer": {"teacher": {"1shot": summary}}, "transferability": {"teacher": {"logme": 0.1}},
              "efficiency": {"teacher": profile},
              "cost": {s: {"wall_time_s": 1.0, "images_seen": 1} for s in ("prepare", "evaluate", "end_to_end")}}
    sections = evaluation_sections(result, context=CONTEXT, curves=[("pretrain", "curves_pretrain.png")],
                                   votes="votes.png", probe_figure="probe_shots.png", synthetic="synthetic.png")
    titles = [s.title for s in sections]
    assert titles[:3] == ["Context", "Methods", "Summary"] and titles[-1] == "Cost"
    figures = [s.figure for s in sections if s.figure]
    assert figures == ["probe_shots.png", "confusion.png", "synthetic.png", "votes.png", "curves_pretrain.png"]
    assert [row[0] for row in sections[-1].rows] == ["prepare", "evaluate", "end_to_end"]
    assert "Context" not in [s.title for s in evaluation_sections(result)]  # without a context, none is made up
