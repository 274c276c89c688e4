"""What happens to a stage run, as events, and the observers that act on them.

The runner decides whether a stage is reused or computed and what a failure leaves behind; everything
around it (the MLflow child run, the DVC commit, lineage, the console) is an `Observer` that the
caller hands to the runner, in the manner of Kedro's node hooks. An observer defines the hooks it
needs; the others do nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.spec import StageSpec

RAN, CACHED, RESTORED = "ran", "cached", "restored"
log = logging.getLogger(__name__)


def is_timing(key: str) -> bool:
    """Seconds and per-second rates (`wall_time_s`, `images_per_s`): they differ from run to run."""
    return key.endswith("_s")


RESUME_FACTS = ("resumed_from_epoch", "resumed_from_batch")  # where an attempt took over from a checkpoint


def varies_by_attempt(key: str) -> bool:
    """Metrics of one attempt at a stage rather than of its outputs (timings, where it resumed): kept
    out of the metrics file, which downstream stages read, and recorded with the run."""
    return is_timing(key) or key in RESUME_FACTS


@dataclass
class StageRun:
    """One stage on its way through the runner. Observers may note ids in `record` (for example the
    MLflow run id); the record is stored with the outputs, so a later reuse can point back at it."""

    spec: StageSpec
    params: dict
    key: str
    deps: dict[str, str]
    device: str
    inputs: dict[str, Path] = field(default_factory=dict)  # data dependencies -> where they are
    outputs: dict[str, Path] = field(default_factory=dict)  # declared outputs -> where they are
    record: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """How a stage ended: ran, or reused (cached: outputs in place; restored: put back from DVC).
    `metrics` are all the stage reported, timings included (its metrics file holds the rest)."""

    stage: str
    status: str
    key: str
    deps: dict[str, str]
    outs: dict[str, str]
    metrics: dict
    produced_by: str | None  # MLflow run id of the run that computed these outputs
    seconds: float = 0.0
    headline: str = ""  # the stage's result in one line, for people
    model_uri: str | None = None  # where an observer stored the stage's model (finetune)

    def summary(self) -> dict:
        """The plain record the flows return and lineage stores."""
        return {"stage": self.stage, "status": self.status, "cache_key": self.key, "deps": self.deps,
                "seconds": self.seconds, "outs": self.outs, "metrics": self.metrics,
                "mlflow_run_id": self.produced_by, "headline": self.headline, "model_uri": self.model_uri}


class Observer:
    """Hooks around stage runs; each does nothing unless an observer overrides it."""

    def stage_started(self, run: StageRun) -> None:
        """Before the stage computes (not called when its outputs are reused)."""

    def stage_progress(self, run: StageRun, step: int, total: int, label: str, metrics: dict) -> None:
        """Once per epoch (or other step) of a computing stage."""

    def stage_resumed(self, run: StageRun, loop: str, epoch: int, batch: int) -> None:
        """The stage's training loop `loop` took up its checkpoint: it trains from `epoch` on (`batch`
        batches of it done); the epochs before are then reported again as progress."""

    def stage_metrics(self, run: StageRun, metrics: dict, step: int | None) -> None:
        """Figures a computing stage reports outside its epochs."""

    def stage_artifact(self, run: StageRun, path: Path, artifact_path: str | None) -> None:
        """A file the stage wants people to see beside its outputs."""

    def stage_model(self, run: StageRun, model: Any, input_example: Any) -> str | None:
        """The stage's deployable model; an observer that stores it returns its URI."""

    def stage_finished(self, run: StageRun, outcome: Outcome) -> None:
        """The stage computed its outputs, which are in place and hashed."""

    def stage_cached(self, run: StageRun, outcome: Outcome) -> None:
        """The outputs of an earlier run with the same key were found in place."""

    def stage_restored(self, run: StageRun, outcome: Outcome) -> None:
        """The outputs of an earlier run with the same key were put back from the DVC cache or remote."""

    def stage_failed(self, run: StageRun, error: BaseException) -> None:
        """The stage (or an observer's `stage_started`) raised; nothing it wrote was kept. Delivered to
        every observer, also one whose `stage_started` was not reached."""

    def stage_interrupted(self, run: StageRun) -> None:
        """The stage was stopped (Ctrl-C, a termination signal: any exception that is not an
        `Exception`); nothing it wrote was kept."""


class Events:
    """Delivers each event to every observer, in order."""

    def __init__(self, observers=()):
        self.observers: list[Observer] = list(observers)

    def emit(self, hook: str, *args) -> None:
        for observer in self.observers:
            getattr(observer, hook)(*args)

    def emit_each(self, hook: str, *args) -> None:
        """Delivers the event to every observer even when one of them raises (what ends a stage's run
        must reach each observer: an MLflow run left RUNNING, a lock left held); their errors are logged."""
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                log.exception("%s.%s failed", type(observer).__name__, hook)

    def first(self, hook: str, *args):
        """The first answer an observer gives to `hook` (None when none answers)."""
        for observer in self.observers:
            answer = getattr(observer, hook)(*args)
            if answer is not None:
                return answer
        return None
