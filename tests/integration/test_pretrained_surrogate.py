"""A classifier trained elsewhere, with its own head, as the surrogate: prune votes with it and nothing
trains; labels that do not name the source's classes are refused in one line (real Prefect, DVC, MLflow)."""

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

from flows.cli import app
from flows.console import run_flow
from flows.pipeline import pipeline
from project import files, paramfiles, sources
from tests.integration.conftest import make_project
from tlpipe import io
from tlpipe.data import storage
from tlpipe.pretraining import pretrained
from tlpipe.pruning import select_classes
from tlpipe.training import inference, models

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def source_classes(project) -> list[str]:
    return sources.source_parts(paramfiles.load_stage_params(project, "prepare"), project).names()


def save_classifier(folder, labels: list[str], seed: int = 0) -> None:
    """A small ResNet image classifier as `save_pretrained` writes one (as a hub model is downloaded)."""
    torch.manual_seed(seed)
    config = transformers.ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="basic", id2label=dict(enumerate(labels)),
                                       label2id={name: i for i, name in enumerate(labels)})
    transformers.ResNetForImageClassification(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    import os

    root = tmp_path_factory.mktemp("pretrained")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    return make_project(root / "proj")


def test_prune_votes_with_the_pretrained_classifier_and_nothing_trains(project, tmp_path):
    names = source_classes(project)
    rng = np.random.default_rng(0)
    labels = [names[i] for i in rng.permutation(len(names))] + ["not a source class", "another"]  # another order
    save_classifier(project / "imagenet-classifier", labels)
    result = run_flow(pipeline, project=str(project), until="prune", show_progress=False,
                      overrides=["surrogate.pretrained=imagenet-classifier", "prune.method=lm"])
    surrogate = next(s for s in result["stages"] if s["stage"] == "surrogate")
    assert surrogate["status"] == "ran" and surrogate["metrics"]["images_seen"] == 0
    assert surrogate["metrics"]["pretrained_classifier"] == "imagenet-classifier"
    out = project / "data" / "surrogate"
    assert not (out / "history.csv").exists()  # no training loop ran

    # the votes are the model's own logits for the source classes, in the source's order
    model = transformers.ResNetForImageClassification.from_pretrained(project / "imagenet-classifier")
    target = storage.to_arrays(storage.load_prepared(project / "data" / "prepared" / files.TARGET)["train"])[0]
    stored = models.load_classifier(out / files.CLASSIFIER)
    ours = inference.predict_logits(stored, target, batch_size=64, device=torch.device("cpu"))
    assert surrogate["metrics"]["input_normalization"].startswith("ImageNet")  # the folder has no image processor
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in pretrained.IMAGENET_NORM)
    with torch.no_grad():  # the model's own inputs: pixels in [0, 1], normalised
        pixels = torch.from_numpy(target).float() / 255
        theirs = model(pixel_values=(pixels - mean.mean(1, keepdim=True)) / std.mean(1, keepdim=True)
                       if pixels.shape[1] == 1 else (pixels - mean) / std).logits.numpy()
    columns = [labels.index(name) for name in names]
    assert np.allclose(ours, theirs[:, columns], atol=1e-5)
    selection = io.read_json(project / "data" / "prune" / "selection.json")
    expected = select_classes("lm", ratio=paramfiles.load_stage_params(project, "prune")["ratio"], seed=0, logits=theirs[:, columns])
    assert sorted(selection["kept"]) == sorted(int(k) for k in expected.kept)

    # the folder is an input: another classifier there is another key
    save_classifier(project / "imagenet-classifier", labels, seed=1)
    again = run_flow(pipeline, project=str(project), until="surrogate", show_progress=False)
    assert {s["stage"]: s["status"] for s in again["stages"]}["surrogate"] == "ran"


@pytest.mark.parametrize("labels, message", [
    (lambda names: names[:-1] + ["something else"], "do not name 1 of the source's"),
    (lambda names: [name.upper() + "!" for name in names], "classes (e.g."),
])
def test_labels_that_do_not_name_the_source_classes_exit_2_before_anything_runs(project, labels, message):
    save_classifier(project / "wrong-classifier", labels(source_classes(project)))
    before = sorted(p.name for p in (project / "data").iterdir()) if (project / "data").exists() else []
    result = CliRunner().invoke(app, ["run", "--project", str(project), "-s", "surrogate.pretrained=wrong-classifier"])
    assert result.exit_code == 2, result.output
    assert "params/surrogate.yaml: pretrained:" in result.output and message in " ".join(result.output.split())
    assert len(result.output.strip().splitlines()) == 1
    assert (sorted(p.name for p in (project / "data").iterdir()) if (project / "data").exists() else []) == before
