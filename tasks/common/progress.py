"""Progress reporting that the CLI can watch without the tasks knowing who watches.

Tasks call `advance(stage, n)`; the CLI installs a reporter (a progress bar). In a deployment
nobody installs one, and the calls cost nothing.
"""
from __future__ import annotations

import threading
from typing import Protocol


class Reporter(Protocol):
    def begin(self, stage: str, total: int) -> None: ...
    def advance(self, stage: str, n: int = 1) -> None: ...
    def end(self, stage: str) -> None: ...


class _Silent:
    def begin(self, stage: str, total: int) -> None: ...
    def advance(self, stage: str, n: int = 1) -> None: ...
    def end(self, stage: str) -> None: ...


_reporter: Reporter = _Silent()
_lock = threading.Lock()


def install(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter or _Silent()


def begin(stage: str, total: int) -> None:
    with _lock:
        _reporter.begin(stage, total)


def advance(stage: str, n: int = 1) -> None:
    with _lock:
        _reporter.advance(stage, n)


def end(stage: str) -> None:
    with _lock:
        _reporter.end(stage)
