"""What a person sees after `tlpipe run` in the tools they open: the Prefect UI's API (a real `prefect
server` on the database the run's temporary server wrote), the MLflow store, `dvc plots show`,
`dvc metrics show`, the report, and the CLI's own output into a pipe."""

from __future__ import annotations

import getpass
import html.parser
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner import tracking
from runner.spec import load_pipeline, producers, upstream_of
from tests.integration.conftest import git, make_project
from tests.integration.servers import BIN, prefect_server, tool_env
from project import config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tlpipe(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tlpipe"), *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=900)


def ids_of(stdout: str) -> tuple[str, str]:
    """(MLflow parent run id, Prefect flow-run id) from the run's closing lines."""
    found = re.search(r"MLflow run: (\w+)\s+Prefect flow run: ([\w-]+)", stdout)
    assert found, stdout
    return found[1], found[2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny project run twice by the CLI (computed, then reused), as a person runs it: default
    settings, so a temporary Prefect server per command, writing to the database in `state`."""
    root = tmp_path_factory.mktemp("people")
    project, state = make_project(root / "proj"), root / "prefect"
    state.mkdir()
    env = tool_env(PREFECT_HOME=str(state / "home"),
                   PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{state / 'prefect.db'}")
    first = tlpipe(project, env, "run")
    assert first.returncode == 0, first.stderr[-3000:]
    second = tlpipe(project, env, "run")
    assert second.returncode == 0, second.stderr[-3000:]
    return {"project": project, "state": state, "env": env, "first": first, "second": second,
            "ids": [ids_of(first.stdout), ids_of(second.stdout)]}


@pytest.fixture(scope="module")
def mlflow(runs):
    return MlflowClient(f"sqlite:///{runs['project'] / 'mlflow.db'}")


def children(mlflow: MlflowClient, parent: str) -> dict:
    found = mlflow.search_runs([mlflow.get_run(parent).info.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    return {r.data.tags[tracking.TAG_STAGE]: r for r in found}


def api_json(url: str, body: dict | None = None):
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_the_prefect_ui_shows_every_task_run_with_the_stage_graph(runs):
    specs = load_pipeline(runs["project"])
    made_by = producers(specs)
    expected = {s.name: {u for u in upstream_of(s, made_by)} for s in specs}
    with prefect_server(runs["state"], services=False) as api:  # the database the temporary servers wrote
        for (_, flow_run), state in zip(runs["ids"], ("Completed", "Cached")):
            flow = api_json(f"{api}/flow_runs/{flow_run}")
            assert flow["name"] == f"proj: digits from glyphs [{flow['name'][-9:-1]}]"
            assert {"project:proj", "target:digits", "source:glyphs", "kind:pipeline"} <= set(flow["tags"])
            assert any(t.startswith("params:") for t in flow["tags"]) and any(t.startswith("key:") for t in flow["tags"])
            tasks = api_json(f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run]}}})
            by_id = {t["id"]: t["name"] for t in tasks}
            assert sorted(by_id.values()) == sorted(config.STAGES)
            for task in tasks:
                assert task["state"]["name"] == state, task["name"]
                upstream = {by_id[i["id"]] for i in task["task_inputs"].get("wait_for", [])}
                assert upstream == expected[task["name"]], task["name"]  # the edges the run graph draws
            graph = api_json(f"{api}/flow_runs/{flow_run}/graph-v2")
            labels = {node_id: node["label"] for node_id, node in graph["nodes"]}
            drawn = {node["label"]: {labels[p["id"]] for p in node["parents"]} for _, node in graph["nodes"]}
            assert drawn == expected


def test_mlflow_runs_show_their_user_source_and_plain_commit(runs, mlflow):
    project = runs["project"]
    head = git(project, "rev-parse", "HEAD").strip()
    for parent, flow_run in runs["ids"]:
        for run in [mlflow.get_run(parent), *children(mlflow, parent).values()]:
            tags = run.data.tags
            assert tags[tracking.TAG_USER] == getpass.getuser()
            assert tags[tracking.TAG_SOURCE] == "tlpipe run" and tags[tracking.TAG_SOURCE_TYPE] == "LOCAL"
            assert tags[tracking.TAG_GIT] == head  # a commit id, nothing appended
            assert tags[tracking.TAG_DIRTY] == "false"  # the project's tracked files are as committed
        assert flow_run in mlflow.get_run(parent).data.tags[tracking.TAG_NOTE]
    experiment = mlflow.get_experiment(mlflow.get_run(runs["ids"][0][0]).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training view


def test_a_reused_stage_run_links_the_run_that_computed_it(runs, mlflow):
    computed, reused = (children(mlflow, parent) for parent, _ in runs["ids"])
    for stage in config.STAGES:
        producer, run = computed[stage], reused[stage]
        assert run.data.tags[tracking.TAG_CACHED] == "true"
        assert run.data.tags[tracking.TAG_PRODUCED_BY] == producer.info.run_id
        link = f"(#/experiments/{producer.info.experiment_id}/runs/{producer.info.run_id})"
        assert link in run.data.tags[tracking.TAG_NOTE]  # markdown the UI renders as a link
        assert ({d.dataset.digest for d in run.inputs.dataset_inputs}
                == {d.dataset.digest for d in producer.inputs.dataset_inputs})
        def files(r):
            return sorted(a.path for a in mlflow.list_artifacts(r.info.run_id, stage))

        assert files(run) == files(producer)
    assert "evaluate/report.html" in [a.path for a in mlflow.list_artifacts(reused["evaluate"].info.run_id, "evaluate")]


class Images(html.parser.HTMLParser):
    """The <img> sources and <script> sources of a page."""

    def __init__(self):
        super().__init__()
        self.images, self.scripts, self.headings = [], [], []
        self._heading = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        self._heading = tag in ("h1", "h2", "h3")

    def handle_data(self, data):
        if self._heading and data.strip():
            self.headings.append(data.strip())
            self._heading = False


def test_dvc_plots_show_draws_every_declared_plot_without_the_internet(runs, tmp_path):
    import yaml

    project = runs["project"]
    declared = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    done = subprocess.run([str(BIN / "dvc"), "plots", "show", "--out", str(tmp_path / "plots")], cwd=project,
                          env=runs["env"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = Images()
    page.feed((tmp_path / "plots" / "index.html").read_text())
    assert page.scripts == []  # nothing to fetch: DVC's Vega plots load their scripts from a CDN
    assert len(page.images) == len(declared) == 7
    for src in page.images:
        assert (tmp_path / "plots" / src).stat().st_size > 1000
    for curves in ("surrogate", "pretrain", "distill", "finetune"):
        assert f"data/{curves}/curves.png" in declared
    ignored = subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=project)
    assert ignored.returncode == 0  # `dvc plots show`'s default output folder is not committed


def test_dvc_metrics_show_is_one_row_of_headline_figures(runs):
    done = subprocess.run([str(BIN / "dvc"), "metrics", "show"], cwd=runs["project"], env=runs["env"],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 0 and len(lines) == 2, done.stdout
    header = lines[0].split()
    assert header[0] == "Path" and lines[1].split()[0] == "data/evaluate/summary.json"
    assert {"accuracy", "macro_f1", "student_probe_3shot", "source_kept"} <= set(header)
    assert len(header) <= 10 and max(map(len, lines)) < 200
    assert "-" not in lines[1].split()  # every column has its value


def test_the_report_states_its_context_and_shows_curves_votes_and_every_stage_cost(runs):
    report = runs["project"] / "data" / "evaluate"
    parent, flow_run = runs["ids"][0]
    page = Images()
    text = (report / "report.html").read_text()
    page.feed(text)
    assert page.headings[:4] == ["tlpipe evaluation", "Context", "Methods", "Summary"]
    head = git(runs["project"], "rev-parse", "HEAD").strip()
    for fact in (parent, flow_run, head, "target data: digits", "source data: glyphs", "source pruning: lm at ratio 0.5",
                 "distillation: seed", "pruning lm: label mapping (DP4TL)", "distillation seed: SEED (Fang et al., ICLR 2021)"):
        assert fact in text, fact
    for title in ("Probe accuracy against shots", "Source classes: pruning votes", "Training curves: surrogate",
                  "Training curves: pretrain", "Training curves: distill", "Training curves: finetune"):
        assert title in page.headings
    assert len(page.images) == 7 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.scripts == []  # self-contained
    cost = text[text.index(">Cost<"):]
    for stage in (*config.STAGES, "end_to_end"):
        assert f"<td>{stage}</td>" in cost, stage
    markdown = (report / "report.md").read_text()
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (report / figure).is_file(), figure  # figures sit beside report.md


def test_output_into_a_pipe_is_not_wrapped(runs):
    first = runs["first"]
    table_rows = [line for line in first.stdout.splitlines() if line.startswith("│ pretrain")]
    assert len(table_rows) == 1 and "full est." in table_rows[0]  # the whole headline on one line
    epochs = [line for line in first.stderr.splitlines() if re.match(r"pretrain epochs \d+/\d+", line)]
    assert epochs and all("val_accuracy=" in line for line in epochs)  # an epoch's figures on its own line
    assert not any(line.startswith("val_accuracy=") for line in first.stderr.splitlines())
    flow_run = runs["ids"][0][1]
    assert f"prefect server start   (then http://127.0.0.1:4200/runs/flow-run/{flow_run})" in first.stdout


@pytest.mark.parametrize("ref, message", [
    ("0123456789abcdef0123456789abcdef", "no MLflow run with this id"),
    ("tlpipe-digits/7", "has no version 7 (versions 1; aliases @champion)"),
    ("tlpipe-digits@nope", "has no alias 'nope'"),
])
def test_lineage_of_an_unknown_reference_is_one_line_and_exit_2(runs, ref, message):
    done = tlpipe(runs["project"], runs["env"], "lineage", ref)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_lineage_prints_no_progress_bars_and_the_version_is_known(runs):
    done = tlpipe(runs["project"], runs["env"], "lineage", "data/evaluate/report.html")
    assert done.returncode == 0 and done.stderr == "", done.stderr  # no "Downloading artifacts" bar
    assert done.stdout.startswith(f"pipeline run {runs['ids'][0][0]}")  # the run that computed it
    from importlib.metadata import version

    shown = tlpipe(runs["project"], runs["env"], "--version")
    assert shown.returncode == 0 and shown.stdout == f"tlpipe {version('tlpipe')}\n"
