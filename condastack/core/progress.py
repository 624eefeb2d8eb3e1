"""Progress of long steps: library functions report, the CLI draws.

A library function takes `meter: Meter | None` and calls it as
`meter(task, done, total, unit)`: `task` names the step ("download", "link",
"pack", "unpack"), `done` and `total` count `unit`s ("files", "packages" or
"bytes"; `total` None while unknown). It may be called from any thread.

`terminal_meter` draws rich progress bars on stderr (count or bytes, rate,
time left), and only when stderr is a terminal; otherwise it yields None, so
nothing is drawn with -q or in a pipe or a log.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator

Meter = Callable[[str, int, "int | None", str], None]


def report(meter: Meter | None, task: str, done: int, total: int | None, unit: str) -> None:
    if meter is not None:
        meter(task, done, total, unit)


@contextlib.contextmanager
def terminal_meter(enabled: bool = True) -> Iterator[Meter | None]:
    """A Meter drawing rich bars on stderr while the block runs; None unless stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich import filesize  # lazy: terminals only
    from rich.console import Console  # lazy: terminals only
    from rich.progress import (  # lazy: terminals only
        BarColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )

    bars = Progress(TextColumn("{task.description:<9}"), BarColumn(), TextColumn("{task.fields[amount]}"),
                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=Console(stderr=True))
    tasks: dict[str, TaskID] = {}
    lock = threading.Lock()

    def meter(task: str, done: int, total: int | None, unit: str) -> None:
        with lock:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total, amount="", rate="")
            tid = tasks[task]
            elapsed = bars.tasks[tid].elapsed or 0.0
            speed = done / elapsed if elapsed > 0 else 0.0
            if unit == "bytes":
                amount = filesize.decimal(done) + (f"/{filesize.decimal(total)}" if total else "")
                rate = f"{filesize.decimal(int(speed))}/s"
            else:
                amount = f"{done}" + (f"/{total}" if total else "") + f" {unit}"
                rate = f"{speed:.0f} {unit}/s"
            bars.update(tid, completed=done, total=total, amount=amount, rate=rate)

    with bars:
        yield meter


__all__ = ["Meter", "report", "terminal_meter"]
