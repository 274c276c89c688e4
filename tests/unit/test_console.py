"""The console of the CLI and of stage progress: whole lines into a pipe or a file."""

import io

from runner.progress import PIPE_WIDTH, ConsoleProgress, make_console


def test_a_console_writing_into_a_pipe_does_not_wrap(capsys):
    console = make_console()
    assert not console.is_terminal and console.width == PIPE_WIDTH
    line = "x" * 300 + " end"
    console.print(line, highlight=False)
    assert capsys.readouterr().out == line + "\n"


def test_a_table_row_stays_whole_when_not_on_a_terminal():
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("stage")
    table.add_column("result")
    table.add_row("pretrain", "val acc 0.966; 26624 imgs in 10.5s of training (20% of full source, full est. 52s)")
    console = make_console()
    console.file = io.StringIO()
    console.print(table)
    rows = [line for line in console.file.getvalue().splitlines() if "pretrain" in line]
    assert len(rows) == 1 and "full est. 52s)" in rows[0]
    narrow = Console(file=io.StringIO(), width=80)  # what rich does by default into a pipe
    narrow.print(table)
    assert "full est. 52s)" not in [line for line in narrow.file.getvalue().splitlines() if "pretrain" in line][0]
    assert isinstance(ConsoleProgress().console, Console) and ConsoleProgress().console.width == PIPE_WIDTH


def test_a_resumed_stage_says_where_it_took_over_and_prints_only_the_epochs_it_trains():
    from rich.console import Console

    from runner.events import StageRun
    from runner.spec import StageSpec

    console = Console(file=io.StringIO(), width=PIPE_WIDTH)
    progress = ConsoleProgress(console=console)
    run = StageRun(StageSpec("pretrain", "python -m tasks.pretrain", (), {}, ()), {}, "k", {}, "cpu")
    progress.stage_resumed(run, "train", 3, 5)
    for epoch in range(1, 5):  # the loop reports the two saved epochs again, then trains 3 and 4
        progress.stage_progress(run, epoch, 4, "epochs", {"train_loss": 1.0 / epoch})
    assert console.file.getvalue().splitlines() == [
        "pretrain resumed at epoch 3 of 4 (epochs 1-2 from the checkpoint; 5 batches of epoch 3 done)",
        "pretrain epochs 3/4  train_loss=0.3333",
        "pretrain epochs 4/4  train_loss=0.25",
    ]


def test_resumed_lines_name_the_epochs_from_the_checkpoint():
    from runner.progress import resumed_line

    assert resumed_line("distill", 2, 0, 4) == "distill resumed at epoch 2 of 4 (epoch 1 from the checkpoint)"
    assert resumed_line("distill", 1, 7, 4) == "distill resumed at epoch 1 of 4 (7 batches of epoch 1 done)"
