"""A temporary Prefect API for one command, started first so that its boot overlaps with loading the pipeline.

When PREFECT_API_URL names a server, that server is used and nothing is started. Otherwise the
command starts `prefect server start` on 127.0.0.1 (what Prefect's own temporary server does, but
launched before the heavy imports instead of after them) and stops it when the command ends.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from runner.processes import die_with_parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# What a plain run's server keeps: the services that turn the run's events into task runs and stored
# events (so that the UI, opened later on the same database, shows the run graph); nothing that
# schedules, reschedules, cancels or reacts.
RECORDING_ONLY = {f"PREFECT_SERVER_SERVICES_{name}_ENABLED": value for name, value in {
    "TASK_RUN_RECORDER": "true", "EVENT_PERSISTER": "true",
    "SCHEDULER": "false", "LATE_RUNS": "false", "FOREMAN": "false", "PAUSE_EXPIRATIONS": "false",
    "CANCELLATION_CLEANUP": "false", "REPOSSESSOR": "false", "TRIGGERS": "false", "CLEANUP_RECONCILER": "false",
    "DB_VACUUM": "false"}.items()}


class TemporaryServer:
    """`prefect server start` on a loopback port, stopped when the command ends.

    Without `services` (a plain run) it has no UI and records only (`RECORDING_ONLY`). With them
    (`tlpipe serve`) the scheduler creates the scheduled runs and the UI shows them, on `port` if it
    is free.
    """

    def __init__(self, services: bool = False, port: int | None = None) -> None:
        self.port = port if port is not None and _port_free(port) else _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        prefect = Path(sys.executable).with_name("prefect")
        command = [str(prefect) if prefect.exists() else "prefect", "server", "start", "--host", "127.0.0.1",
                   "--port", str(self.port)]
        environment = dict(os.environ)
        if not services:
            command += ["--no-ui"]
            environment.update(RECORDING_ONLY)
        self.process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True, preexec_fn=die_with_parent)
        atexit.register(self.stop)

    def wait(self, timeout: float) -> str:
        """Blocks until the API answers; returns its URL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                detail = self.process.stderr.read().decode(errors="replace")[-2000:] if self.process.stderr else ""
                raise RuntimeError(f"the temporary Prefect server exited with code {self.process.returncode}: {detail}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if response.status == 200:
                        return self.url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def settle(api_url: str, flow_run_id: str, timeout: float = 15.0) -> bool:
    """Waits until the server has recorded the task runs of `flow_run_id` in final states (a task
    run reaches the database through an event, after the flow has returned); True when it has. A
    temporary server stopped before that would leave the UI without the run's graph."""
    import json

    final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    body = json.dumps({"flow_runs": {"id": {"any_": [flow_run_id]}}}).encode()
    deadline, previous = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{api_url}/task_runs/filter", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                states = sorted((run["id"], (run.get("state") or {}).get("type")) for run in json.load(response))
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            states = None
        if states and states == previous and all(kind in final for _, kind in states):
            return True
        previous = states
        time.sleep(0.2)
    return False


def start_if_needed() -> TemporaryServer | None:
    """A temporary server, unless PREFECT_API_URL points at one already."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    return TemporaryServer()


@contextlib.contextmanager
def command_api():
    """The temporary server of one command (None when PREFECT_API_URL names a server), stopped when
    the block ends, whichever way: a command called in a long-lived process leaves no server behind."""
    server = start_if_needed()
    try:
        yield server
    finally:
        if server is not None:
            server.stop()
