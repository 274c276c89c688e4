#!/usr/bin/env python
"""Two members of a team at once against the shared servers of the README's team recipe.

Each member has a clone of the project (tiny params) and a PREFECT_HOME of their own, and starts at
the same moment three pipelines (three distinct configurations; they take turns on the clone's lock)
and one pruning sweep of eight points (Dask, two workers). The servers are the team recipe's: a Prefect
server asking for its auth string, MLflow's basic-auth app proxying artifacts to S3 (moto's server), the
DVC remote and the stage records on S3; their databases on SQLite, or on PostgreSQL.

Afterwards every record is audited: each run's flow run and its task runs (Prefect), its parent and
child runs (MLflow), its lineage document (MLflow == the clone's copy), the DVC objects of every
output (S3), and one registry version per distinct model. A probe asks both APIs every half second
during the load, as a client would; its latency and errors are reported.

    python bench/team_load.py                      # SQLite, then PostgreSQL
    python bench/team_load.py --db postgresql

Prints one JSON line per database and a table; tests/integration/test_team_load.py runs the PostgreSQL
case and asserts 0 errors and 0 lost records.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.spec import load_pipeline  # noqa: E402
from tests.integration.conftest import TINY, git, make_project  # noqa: E402
from tests.integration.servers import (BIN, add_mlflow_user, mlflow_server, postgres, prefect_server,  # noqa: E402
                                       s3_server, tool_env)

PREFECT_AUTH = "team:prefect-team-secret"
MEMBERS = {"alice": "alice-team-secret", "bob": "bob-team-secret"}
# Three distinct models: every key the configurations differ in is set in each, so the order in which
# the runs take the clone's lock does not change what each computes.
CONFIGS = (["-s", "prune.method=lm", "-s", "prune.ratio=0.5"],
           ["-s", "prune.method=lm", "-s", "prune.ratio=0.7"],
           ["-s", "prune.method=random", "-s", "prune.ratio=0.5"])
SWEEP = {"methods": ["lm", "random"], "ratios": [0.5, 0.8], "seeds": [0, 1], "full_source": False, "set": {},
         "cluster": {"address": None, "n_workers": 2, "threads_per_worker": 1}}  # 8 points
STAGES = tuple(spec.name for spec in load_pipeline(REPO))  # every stage of dvc.yaml, in run order
# The tests' tiny configuration with one epoch per training and one probe draw: the load is about
# the servers and the records, not about training.
LOAD = {**TINY, **{stage: {**TINY[stage], "epochs": 1} for stage in ("surrogate", "pretrain", "distill", "finetune")},
        "evaluate": {"probe_shots": [1, 3], "probe_draws": 1}}


@contextlib.contextmanager
def shared_servers(db: str, root: Path):
    """The team's servers on `db` ("sqlite" or "postgresql"), S3 and authentication in both cases."""
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(postgres(("prefect", "mlflow", "mlflow_auth"))) if db == "postgresql" else None
        s3 = stack.enter_context(s3_server(root / "s3"))
        api = stack.enter_context(prefect_server(root / "prefect", database=database, auth=PREFECT_AUTH))
        uri = stack.enter_context(mlflow_server(root / "mlflow", database=database, artifacts="s3://team/mlflow",
                                                auth=True, extra_env=s3))
        for name, password in MEMBERS.items():
            add_mlflow_user(uri, name, password)
        yield {"api": api, "tracking_uri": uri, "s3": s3}


def clones(root: Path, servers: dict) -> dict[str, dict]:
    """Each member's clone (with the S3 DVC remote committed) and environment."""
    origin = make_project(root / "origin", LOAD)
    for args in (["remote", "add", "-d", "shared", "s3://team/dvc"],
                 ["remote", "modify", "shared", "endpointurl", servers["s3"]["AWS_ENDPOINT_URL"]]):
        subprocess.run([str(BIN / "dvc"), *args], cwd=origin, check=True, capture_output=True)
    (origin / "params" / "load-sweep.yaml").write_text(json.dumps(SWEEP))
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "team remote and sweep")
    members = {}
    for name, password in MEMBERS.items():
        workspace = root / name
        git(root, "clone", "-q", str(origin), str(workspace))
        env = tool_env(**servers["s3"], PREFECT_API_URL=servers["api"], PREFECT_API_AUTH_STRING=PREFECT_AUTH,
                       PREFECT_HOME=str(root / f"prefect-home-{name}"), MLFLOW_TRACKING_URI=servers["tracking_uri"],
                       MLFLOW_TRACKING_USERNAME=name, MLFLOW_TRACKING_PASSWORD=password,
                       TLPIPE_STORE_DIR=str(root / "shared" / "store"), TLPIPE_CACHE_DIR="s3://team/cache")
        members[name] = {"workspace": workspace, "env": env}
    return members


