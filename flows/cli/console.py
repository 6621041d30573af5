"""A failed flow said once on the terminal: by the command, in one line.

When a task fails with a user's mistake or a file problem (a ValueError or an OSError: a bad value, a full disk),
the command prints it as one line (flows.cli.main). Prefect's console handler would first print the task's
traceback, its "Finished in state Failed(...)", the flow's traceback and its own "Finished in state Failed(...)":
four copies. This filter drops those from the terminal only; the API handler still sends them whole to the
Prefect UI's Logs tab, and an error of any other kind (a bug) keeps its traceback everywhere."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_KEY = 60  # characters of an exception's text that identify its later mentions (repr may escape the rest)


class SaidOnceByTheCommand(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.said: set[str] = set()  # the failures this command will say itself

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_RUN_LOGGERS):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and isinstance(error, (ValueError, OSError)):
            self.said.add(str(error)[:_KEY])
            return False
        if not self.said:
            return True
        text = record.getMessage()  # "Finished in state Failed('... DiskFullError: ...')" (a flow's is INFO)
        return not any(key and key in text for key in self.said)


@contextmanager
def failures_said_once() -> Iterator[None]:
    """For one command: the filter on Prefect's console handler(s) (after Prefect has set up logging), removed
    after it, so what one command said never hides another's."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    said = SaidOnceByTheCommand()
    for handler in handlers:
        handler.addFilter(said)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(said)
