"""The one-page evaluation report: one list of sections, rendered as markdown and as standalone HTML.

A section is a title plus one of: bullet lines, a table (header + rows of cells) or a PNG figure.
Both renderings come from the same sections, so they never disagree.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Sequence

from tlpipe import registry


@dataclass(frozen=True)
class Section:
    """One block of the report; exactly one of `bullets`, `table` or `figure` is set."""

    title: str
    bullets: Sequence[str] = ()
    header: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    figure: str = ""  # file name of a PNG beside the report
    note: str = ""
    level: int = field(default=2)

    def __post_init__(self) -> None:
        kinds = [bool(self.bullets), bool(self.header), bool(self.figure)]
        if sum(kinds) != 1:
            raise ValueError(f"section {self.title!r}: give exactly one of bullets, header+rows or figure")
        if any(len(row) != len(self.header) for row in self.rows):
            raise ValueError(f"section {self.title!r}: every row needs {len(self.header)} cells")


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """GitHub-flavoured markdown; figures are linked by file name (they sit beside the report)."""
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"{'#' * s.level} {s.title}", ""]
        if s.note:
            lines += [s.note, ""]
        if s.bullets:
            lines += [f"- {b}" for b in s.bullets]
        elif s.header:
            lines += ["| " + " | ".join(s.header) + " |", "|" + "---|" * len(s.header)]
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in s.rows]
        else:
            lines.append(f"![{s.title}]({s.figure})")
        lines.append("")
    return "\n".join(lines)


def render_html(title: str, sections: Sequence[Section], figures: dict[str, bytes]) -> str:
    """A self-contained HTML page: figures embedded as base64 PNG, so the file travels alone.

    Args:
        title: the page title.
        sections: what to show, in order.
        figures: PNG bytes by the file names the sections refer to.

    Raises:
        ValueError: a section names a figure that `figures` lacks.
    """
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for s in sections:
        body.append(f"<h{s.level}>{esc(s.title)}</h{s.level}>")
        if s.note:
            body.append(f"<p>{esc(s.note)}</p>")
        if s.bullets:
            body.append("<ul>" + "".join(f"<li>{esc(b)}</li>" for b in s.bullets) + "</ul>")
        elif s.header:
            head = "".join(f"<th>{esc(h)}</th>" for h in s.header)
            rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in s.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            if s.figure not in figures:
                raise ValueError(f"section {s.title!r}: figure {s.figure!r} not given; have {sorted(figures)}")
            data = base64.b64encode(figures[s.figure]).decode("ascii")
            body.append(f'<img alt="{esc(s.title)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;"
             "text-align:right}th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def fmt(value, digits: int = 3) -> str:
    """A table cell: floats to `digits` decimals, None as an en dash, everything else as str."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def context_bullets(context: dict) -> list[str]:
    """What the report is about, in lines: the data, the choices that made the model, the runs.

    Args:
        context: {"source", "target": data set names; "prepare", "prune", "distill": those stages'
            metrics; "runs": where the computation is recorded (ids may be None)}.
    """
    prep, prune, distill, runs = (context.get(k) or {} for k in ("prepare", "prune", "distill", "runs"))
    lines = [f"target data: {context.get('target', '?')}: {prep.get('target_classes', '?')} classes, "
             f"{prep.get('target_train', '?')} labelled train, {prep.get('target_unlabeled', '?')} unlabelled, "
             f"{prep.get('target_test', '?')} test images",
             f"source data: {context.get('source', '?')}: {prep.get('source_classes', '?')} classes, "
             f"{prep.get('source_train', '?')} train images"]
    if prune:
        lines.append(f"source pruning: {prune.get('method', '?')} at ratio {prune.get('ratio', '?')}: kept "
                     f"{prune.get('kept_classes', '?')}/{prune.get('source_classes', '?')} classes, "
                     f"{prune.get('kept_fraction', 0):.1%} of the source images")
    if distill.get("method") in registry.DATASET_DISTILLATION:
        made = "a reused synthetic set" if distill.get("synthetic_reused") else \
            f"{distill.get('source_images', 0):,} pruned source images"
        lines.append(f"distillation: {distill['method']}: {distill.get('synthetic_size', '?')} synthetic images "
                     f"from {made}, learned by a student of {distill.get('parameters', 0):,} parameters")
    elif distill:
        lines.append(f"distillation: {distill.get('method', '?')} from {distill.get('teachers', '?')} teacher(s) into "
                     f"a student of {distill.get('parameters', 0):,} parameters")
    if distill.get("teachers_selected_by"):
        lines.append(f"teachers: {distill.get('teachers', '?')} chosen by {distill['teachers_selected_by']} among "
                     f"{distill.get('teacher_candidates', '?')} candidates (data/distill/selection.json)")
    commit = runs.get("git_commit") or "unknown"
    lines += [f"pipeline run (MLflow): {runs.get('pipeline_run') or 'none (stage run on its own, e.g. dvc repro)'}; "
              f"evaluate's run: {runs.get('stage_run') or 'not recorded'}",
              f"Prefect flow run: {runs.get('flow_run') or 'none'}",
              f"code: git commit {commit}" + (" with uncommitted changes" if runs.get("git_dirty") else ""),
              f"evaluated: {runs.get('date', '?')}; cache key {str(runs.get('cache_key', '?'))[:16]}"]
    return lines


