"""prefect.yaml: the declared deployments load, bad declarations are named, schedules convert."""

from pathlib import Path

import pytest
import yaml

from flows import deploy
from flows.stages import gpu_index

REPO = Path(__file__).resolve().parents[2]


def test_the_projects_deployments_load_and_point_at_real_flows():
    declared = deploy.load_deployments(REPO)
    assert {d["name"] for d in declared} == {"nightly", "nightly-gpu", "stage-gpu", "stage-cpu"}
    for d in declared:
        assert (REPO / d["entrypoint"].split(":")[0]).is_file()
        assert d["work_pool"]["name"] in deploy.POOLS
        assert deploy._flow(d["entrypoint"]).name.startswith("tlpipe")
    by_name = {d["name"]: d for d in declared}
    assert by_name["nightly-gpu"]["parameters"]["agents"] == {"gpu": "cuda"}  # training stages -> stage-gpu
    assert by_name["stage-gpu"]["work_pool"]["name"] == "gpu" and not by_name["stage-gpu"].get("schedules")


def write(tmp_path: Path, deployments: list) -> Path:
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump({"deployments": deployments}))
    return tmp_path


def test_unknown_entrypoint_and_unknown_name_are_named(tmp_path):
    with pytest.raises(ValueError, match="flows/retrain.py:retrain"):
        deploy.load_deployments(write(tmp_path, [{"name": "x", "entrypoint": "mine.py:f"}]))
    write(tmp_path, [{"name": "nightly", "entrypoint": "flows/retrain.py:retrain"}])
    with pytest.raises(ValueError, match="no deployment weekly .*deployments: nightly"):
        deploy.load_deployments(tmp_path, ["weekly"])
    with pytest.raises(ValueError, match="prefect.yaml not found"):
        deploy.load_deployments(tmp_path / "nowhere")


def test_schedules_convert_and_an_interval_replaces_them():
    declared = {"name": "n", "schedules": [{"cron": "0 3 * * *", "timezone": "UTC"},
                                           {"interval": 3600, "active": False}]}
    cron, interval = deploy.schedules_of(declared)
    assert cron.cron == "0 3 * * *" and cron.timezone == "UTC" and cron.active
    assert interval.interval.total_seconds() == 3600 and not interval.active
    (override,) = deploy.schedules_of(declared, interval=10)
    assert override.interval.total_seconds() == 10
    assert deploy.schedules_of({"name": "stage-gpu"}, interval=10) == []  # unscheduled stays unscheduled
    with pytest.raises(ValueError, match="needs `cron` or `interval`"):
        deploy.schedules_of({"name": "n", "schedules": [{"rrule": "FREQ=DAILY"}]})


def test_served_deployments_get_the_absolute_project(tmp_path):
    (tmp_path / "prefect.yaml").write_text((REPO / "prefect.yaml").read_text())
    (made,) = deploy.runner_deployments(tmp_path, ["nightly"], interval=30)
    assert made.parameters["project"] == str(tmp_path.resolve()) and made.parameters["pull"] is True
    assert made.name == "nightly" and len(made.schedules) == 1


@pytest.mark.parametrize("device, visible, index", [
    ("cpu", "", None), ("mps", "", None), ("cuda", "", 0), ("cuda:1", "", 1),
    ("cuda", "3", 3), ("cuda:1", "2,5", 5), ("cuda:0", "GPU-uuid", 0),
])
def test_gpu_index_follows_cuda_visible_devices(device, visible, index, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpu_index(device) == index
