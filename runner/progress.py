"""Progress of computing stages on the console: a live bar on a terminal, one line per epoch otherwise
(CI logs), nothing when turned off."""

from __future__ import annotations

from runner.events import Observer, StageRun

PIPE_WIDTH = 10_000  # lines written to a file or a pipe are not wrapped: the reader's tools wrap them


def make_console(stderr: bool = False):
    """A rich console for people: on a terminal as wide as the terminal; into a pipe or a file (CI
    logs, `| grep`, `> out.txt`) every line and table row whole, never wrapped at 80 columns."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console


def resumed_line(stage: str, epoch: int, batch: int, total: int) -> str:
    """`pretrain resumed at epoch 3 of 4 (epochs 1-2 from the checkpoint)`."""
    done = {1: "", 2: "epoch 1 from the checkpoint"}.get(epoch, f"epochs 1-{epoch - 1} from the checkpoint")
    within = f"{batch} batches of epoch {epoch} done" if batch else ""
    detail = "; ".join(part for part in (done, within) if part)
    return f"{stage} resumed at epoch {epoch} of {total}" + (f" ({detail})" if detail else "")


class ConsoleProgress(Observer):
    def __init__(self, show: bool = True, console=None):
        self.show = show
        self.console = console or make_console(stderr=True)
        self.live = show and self.console.is_terminal
        self._bars: dict[str, tuple] = {}  # label -> (rich Progress, its task)
        self._resumed: dict[str, tuple[int, int]] = {}  # stage -> (epoch, batch) its next progress resumes at
        self._replayed: dict[tuple[str, str], int] = {}  # (stage, label) -> first epoch trained in this run

    def stage_resumed(self, run: StageRun, loop: str, epoch: int, batch: int) -> None:
        self._resumed[run.spec.name] = (epoch, batch)

    def stage_progress(self, run: StageRun, step: int, total: int, label: str, metrics: dict) -> None:
        if not self.show:
            return
        stage = run.spec.name
        if stage in self._resumed:  # the epochs from the checkpoint come first: say so once, not as training
            epoch, batch = self._resumed.pop(stage)
            self._replayed[stage, label] = epoch
            self.console.print(resumed_line(stage, epoch, batch, total), highlight=False)
        if step < self._replayed.get((stage, label), 0):
            if self.live:
                bar, task = self._bars.get(label) or self._open(run, total, label)
                bar.update(task, completed=step)
            return
        summary = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        if not self.live:
            self.console.print(f"{run.spec.name} {label} {step}/{total}  {summary}", highlight=False)
            return
        bar, task = self._bars.get(label) or self._open(run, total, label)
        bar.update(task, completed=step, summary=summary)
        if step >= total:
            self._close(label)

    def _open(self, run: StageRun, total: int, label: str) -> tuple:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn(f"[bold]{run.spec.name}[/] {label}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("{task.fields[summary]}"), console=self.console)
        bar.start()
        self._bars[label] = bar, bar.add_task(label, total=total, summary="")
        return self._bars[label]

    def _close(self, label: str) -> None:
        bar, _ = self._bars.pop(label)
        bar.stop()

    def _close_all(self, run: StageRun, *_) -> None:
        for label in list(self._bars):
            self._close(label)

    stage_finished = stage_failed = stage_interrupted = _close_all