def method_bullets(context: dict) -> list[str]:
    """One line per method this run used, with its paper (from the registries)."""
    prune, distill, finetune = (context.get(k) or {} for k in ("prune", "distill", "finetune"))
    lines = []
    if prune.get("method") in registry.PRUNING:
        lines.append(f"pruning {prune['method']}: {registry.PRUNING[prune['method']].summary}")
    if distill.get("method") in registry.DISTILLATION:
        lines.append(f"distillation {distill['method']}: {registry.DISTILLATION[distill['method']].summary}")
    if finetune.get("method") in registry.FINETUNING:
        lines.append(f"fine-tuning {finetune['method']}: {registry.FINETUNING[finetune['method']].summary}")
    if distill.get("teachers_selected_by") in registry.TEACHER_SELECTION:
        lines.append(f"teacher selection {distill['teachers_selected_by']}: "
                     f"{registry.TEACHER_SELECTION[distill['teachers_selected_by']]}")
    return lines


def evaluation_sections(result: dict, context: dict | None = None, curves: Sequence[tuple[str, str]] = (),
                        votes: str = "", probe_figure: str = "", synthetic: str = "") -> list[Section]:
    """The sections of the evaluation report, from the `evaluate` stage's result dict.

    Args:
        result: evaluate's metrics.
        context: see `context_bullets`; the report opens with it when given.
        curves: (stage, PNG file name) of the training curves to show.
        votes: PNG file name of prune's class votes ("" leaves it out).
        probe_figure: PNG file name of the probe accuracy against shots ("" leaves it out).
        synthetic: PNG file name of KRR-ST's synthetic images ("" leaves it out).
    """
    deployed = result["deployed_backbone"]
    summary = [f"deployed model: fine-tuned {deployed}; test accuracy {result['accuracy']:.4f}, "
               f"macro-F1 {result['macro_f1']:.4f} on {result['test_images']} test images",
               f"pretraining used {result['pretrain_source_fraction']:.1%} of the source images"]
    summary += [f"retention (student / teacher), {k.replace('_', ' ')}: {v:.1%}" for k, v in result["retention"].items()]
    shots = list(next(iter(result["transfer"].values())))
    sections = [Section("Context", bullets=context_bullets(context))] if context else []
    methods = method_bullets(context) if context else []
    sections += [Section("Methods", bullets=methods)] if methods else []
    sections += [
        Section("Summary", bullets=summary),
        Section("Fine-tuned on the target train split, scored on the test split", header=["backbone", "accuracy", "macro-F1"],
                rows=[[name, fmt(r["accuracy"], 4), fmt(r["macro_f1"], 4)] for name, r in result["finetuned"].items()]),
        Section("Few-shot linear probe (mean ± std over paired draws)", header=["backbone", *shots],
                rows=[[name, *(f"{s['mean']:.3f} ± {s['std']:.3f}" for s in by_shots.values())]
                      for name, by_shots in result["transfer"].items()]),
        *([Section("Probe accuracy against shots", figure=probe_figure,
                   note="Mean over the paired draws, the band one standard deviation.")] if probe_figure else []),
        _transferability_section(result["transferability"]),
        Section("Size and speed (this machine; ratios against the teacher)",
                header=["backbone", "parameters", "MACs", "latency, batch 1 (ms)", "throughput (img/s)",
                        "parameters ratio", "speed-up", "throughput ratio"],
                rows=[[name, f"{e['parameters']:,}", f"{e['macs']:,}", fmt(e["latency_ms"], 2), fmt(e["throughput_ips"], 0),
                       fmt(e["parameters_ratio"]), fmt(e["latency_speedup"], 2), fmt(e["throughput_ratio"], 2)]
                      for name, e in result["efficiency"].items()]),
        Section("Per-class accuracy of the deployed model", header=["class", "accuracy"],
                rows=[[name, fmt(acc)] for name, acc in result["per_class_accuracy"].items()]),
        Section("Confusion matrix of the deployed model", figure="confusion.png"),
        *([Section("Synthetic source images (KRR-ST)", figure=synthetic,
                   note="The images the student was pretrained on, each with a learned target representation; "
                        "they started as pruned source images.")] if synthetic else []),
        *([Section("Source classes: pruning votes", figure=votes,
                   note="Each source class's vote from the target; the kept classes are highlighted.")] if votes else []),
        *(Section(f"Training curves: {stage}", figure=name) for stage, name in curves),
        Section("Cost", header=["stage", "wall time (s)", "images seen"],
                rows=[[stage, fmt(c["wall_time_s"], 1), str(c["images_seen"])] for stage, c in result["cost"].items()],
                note="Wall time of each stage in the run that computed it (– where this run did not see it: "
                     "a stage computed by another process, e.g. dvc repro); evaluate's up to this report."),
    ]
    return sections


def _transferability_section(scores: dict[str, dict]) -> Section:
    columns = ["logme", "h_score", "tmi", "leep", "nce", "weight"]
    used = [c for c in columns if any(c in s for s in scores.values())]
    return Section("Transferability before fine-tuning (target train split)", header=["backbone", *used],
                   rows=[[name, *(fmt(s.get(c), 4) for c in used)] for name, s in scores.items()],
                   note="LogME (Bayesian evidence), H-score, TMI (intra-class feature entropy), LEEP and NCE "
                        "(these two need a source classifier). Higher is better for each.")
