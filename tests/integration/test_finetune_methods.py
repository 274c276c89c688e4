"""Each fine-tuning method end to end (real Prefect, DVC, MLflow): the stages before finetune are reused,
the method is recorded (MLflow params, metrics, the report's Methods), and the registered model loads with
`mlflow.pytorch.load_model` and predicts."""

import json

import pytest
from mlflow.tracking import MlflowClient

from flows.console import run_flow
from flows.pipeline import pipeline
from tlpipe import registry
from tests.integration.conftest import make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    import os

    root = tmp_path_factory.mktemp("finetune-methods")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    project = make_project(root / "proj")
    first = run_flow(pipeline, project=str(project), show_progress=False)
    assert {s["status"] for s in first["stages"]} == {"ran"}
    return project


@pytest.mark.parametrize("method", [m for m in registry.FINETUNING if m != "full"])
def test_a_finetune_method_runs_end_to_end_and_its_model_predicts(project, method):
    import mlflow.pytorch
    import torch

    result = run_flow(pipeline, project=str(project), show_progress=False, overrides=[f"finetune.method={method}"])
    status = {s["stage"]: s["status"] for s in result["stages"]}
    assert status["finetune"] == "ran" and status["evaluate"] == "ran"
    assert {status[s] for s in ("prepare", "surrogate", "prune", "pretrain", "distill")} == {"cached"}
    finetune = next(s for s in result["stages"] if s["stage"] == "finetune")
    assert finetune["metrics"]["method"] == method
    assert MlflowClient().get_run(finetune["mlflow_run_id"]).data.params["method"] == method
    report = (project / "data" / "evaluate" / "report.md").read_text()
    assert f"fine-tuning {method}: {registry.FINETUNING[method].summary}" in report
    assert json.loads((project / "data" / "metrics" / "finetune.json").read_text())["method"] == method
    registered = result["registered"]
    model = mlflow.pytorch.load_model(f"models:/{registered['model']}/{registered['version']}")
    assert tuple(model(torch.zeros((3, 1, 32, 32), dtype=torch.uint8)).shape) == (3, 10)
