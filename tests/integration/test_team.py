"""The team deployment docs/team.md describes, every part real and on 127.0.0.1: a PostgreSQL cluster
holding Prefect's and MLflow's stores (and MLflow's users), an S3 server (moto) holding MLflow's
artifacts, the DVC remote and the shared stage records, a Prefect server that asks for its auth string
and an MLflow server behind its basic-auth app. Two members, two clones: the second clone's run of the
same pipeline is all cache hits and gets its outputs from the S3 remote."""

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from runner import dvc
from project import config, paramfiles
from tests.integration.conftest import git, make_project
from tests.integration.servers import (BIN, add_mlflow_user, mlflow_server, needs_postgres, postgres, prefect_server,
                                       s3_server, tool_env)

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_postgres]

PREFECT_AUTH = "team:prefect-team-secret"  # Prefect's server has one auth string for everyone
MEMBERS = {"alice": "alice-team-secret", "bob": "bob-team-secret"}  # MLflow users (passwords >= 12 characters)
CREDENTIALS = ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def tlpipe(workspace: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / "tlpipe"), *args, "--project", str(workspace)], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def lineage_doc(workspace: Path) -> dict:
    (path,) = (workspace / ".tlpipe" / "lineage").glob("*.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    with postgres(("prefect", "mlflow", "mlflow_auth")) as database, s3_server(root / "s3") as s3:
        origin = make_project(root / "origin")
        for args in (["remote", "add", "-d", "shared", "s3://team/dvc"],
                     ["remote", "modify", "shared", "endpointurl", s3["AWS_ENDPOINT_URL"]]):
            subprocess.run([str(BIN / "dvc"), *args], cwd=origin, check=True)
        git(origin, "commit", "-qam", "shared DVC remote on S3")
        with prefect_server(root / "prefect", database=database, auth=PREFECT_AUTH) as api, \
                mlflow_server(root / "mlflow", database=database, artifacts="s3://team/mlflow", auth=True,
                              extra_env=s3) as tracking_uri:
            members = {}
            for name, password in MEMBERS.items():
                add_mlflow_user(tracking_uri, name, password)
                workspace = root / name
                git(root, "clone", "-q", str(origin), str(workspace))
                env = tool_env(**s3, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=PREFECT_AUTH,
                               PREFECT_HOME=str(root / f"prefect-home-{name}"), MLFLOW_TRACKING_URI=tracking_uri,
                               MLFLOW_TRACKING_USERNAME=name, MLFLOW_TRACKING_PASSWORD=password,
                               TLPIPE_STORE_DIR=str(root / "shared" / "store"), TLPIPE_CACHE_DIR="s3://team/cache")
                doctor = subprocess.run([str(BIN / "tlpipe"), "doctor", "--json", "--project", str(workspace)],
                                        env=env, capture_output=True, text=True, timeout=300)
                run = tlpipe(workspace, env, "run")
                members[name] = {"workspace": workspace, "env": env, "doctor": doctor, "run": run,
                                 "lineage": lineage_doc(workspace)}
            yield {"api": api, "tracking_uri": tracking_uri, "s3": s3, **members}


def s3_keys(team: dict, prefix: str) -> list[str]:
    import boto3

    s3 = team["s3"]
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"], region_name=s3["AWS_DEFAULT_REGION"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="team", Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def statuses(doc: dict) -> dict:
    return {s["stage"]: s["status"] for s in doc["stages"]}


def test_second_member_run_is_all_cache_hits_restored_from_the_remote(team):
    alice, bob = team["alice"], team["bob"]
    assert statuses(alice["lineage"]) == {stage: "ran" for stage in config.STAGES}
    # Bob's clone had no data/ and an empty DVC cache: every stage is a hit, its outputs come from the remote.
    assert statuses(bob["lineage"]) == {stage: "restored" for stage in config.STAGES}
    for a, b in zip(alice["lineage"]["stages"], bob["lineage"]["stages"]):
        assert a["cache_key"] == b["cache_key"] and a["outputs"] == b["outputs"]
        assert b["produced_by_run"] == a["produced_by_run"]
        assert dvc.outputs_match(bob["workspace"], b["outputs"])
    assert any(key.endswith(".dir") for key in s3_keys(team, "dvc/"))  # the DVC remote is the S3 bucket
    assert len(s3_keys(team, "cache/")) >= len(config.STAGES)  # one stage record per stage, on S3
    assert "restored" in bob["run"].stdout


def test_both_runs_are_in_the_prefect_api(team):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect.settings import PREFECT_API_AUTH_STRING

    with temporary_settings(updates={PREFECT_API_URL: team["api"], PREFECT_API_AUTH_STRING: PREFECT_AUTH}):
        with get_client(sync_client=True) as client:
            for member in ("alice", "bob"):
                flow_run = client.read_flow_run(team[member]["lineage"]["flow_run"])
                assert flow_run.state.is_completed()
                expected = {stage: "Completed" if member == "alice" else "Cached" for stage in config.STAGES}
                for _ in range(60):  # task runs reach the database through the server's event service
                    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
                    states = {t.name: t.state.name for t in tasks}
                    if states == expected:
                        break
                    time.sleep(0.5)
                assert states == expected


def test_both_runs_and_the_model_are_in_the_mlflow_server(team, monkeypatch):
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MEMBERS["bob"])
    client = MlflowClient(team["tracking_uri"])
    alice, bob = team["alice"]["lineage"], team["bob"]["lineage"]
    assert client.get_run(alice["pipeline_run"]).data.tags["mlflow.user"] != ""
    for doc in (alice, bob):
        assert client.get_run(doc["pipeline_run"]).info.status == "FINISHED"
    children = client.search_runs([client.get_run(bob["pipeline_run"]).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{bob['pipeline_run']}'")
    assert {c.data.tags["tlpipe.cached"] for c in children} == {"true"}
    # Bob's run found Alice's registered version (same lineage), so the registry holds one version.
    assert bob["registered_model"]["version"] == alice["registered_model"]["version"]
    assert bob["registered_model"]["new_version"] is False
    name = alice["registered_model"]["model"]
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(team["tracking_uri"])
    try:
        model = mlflow.pytorch.load_model(f"models:/{name}@champion")  # artifacts through the server's proxy
    finally:
        mlflow.set_tracking_uri(before)
    prepare = paramfiles.load_stage_params(team["alice"]["workspace"], "prepare")
    with torch.no_grad():
        logits = model(torch.zeros(2, prepare["channels"], prepare["image_size"], prepare["image_size"], dtype=torch.uint8))
    assert logits.shape[0] == 2
    assert any("/artifacts/" in key for key in s3_keys(team, "mlflow/"))  # the server keeps artifacts on S3


def test_doctor_sees_every_shared_backend(team):
    rows = json.loads(team["bob"]["doctor"].stdout)
    assert team["bob"]["doctor"].returncode == 0, rows
    by = {r["component"]: r for r in rows}
    assert by["prefect"]["ok"] is True and by["prefect"]["setting"] == team["api"]
    assert by["mlflow"]["ok"] is True and by["mlflow artifacts"]["ok"] is True
    assert by["dvc remote"]["setting"].startswith("shared: ")
    assert by["stage records"]["ok"] is True and by["result store"]["ok"] is True
    assert by["prefect auth"]["ok"] is True and by["mlflow auth"]["ok"] is True
    assert "this client's are accepted" in by["mlflow auth"]["detail"]
    assert not any(r["warning"] for r in rows)


def unauthenticated(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_both_servers_refuse_a_request_without_credentials(team):
    assert unauthenticated(f"{team['api']}/version") == 401
    assert unauthenticated(f"{team['tracking_uri']}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert unauthenticated(f"{team['tracking_uri']}/api/2.0/mlflow-artifacts/artifacts") == 401


@pytest.mark.parametrize("command", [["run"], ["lineage", "data/finetune"]])
def test_a_member_without_credentials_gets_one_line_and_exit_2(team, command):
    env = {k: v for k, v in team["bob"]["env"].items() if k not in CREDENTIALS}
    done = subprocess.run([str(BIN / "tlpipe"), *command, "--project", str(team["bob"]["workspace"])],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    for missing in CREDENTIALS:
        assert missing in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_wrong_credentials_are_named_as_refused(team):
    env = {**team["bob"]["env"], "MLFLOW_TRACKING_PASSWORD": "not-bobs"}
    done = subprocess.run([str(BIN / "tlpipe"), "run", "--project", str(team["bob"]["workspace"])],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "refused this client's credentials (HTTP 401)" in done.stderr and "MLFLOW_TRACKING_URI=" in done.stderr


def test_doctor_fails_on_an_unreachable_backend(team, tmp_path):
    env = {**team["bob"]["env"], "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    done = subprocess.run([str(BIN / "tlpipe"), "doctor", "--json", "--project", str(team["bob"]["workspace"])],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    rows = {r["component"]: r for r in json.loads(done.stdout)}
    assert rows["mlflow"]["ok"] is False and "no answer" in rows["mlflow"]["detail"]


def test_a_member_who_pulls_the_commit_gets_the_outputs_and_reruns_nothing(team, tmp_path):
    """Alice commits the dvc.lock of her run (as the README says); Carol pulls that commit and `dvc
    pull`s: the same outputs, `dvc status` clean, and `tlpipe run` reuses every stage in place."""
    from dvc.repo import Repo

    alice = team["alice"]["workspace"]
    git(alice, "add", "dvc.lock", "params")
    git(alice, "commit", "-qm", "run")
    carol = tmp_path / "carol"
    git(tmp_path, "clone", "-q", str(alice), str(carol))
    pulled = subprocess.run([str(BIN / "dvc"), "pull", "--quiet"], cwd=carol, env=team["bob"]["env"],  # S3 keys
                            capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    outputs = {rel: md5 for s in team["alice"]["lineage"]["stages"] for rel, md5 in s["outputs"].items()}
    assert {rel: dvc.md5_path(carol / rel) for rel in outputs} == outputs
    with Repo(str(carol)) as repo:
        assert repo.status() == {}
    env = {**team["bob"]["env"], "PREFECT_HOME": str(tmp_path / "prefect-home-carol")}
    run = tlpipe(carol, env, "run")
    assert statuses(lineage_doc(carol)) == {stage: "cached" for stage in config.STAGES}, run.stdout[-3000:]
