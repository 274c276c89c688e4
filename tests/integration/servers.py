"""Real servers on 127.0.0.1 for the tests that need them: `prefect server start` and `mlflow server`.

Each runs in its own process group with its state in a temporary folder and is stopped by group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop_leader(process: subprocess.Popen) -> None:
    """SIGTERM to the leader only (`serve` pauses its deployments, a worker shuts down), then the
    group; signalling the whole group first would kill their flow-run children mid-way."""
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def running(command: list[str], env: dict, log: Path, health_url: str) -> Iterator[None]:
    """Runs a server in its own process group, logging to `log`, until the block ends; the block
    starts once `health_url` answers."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        wait_healthy(health_url, process, log)
        yield
    finally:
        stop(process)


@contextlib.contextmanager
def prefect_server(state: Path, services: bool = True, database: str | None = None,
                   auth: str | None = None) -> Iterator[str]:
    """A Prefect server (with its scheduler unless `services` is False) on SQLite in `state`, or on
    `database` (a postgresql:// URL); with `auth` ("user:password") every API request but /health needs
    it. Yields its API URL."""
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = (database.replace("postgresql://", "postgresql+asyncpg://", 1) + "/prefect" if database
           else f"sqlite+aiosqlite:///{state / 'prefect.db'}")
    env = {**os.environ, "PREFECT_HOME": str(state / "home"), "PREFECT_SERVER_DATABASE_CONNECTION_URL": url}
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    env.pop("PREFECT_API_URL", None)
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    if not services:
        command.append("--no-services")
    api = f"http://127.0.0.1:{port}/api"
    with running(command, env, state / "prefect-server.log", f"{api}/health"):
        yield api


MLFLOW_ADMIN = ("admin", "team-admin-secret")


@contextlib.contextmanager
def mlflow_server(state: Path, database: str | None = None, artifacts: str | None = None, auth: bool = False,
                  extra_env: dict | None = None) -> Iterator[str]:
    """An MLflow tracking server that proxies artifacts: its store on SQLite in `state` or on
    `database` (postgresql://, databases `mlflow` and, with `auth`, `mlflow_auth`), its artifacts in
    `state` or at `artifacts` (e.g. s3://bucket/mlflow); with `auth`, MLflow's basic-auth app with
    the admin MLFLOW_ADMIN and EDIT as every user's default permission. Yields its URI."""
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(extra_env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"{database}/mlflow" if database else f"sqlite:///{state / 'mlflow.db'}",
               "--artifacts-destination", artifacts or str(state / "artifacts"), "--serve-artifacts"]
    if auth:
        config = state / "basic_auth.ini"
        users = f"{database}/mlflow_auth" if database else f"sqlite:///{state / 'auth.db'}"
        config.write_text("[mlflow]\ndefault_permission = EDIT\n"
                          f"database_uri = {users}\n"
                          f"admin_username = {MLFLOW_ADMIN[0]}\nadmin_password = {MLFLOW_ADMIN[1]}\n"
                          "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                          "auth_cache_ttl_seconds = 60\n")  # one password hash check per user a minute
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY="team-flask-secret")
        command += ["--app-name", "basic-auth"]
    uri = f"http://127.0.0.1:{port}"
    with running(command, env, state / "mlflow-server.log", f"{uri}/health"):
        yield uri


def add_mlflow_user(uri: str, user: str, password: str) -> None:
    """Creates a user through the basic-auth app's REST API, as the admin."""
    import base64
    import json

    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/users/create", method="POST",
                                     data=json.dumps({"username": user, "password": password}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": "Basic " +
                                              base64.b64encode(":".join(MLFLOW_ADMIN).encode()).decode()})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


PG_BIN = next(iter(sorted(p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb"))[::-1]), None)
PG_MISSING = "PostgreSQL's server binaries are not installed (Debian: apt-get install postgresql)"
# Tests of the team deployment skip on a machine without them (a user's laptop); .ci/run installs them
# and fails when these tests were skipped all the same.
needs_postgres = pytest.mark.skipif(PG_BIN is None, reason=PG_MISSING)
PG_USER, PG_PASSWORD = "tlpipe", "team-db-secret"


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL's tools refuse to run as root: as root, run them as the `postgres` system user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres(databases: tuple[str, ...] = ("prefect", "mlflow")) -> Iterator[str]:
    """A PostgreSQL cluster of its own in a temporary folder, on a free loopback port, with password
    authentication over TCP and one owner role for `databases`; yields
    `postgresql://tlpipe:<password>@127.0.0.1:<port>` (append `/<database>`). Stopped and removed after."""
    import shutil
    import tempfile

    if PG_BIN is None:
        raise RuntimeError(PG_MISSING)
    folder = Path(tempfile.mkdtemp(prefix="tlpipe-pg-"))  # not under pytest's root-only tmp: postgres reads it
    data, port = folder / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    try:
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                                     "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, text=True)
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=off"
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
                                     "-w", "start"]), check=True, capture_output=True, text=True)
        sql = [f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}'",
               *(f"CREATE DATABASE {name} OWNER {PG_USER}" for name in databases)]
        for statement in sql:
            subprocess.run(_as_postgres([str(PG_BIN / "psql"), "-h", str(folder), "-p", str(port), "-U", "postgres",
                                         "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", statement]),
                           check=True, capture_output=True, text=True)
        yield f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                           capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


S3_KEYS = {"AWS_ACCESS_KEY_ID": "team-key", "AWS_SECRET_ACCESS_KEY": "team-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server(state: Path, buckets: tuple[str, ...] = ("team",)) -> Iterator[dict[str, str]]:
    """An S3-compatible server (moto's server mode) on a free loopback port with `buckets` created;
    yields the environment a client needs (keys, region, AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL)."""
    import boto3

    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with running(command, {**os.environ, **S3_KEYS}, state / "s3-server.log", f"{endpoint}/moto-api/"):
        client = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_KEYS.items()
                                                              if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield {**S3_KEYS, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}


def tool_env(**extra: str) -> dict[str, str]:
    """The test process's environment (offline, quiet) with `extra` set and the backends it names only."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env