class Probe(threading.Thread):
    """Asks both APIs every `every` seconds what a client asks often (recent flow runs, a run search),
    timing each answer; records failures (no answer, 5xx, a locked database) as errors."""

    def __init__(self, servers: dict, every: float = 0.5):
        super().__init__(daemon=True)
        self.servers, self.every = servers, every
        self.latency: dict[str, list[float]] = {"prefect": [], "mlflow": []}
        self.errors: list[str] = []
        self.done = threading.Event()

    def _ask(self, kind: str, request: urllib.request.Request) -> None:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
            self.latency[kind].append(time.perf_counter() - started)
        except (urllib.error.URLError, OSError) as exc:
            self.errors.append(f"{kind} probe: {exc}")

    def run(self) -> None:
        prefect = "Basic " + base64.b64encode(PREFECT_AUTH.encode()).decode()
        mlflow = "Basic " + base64.b64encode(f"alice:{MEMBERS['alice']}".encode()).decode()
        while not self.done.wait(self.every):
            self._ask("prefect", urllib.request.Request(
                f"{self.servers['api']}/flow_runs/filter", data=b'{"limit": 10}', method="POST",
                headers={"Authorization": prefect, "Content-Type": "application/json"}))
            self._ask("mlflow", urllib.request.Request(
                f"{self.servers['tracking_uri']}/api/2.0/mlflow/experiments/search?max_results=10",
                headers={"Authorization": mlflow}))


EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Violation)\b.*:")


def failure(stderr: str) -> str:
    """The exception lines of a failed command's stderr (the database error and its statement, not only
    SQLAlchemy's closing link), each cut at 300 characters, else its last line."""
    lines = stderr.strip().splitlines()
    raised = [line[:300] for line in lines if EXCEPTION_LINE.match(line.strip())]
    return " | ".join(raised[-3:]) or (lines[-1][:300] if lines else "(no stderr)")


def run_command(member: str, workspace: Path, env: dict, args: list[str], into: list[dict]) -> threading.Thread:
    """Starts `tlpipe <args>` in the member's clone on a thread that appends its outcome to `into`."""
    def wait() -> None:
        started = time.perf_counter()
        done = subprocess.run([str(BIN / "tlpipe"), *args, "--project", str(workspace)], cwd=workspace, env=env,
                              capture_output=True, text=True)
        into.append({"member": member, "args": args, "rc": done.returncode, "seconds": time.perf_counter() - started,
                     "stdout": done.stdout, "stderr": done.stderr})

    thread = threading.Thread(target=wait)
    thread.start()
    return thread


def ids_of(stdout: str) -> tuple[str, str] | None:
    import re

    found = re.search(r"MLflow run: (\w+)\s+Prefect flow run: ([\w-]+)", stdout)
    return (found[1], found[2]) if found else None


def audit(servers: dict, members: dict, results: list[dict]) -> list[str]:
    """What is missing or inconsistent after the load, one line each (empty: nothing lost)."""
    import os

    import boto3
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    lost = []
    s3 = servers["s3"]
    bucket = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"], region_name=s3["AWS_DEFAULT_REGION"])
    with mock.patch.dict(os.environ, MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=MEMBERS["alice"]):
        client = MlflowClient(servers["tracking_uri"])
        finetuned: set[str] = set()
        with temporary_settings(updates={PREFECT_API_URL: servers["api"], PREFECT_API_AUTH_STRING: PREFECT_AUTH}):
            with get_client(sync_client=True) as prefect:
                for result in results:
                    ids = ids_of(result["stdout"])
                    what = f"{result['member']} {' '.join(result['args'])}"
                    if result["rc"] != 0 or ids is None:
                        continue  # counted as an error, not as a loss
                    parent, flow_run = ids
                    lost += _audit_prefect(prefect, flow_run, what, sweep=result["args"][0] == "sweep",
                                           filters=(FlowRunFilter, FlowRunFilterId))
                    lost += _audit_mlflow(client, parent, what, sweep=result["args"][0] == "sweep")
                    if result["args"][0] == "run":
                        doc = _lineage(members[result["member"]]["workspace"], parent)
                        if doc is None:
                            lost.append(f"{what}: no lineage document in the clone")
                            continue
                        stored = json.loads(Path(client.download_artifacts(parent, "lineage.json",
                                                                            tempfile.mkdtemp())).read_text())
                        if stored != doc:
                            lost.append(f"{what}: MLflow's lineage.json differs from the clone's")
                        for stage in doc["stages"]:
                            for rel, md5 in stage["outputs"].items():
                                key = f"dvc/files/md5/{md5[:2]}/{md5[2:]}"
                                if not _exists(bucket, key):
                                    lost.append(f"{what}: {rel} ({md5}) is not in the DVC remote")
                        finetuned.add(next(s["outputs"]["data/finetune"] for s in doc["stages"]
                                           if s["stage"] == "finetune"))
        versions = client.search_model_versions("name = 'tlpipe-digits'")
        by_hash: dict[str, list[str]] = {}
        for v in versions:
            by_hash.setdefault(v.tags.get("tlpipe.out.data/finetune", "?"), []).append(v.version)
        for md5, found in by_hash.items():
            if len(found) > 1:
                lost.append(f"registry: versions {', '.join(found)} hold the same model ({md5})")
        if set(by_hash) != finetuned:
            lost.append(f"registry: {len(by_hash)} distinct models registered, the runs made {len(finetuned)}")
    return lost


