"""The CLI's console shows one line per event; tracebacks go to the run's log file.

A failed stage used to print about sixty lines of Prefect tracebacks before the one line that
says what happened. The console handler now drops tracebacks (the first line of the message
stays), and a file handler under the state directory keeps every record in full, so the CLI
can end a failure with one clean error and the path of the full log.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s - %(message)s"


class _WithoutTraceback(logging.Formatter):
    """Another formatter's output, minus the traceback and stack of the record."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            text = self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        head, _, rest = text.partition("\nTraceback (most recent call last)")
        return head + (" (traceback in the run log)" if rest else "")


def tracebacks_to_file(home: Path, name: str = "run") -> Path:
    """Route full records (with tracebacks) to home/logs/<name>-<time>.log; the console keeps one line each."""
    from prefect.logging.handlers import PrefectConsoleHandler

    log_file = home / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    file_handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(file_handler)
    for logger in [root, *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _WithoutTraceback):
                handler.setFormatter(_WithoutTraceback(handler.formatter))
    return log_file
