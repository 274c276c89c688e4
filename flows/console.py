"""What every `tlpipe` command shares: the consoles, finding the project, one-line errors, calling a flow."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from runner.progress import make_console
from project import config

err = make_console(stderr=True)
out = make_console()
EXIT_BAD_INPUT = 2

QUIET_DEFAULTS = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar per artifact read; ask for it with =true
}


def find_project(start: Path) -> Path:
    """The nearest folder at or above `start` holding dvc.yaml."""
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    raise config.ParamsError(f"no dvc.yaml in {start} or any parent folder; run inside a tlpipe project or pass --project")


def open_project(project: Path | None) -> Path:
    """Quiets the tools (unless the environment says otherwise) and finds the project root."""
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return find_project((project or Path.cwd()).resolve())


def project_root(project: Path | None) -> Path:
    """`open_project`, ending the command with exit code 2 when there is no project."""
    try:
        return open_project(project)
    except config.ParamsError as exc:
        raise bad_input(str(exc))


def bad_input(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_BAD_INPUT)


def server_timeout() -> float:
    return float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])


def run_flow(flow_fn, api_url: str | None = None, temporary: bool = False, **kwargs) -> dict:
    """Calls a flow (against `api_url` when given) without the sync engine's one-second heartbeat join;
    returns its result, raising as the flow did. With a `temporary` server, waits until the server has
    recorded the run's task runs (they arrive as events), so that stopping it loses none of them."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.server import settle

    updates = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    if api_url:
        updates[PREFECT_API_URL] = api_url
    with temporary_settings(updates=updates):
        try:
            state = flow_fn(**kwargs, return_state=True)
        finally:  # the flow's logs and events reach the API before the command may stop it
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
            EventsWorker.drain_all(timeout=5)
    if api_url and temporary:
        settle(api_url, str(state.state_details.flow_run_id))
    return state.result()
