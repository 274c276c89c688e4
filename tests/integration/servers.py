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
def prefect_server(state: Path, services: bool = True) -> Iterator[str]:
    """A Prefect server (with its scheduler unless `services` is False); yields its API URL."""
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(state / "home"),
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{state / 'prefect.db'}"}
    env.pop("PREFECT_API_URL", None)
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    if not services:
        command.append("--no-services")
    url = f"http://127.0.0.1:{port}/api"
    with running(command, env, state / "prefect-server.log", f"{url}/health"):
        yield url


@contextlib.contextmanager
def mlflow_server(state: Path) -> Iterator[str]:
    """An MLflow tracking server with a SQLite store that proxies artifacts; yields its URI."""
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
               "--artifacts-destination", str(state / "artifacts"), "--serve-artifacts"]
    uri = f"http://127.0.0.1:{port}"
    with running(command, env, state / "mlflow-server.log", f"{uri}/health"):
        yield uri


def tool_env(**extra: str) -> dict[str, str]:
    """The test process's environment (offline, quiet) with `extra` set and the backends it names only."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env