def _audit_prefect(prefect, flow_run: str, what: str, sweep: bool, filters) -> list[str]:
    flow_filter, id_filter = filters
    run = prefect.read_flow_run(flow_run)
    if not run.state.is_completed():
        return [f"{what}: Prefect flow run {flow_run} is {run.state.name}"]
    for _ in range(60):  # task runs arrive through the server's event services
        tasks = prefect.read_task_runs(flow_run_filter=flow_filter(id=id_filter(any_=[run.id])))
        final = [t for t in tasks if t.state and t.state.is_final()]
        names = {t.name for t in final}
        if (sweep and final and len(final) == len(tasks)) or (not sweep and set(STAGES) <= names):
            return []
        time.sleep(0.5)
    return [f"{what}: Prefect has {len(final)} final task runs of {len(tasks)} ({sorted(names)})"]


def _audit_mlflow(client, parent: str, what: str, sweep: bool) -> list[str]:
    run = client.get_run(parent)
    problems = [] if run.info.status == "FINISHED" else [f"{what}: MLflow parent {parent} is {run.info.status}"]
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                  max_results=1000)
    unfinished = [c.info.run_id for c in children if c.info.status != "FINISHED"]
    if unfinished:
        problems.append(f"{what}: child runs not FINISHED: {unfinished}")
    expected = 8 if sweep else len(STAGES)
    stages = {c.data.tags.get("tlpipe.stage") for c in children}
    if (sweep and len(children) < expected) or (not sweep and stages != set(STAGES)):
        problems.append(f"{what}: MLflow has {len(children)} child runs ({sorted(filter(None, stages))})")
    return problems


def _lineage(workspace: Path, parent: str) -> dict | None:
    path = workspace / ".tlpipe" / "lineage" / f"{parent}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _exists(bucket, key: str) -> bool:
    try:
        bucket.head_object(Bucket="team", Key=key)
        return True
    except Exception:  # noqa: BLE001 - botocore's ClientError (404) and its kin
        return False


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_load(db: str, root: Path) -> dict:
    """The whole load on `db`; returns the figures and the audit."""
    root.mkdir(parents=True, exist_ok=True)
    with shared_servers(db, root) as servers:
        members = clones(root, servers)
        probe = Probe(servers)
        probe.start()
        began = time.perf_counter()
        results: list[dict] = []
        threads = [run_command(name, member["workspace"], member["env"], args, results)  # everything at once
                   for name, member in members.items()
                   for args in (["sweep", "--file", "params/load-sweep.yaml"], *(["run", *c] for c in CONFIGS))]
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        probe.done.set()
        probe.join()
        lost = audit(servers, members, results)
    errors = [f"{r['member']} {' '.join(r['args'])}: exit {r['rc']}: {failure(r['stderr'])}"
              for r in results if r["rc"] != 0] + probe.errors
    return {
        "db": db, "runs": len(results), "completed": sum(r["rc"] == 0 for r in results), "errors": errors,
        "lost": lost, "wall_s": round(wall, 1),
        **{f"{kind}_p{int(q * 100)}_ms": None if (p := percentile(probe.latency[kind], q)) is None else round(1000 * p, 1)
           for kind in ("prefect", "mlflow") for q in (0.5, 0.95)},
        "probes": sum(map(len, probe.latency.values())),
        "run_seconds": {f"{r['member']} {' '.join(r['args'][:1] + r['args'][2::2] if r['args'][0] == 'run' else r['args'][:1])}":
                        round(r["seconds"], 1) for r in results},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlpipe-team-load-") as tmp:
        for db in args.db:
            row = run_load(db, Path(tmp) / db)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'database':<11} {'runs ok':>8} {'errors':>7} {'lost':>5} {'Prefect p50/p95 ms':>19} "
          f"{'MLflow p50/p95 ms':>18} {'wall s':>7}")
    for r in rows:
        print(f"{r['db']:<11} {r['completed']:>4}/{r['runs']:<3} {len(r['errors']):>7} {len(r['lost']):>5} "
              f"{r['prefect_p50_ms']!s:>9}/{r['prefect_p95_ms']!s:<9} {r['mlflow_p50_ms']!s:>8}/{r['mlflow_p95_ms']!s:<9} "
              f"{r['wall_s']:>7}")
        for line in r["errors"][:5] + r["lost"][:5]:
            print(f"    {line}")


if __name__ == "__main__":
    main()
