"""`python -m tasks.<stage>`, the command dvc.yaml gives each stage: `dvc repro` runs stages this way."""

from __future__ import annotations

import sys
from pathlib import Path

from project.config import ParamsError

from runner import keys, snapshot, tracking
from runner.core import MissingInput, run_stage
from runner.lock import project_lock
from runner.progress import ConsoleProgress
from runner.recorder import Recorder
from runner.spec import load_pipeline
from runner.workspace import ProjectWorkspace

EXIT_BAD_INPUT = 2


def main(stage: str) -> None:
    """Runs one stage in the project of the current folder, always computing it (DVC decided it must
    run), with the params files as they are; bad input ends with one line and exit code 2."""
    project = Path.cwd().resolve()
    workspace = ProjectWorkspace(project)
    with project_lock(project):
        try:
            spec = next(s for s in load_pipeline(project) if s.name == stage)
            params = snapshot.take(project, (), [spec]).stage(stage)
            device = keys.device_name()
        except (ParamsError, FileNotFoundError, ValueError) as exc:
            bad_input(exc)
        workspace.remove_stale()
        tracking.configure(project)
        tracking.close_abandoned_runs()
        observers = [Recorder(None, {"tlpipe.runner": "dvc"}, project), ConsoleProgress()]
        try:
            run_stage(spec, params, workspace, device=device, observers=observers, refresh=True)
        except MissingInput as exc:  # raised before anything runs: bad input, not a stage failure
            bad_input(exc)


def bad_input(exc: Exception) -> None:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT) from None
