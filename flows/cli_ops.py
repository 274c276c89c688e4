"""The operations commands of `tlpipe`: serve and deploy the deployments of prefect.yaml, and doctor
(registered on the app by flows/cli.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from flows.console import bad_input, err, out, project_root, server_timeout


def open_deployments(project: Path | None, names: list[str]) -> Path:
    """The project root, after checking its prefect.yaml declares the named deployments (exit 2 if not)."""
    from flows import deploy

    root = project_root(project)
    try:
        deploy.load_deployments(root, names or None)
    except ValueError as exc:
        raise bad_input(str(exc))
    return root


def serve(
    deployment: list[str] = typer.Option([], "--deployment", "-d", help="Serve only this deployment of prefect.yaml (repeatable)."),
    interval: Optional[float] = typer.Option(None, "--interval", min=1, help="Run every INTERVAL seconds instead of the declared schedules (for trying it out)."),
    project: Optional[Path] = typer.Option(None, "--project", help="Project folder (default: nearest folder with dvc.yaml)."),
) -> None:
    """Run the deployments of prefect.yaml on their schedules from this process (Ctrl-C pauses them)."""
    from flows import deploy

    root = open_deployments(project, deployment)
    if not os.environ.get("PREFECT_API_URL"):  # schedules need a real server with its scheduler
        from flows.server import TemporaryServer

        server = TemporaryServer(services=True, port=4200)  # stopped when the command ends
        os.environ["PREFECT_API_URL"] = server.wait(server_timeout())
        out.print(f"Prefect server for this session: {os.environ['PREFECT_API_URL'].removesuffix('/api')} "
                  "(set PREFECT_API_URL to use a lasting one)", highlight=False)
    deploy.serve(root, deployment or None, interval)


def deploy_command(
    deployment: list[str] = typer.Option([], "--deployment", "-d", help="Deploy only this deployment of prefect.yaml (repeatable)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=0, help="GPUs the gpu pool's workers use (default: the GPUs torch sees here); one concurrency limit each."),
    project: Optional[Path] = typer.Option(None, "--project", help="Project folder (default: nearest folder with dvc.yaml)."),
) -> None:
    """Register the deployments of prefect.yaml with the Prefect server, creating the cpu/gpu work pools."""
    from flows import deploy

    root = open_deployments(project, deployment)
    if not os.environ.get("PREFECT_API_URL"):
        raise bad_input("deployments live on a Prefect server: start one (`prefect server start`) and set "
                        "PREFECT_API_URL, e.g. http://127.0.0.1:4200/api")
    from flows.doctor import check_prefect

    (server,) = check_prefect()[:1]
    if not server["ok"]:
        err.print(f"[bold red]error:[/] the Prefect server at {server['setting']} gives {server['detail']}", highlight=False)
        raise typer.Exit(1)
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    created = deploy.ensure_pools_and_limits(gpus)
    for pool in created["pools"]:
        out.print(f"created work pool {pool} (process)")
    for limit in created["limits"]:
        out.print(f"created concurrency limit {limit} (1 slot)")
    done = deploy.deploy(root, deployment or None)
    if done.returncode != 0:
        err.print(f"[bold red]error:[/] prefect deploy failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}", highlight=False)
        raise typer.Exit(1)
    out.print(done.stdout.strip(), highlight=False, markup=False)
    out.print("Start workers:  prefect worker start --pool cpu   |   CUDA_VISIBLE_DEVICES=0 prefect worker start --pool gpu",
              highlight=False)


def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    project: Optional[Path] = typer.Option(None, "--project", help="Project folder (default: nearest folder with dvc.yaml)."),
) -> None:
    """Show which backends (Prefect, MLflow, DVC remote, shared storage, device) are configured and reachable."""
    import json

    from flows.doctor import diagnose

    rows = diagnose(root := project_root(project))
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        table = Table(title=f"tlpipe doctor: {root}")
        for column in ("component", "setting", "state", "detail"):
            table.add_column(column, overflow="fold")  # a path or URL is folded on a narrow terminal, never cut
        marks = {True: "[green]ok[/]", False: "[red]failing[/]", None: "[cyan]local[/]"}
        for r in rows:
            state = "[yellow]warning[/]" if r.get("warning") else marks[r["ok"]]
            table.add_row(r["component"], r["setting"], state, r["detail"] + (f"; {r['warning']}" if r.get("warning") else ""))
        out.print(table)
    if any(r["ok"] is False for r in rows):
        raise typer.Exit(1)
