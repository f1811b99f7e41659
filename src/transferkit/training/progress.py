"""A transient rich progress bar (silent when the console is quiet or not a terminal: piped
output gets the result lines alone, not a blank line per bar)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class progress_bar:
    """``with progress_bar(console, "epoch 1/10", total) as (progress, task): progress.update(task, advance=1)``."""

    def __init__(self, console: Console, description: str, total: int):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=console.quiet or not console.is_terminal,
        )
        self.description, self.total = description, total

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task(self.description, total=self.total, status="")
        return self.progress, task

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)
