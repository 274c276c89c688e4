"""The `tlpipe` command."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from flows import cli_ops
from flows.console import bad_input, err, open_project, out, project_root, run_flow, server_timeout
from flows.server import command_api
from project import config, paramfiles

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Transfer-learning pipeline: prune, pretrain, distill, fine-tune, evaluate.")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"tlpipe {version('tlpipe')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _commands(
    _version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Transfer-learning pipeline: prune, pretrain, distill, fine-tune, evaluate."""


@app.command()
def run(
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a parameter: STAGE.KEY=VALUE (YAML value); written to params/STAGE.yaml."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Set the params of a preset first (params/presets/NAME.yaml, or a YAML file), e.g. resnet50-224; written to params/ as -s values are, and -s still applies after it."),
    refresh: list[str] = typer.Option([], "--refresh", help="Run this stage even if cached ('all' for every stage). Repeatable."),
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage (and run only what it needs)."),
    project: Optional[Path] = typer.Option(None, "--project", help="Project folder (default: nearest folder with dvc.yaml)."),
) -> None:
    """Run the pipeline (cached stages are reused); prints a results table and where to look."""
    from runner.spec import load_pipeline

    try:
        root = open_project(project)
        stages = [spec.name for spec in load_pipeline(root)]
        for name in [*refresh, *([until] if until else [])]:
            if name != "all" and name not in stages:
                raise config.ParamsError(f"unknown stage {name!r}; stages are {', '.join(stages)} (or 'all' for --refresh)")
        set_ = [*(paramfiles.load_preset(root, preset) if preset else []), *set_]
        paramfiles.apply_overrides(paramfiles.load_all_params(root), set_)  # a typo fails before anything starts
    except config.ParamsError as exc:
        raise bad_input(str(exc))
    check_backends(root)
    with command_api() as server:  # boots while the pipeline loads and is checked
        result = _run(root, server, set_, refresh, until)
    print_summary(root, result)


def _run(root: Path, server, set_: list[str], refresh: list[str], until: str | None) -> dict:
    from flows.pipeline import pipeline
    from runner import keys, snapshot, tracking
    from runner.lock import project_lock
    from runner.spec import load_pipeline, select_stages

    waiting = lambda: err.print(f"another pipeline run holds {root}; waiting for it", highlight=False)  # noqa: E731
    with project_lock(root, on_wait=waiting):  # the snapshot is taken, and the run made, under the lock
        try:
            device = keys.device_name()
            stages = select_stages(load_pipeline(root), until)
            taken = snapshot.take(root, set_, stages)
        except (config.ParamsError, ValueError, FileNotFoundError) as exc:
            raise bad_input(str(exc))
        try:
            # Work the flow needs anyway, done while the server boots: the MLflow store.
            tracking.configure(root)
            tracking.client()
            api = server.wait(server_timeout()) if server else None
            result = run_flow(pipeline, api_url=api, temporary=server is not None, project=str(root), snapshot=taken.as_dict(), refresh=refresh,
                              until=until, device=device)
        except Exception as exc:  # the stage's own traceback is already in the Prefect log above
            err.print(f"[bold red]error:[/] pipeline failed: {type(exc).__name__}: {exc}", highlight=False)
            raise typer.Exit(1)
    return result


def check_backends(root: Path) -> None:
    """Ends the command (exit 2) when a configured Prefect API, MLflow server or DVC remote does not answer."""
    from flows.doctor import unreachable

    problems = unreachable(root)
    if problems:
        raise bad_input("; ".join(problems))


@app.command(name="lineage")
def lineage_command(
    ref: str = typer.Argument(..., help="An output path under data/, an MLflow run id, a Prefect flow-run id, or a registered model (name/version, name@alias)."),
    as_json: bool = typer.Option(False, "--json", help="Print the lineage document as JSON."),
    project: Optional[Path] = typer.Option(None, "--project", help="Project folder (default: nearest folder with dvc.yaml)."),
) -> None:
    """Where an artifact came from: every stage of the run that made it, ran or cached, with keys, params, data hashes and metrics."""
    import json

    root = project_root(project)
    from flows.doctor import refused
    from runner import lineage, tracking

    tracking.configure(root)
    problems = refused(root)  # a server that is down is answered from the stored document; one that refuses is not
    if problems:
        raise bad_input("; ".join(problems))
    try:
        doc, focus, warnings = lineage.resolve(ref, root)
    except (ValueError, LookupError) as exc:  # not a reference, or one that nothing answers for
        raise bad_input(str(exc))
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if as_json:
        print(json.dumps({"ref": ref, "stage": focus, "warnings": warnings, **doc}, indent=1, sort_keys=True))
    else:
        out.print(lineage.render(doc, focus=focus), highlight=False, markup=False)


@app.command()
def sweep(
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Sweep file (default: params/sweep.yaml of the project)."),
    project: Optional[Path] = typer.Option(None, "--project", help="Project folder (default: nearest folder with dvc.yaml)."),
) -> None:
    """Run the pruning sweep (methods x ratios x seeds) on Dask; prints the summary and where the table is."""
    try:
        root = open_project(project)
        path = (file or paramfiles.params_path(root, "sweep")).resolve()
        spec = paramfiles.load_sweep(path, methods=config.SCHEMA["prune"]["method"].choices, base=paramfiles.load_all_params(root))
    except config.ParamsError as exc:
        raise bad_input(str(exc))
    check_backends(root)
    with command_api() as server:
        result = _sweep(root, server, spec, path)
    print_sweep_summary(Path(result["results"]))
    out.print(f"MLflow run: {result['mlflow_run_id']}   Prefect flow run: {result['flow_run_id']}")
    out.print(f"results: {result['results']}/results.parquet (and .csv, summary.csv, plots)", highlight=False)


