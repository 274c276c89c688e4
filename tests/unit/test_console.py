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