def _sweep(root: Path, server, spec: dict, path: Path) -> dict:
    from flows.sweep import sweep as sweep_flow, task_runner
    from runner import keys, tracking
    from runner.snapshot import preflight
    from runner.spec import load_pipeline

    try:
        device = keys.device_name()
        preflight(root, load_pipeline(root), spec["params"])
    except (config.ParamsError, ValueError, FileNotFoundError) as exc:
        raise bad_input(str(exc))
    try:
        tracking.configure(root)
        api = server.wait(server_timeout()) if server else None
        configured = sweep_flow.with_options(task_runner=task_runner(spec["cluster"]))
        # Dask workers inherit PREFECT_API_URL; without it each would start a Prefect server of its own.
        with _environment(PREFECT_API_URL=api):
            return run_flow(configured, api_url=api, temporary=server is not None, project=str(root), sweep_file=str(path), device=device)
    except Exception as exc:
        err.print(f"[bold red]error:[/] sweep failed: {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(1)


@contextlib.contextmanager
def _environment(**values: str | None):
    """Sets the environment variables that have a value for the block, then restores them."""
    saved = {name: os.environ.get(name) for name, value in values.items() if value}
    os.environ.update({name: value for name, value in values.items() if value})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def print_sweep_summary(folder: Path) -> None:
    import pandas as pd

    from project import sweeps

    table = pd.read_parquet(folder / "results.parquet")
    metrics = sweeps.probe_columns(table.columns) + ["pretrain_time_s"]
    view = Table(title="pruning sweep: mean ± std over seeds")
    for column in ("method", "ratio", *metrics):
        view.add_column(column, justify="left" if column == "method" else "right")
    summaries = {m: sweeps.summarise(table, m).set_index(["method", "ratio"]) for m in metrics}
    for method, ratio in summaries[metrics[0]].index:
        cells = []
        for m in metrics:
            row = summaries[m].loc[(method, ratio)]
            cells.append(f"{row['mean']:.3f} ± {0.0 if pd.isna(row['std']) else row['std']:.3f}")
        view.add_row(str(method), f"{ratio:.2f}", *cells)
    out.print(view)


def print_summary(root: Path, result: dict) -> None:
    table = Table(title="tlpipe run", show_lines=False)
    for column in ("stage", "status", "seconds", "result"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    by_stage = {r["stage"]: r for r in result["stages"]}
    for r in result["stages"]:
        status = {"ran": "[green]ran[/]", "cached": "[cyan]cached[/]", "restored": "[cyan]restored[/]"}[r["status"]]
        table.add_row(r["stage"], status, f"{r['seconds']:.1f}", r.get("headline", ""))
    out.print(table)
    if "evaluate" in by_stage:
        out.print(_transfer_table(by_stage["evaluate"]["metrics"]))
    out.print(f"MLflow run: {result['mlflow_run_id']}   Prefect flow run: {result['flow_run_id']}")
    uri = result["tracking_uri"]
    out.print("Look at it:", highlight=False)
    out.print(f"  mlflow ui --backend-store-uri {uri}", highlight=False)
    out.print(f"  {prefect_ui(result['flow_run_id'])}", highlight=False)
    out.print("  dvc metrics show   |   dvc plots show   |   dvc dag --md", highlight=False)
    if "evaluate" in by_stage:
        out.print(f"  report: {root / 'data' / 'evaluate' / 'report.md'} (and report.html)", highlight=False)
    if result.get("registered"):
        reg = result["registered"]
        state = "registered as" if reg["new_version"] else "already registered as"
        out.print(f"  model: {state} models:/{reg['model']}/{reg['version']}", highlight=False)
        if "alias" in reg:
            out.print(f"  {reg['alias']}: {reg['reason']}", highlight=False)


def prefect_ui(flow_run_id: str) -> str:
    """Where the flow run's page is: on the configured server's UI, or on the UI of a `prefect server
    start` over the database this run's temporary server wrote to."""
    api = os.environ.get("PREFECT_API_URL", "")
    if api:
        return f"Prefect UI: {api.rstrip('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}"
    return f"prefect server start   (then http://127.0.0.1:4200/runs/flow-run/{flow_run_id})"


def _transfer_table(m: dict) -> Table:
    table = Table(title="few-shot linear probe, target test (mean ± std)")
    shots = list(next(iter(m["transfer"].values())))
    table.add_column("backbone")
    for s in shots:
        table.add_column(s, justify="right")
    for name, by_shots in m["transfer"].items():
        table.add_row(name, *(f"{by_shots[s]['mean']:.3f} ± {by_shots[s]['std']:.3f}" for s in shots))
    return table


def _interrupt(signum, frame) -> None:
    """SIGTERM (a scheduler, `kill`, a stopping container) ends a run as Ctrl-C does: the stage's
    temporary outputs are removed and its MLflow runs end as KILLED, not left RUNNING."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    """Runs the command, then ends the process without tearing down every module it imported.

    The stages import torch, transformers, datasets, Prefect, MLflow and DVC; unloading them at exit
    takes seconds and has no effect. Non-daemon threads are joined and atexit handlers (Prefect's log
    and event workers, the temporary server) run first; the last handler then flushes and exits.
    """
    code = 0

    def finish() -> None:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)

    atexit.register(finish)  # registered first, so it runs last
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        raise
    except BaseException:
        code = 1
        raise


app.command()(cli_ops.serve)
app.command(name="deploy")(cli_ops.deploy_command)
app.command()(cli_ops.doctor)


if __name__ == "__main__":  # python -m flows.cli
    main()
