"""Run state shared by the poll loop and the stage threads: stop, abort, crash, progress, counters.

* **stop** (SIGTERM/SIGINT, idle exit, a crash): take no more records, let the
  pipeline finish and deliver what it holds, commit, leave the group.
* **abort** (grace expired, or a stage crashed): give up on in-flight work; it
  is replayed from the last commit by whoever owns the partition next.
* **progress**: the deliver stage finished a batch, which wakes a poll loop that
  is paused by backpressure so it commits and resumes at once.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from types import FrameType

import structlog

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_GRACE_EXPIRED = 1
EXIT_FATAL = 2


@dataclass
class RunStats:
    """What the worker did, logged once at exit."""

    records: int = 0
    verdicts: int = 0
    dead_letters: int = 0
    dropped: int = 0
    batches: int = 0
    stale_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Lifecycle:
    def __init__(self, shutdown_grace_s: float) -> None:
        self.shutdown_grace_s = shutdown_grace_s
        self.stop = threading.Event()
        self.abort = threading.Event()
        self.progress = threading.Event()
        self.fatal: BaseException | None = None
        self.stats = RunStats()

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Signal handler and idle exit: begin draining."""
        if not self.stop.is_set():
            log.info("stop_requested", signal=signum, grace_s=self.shutdown_grace_s)
        self.stop.set()

    def crash(self, stage: str, exc: BaseException) -> None:
        """A bug in a stage: stop cleanly and replay what is not committed."""
        self.fatal = exc
        log.error("stage_crashed", stage=stage, exc_info=exc)
        self.stop.set()
        self.abort.set()

    def problems(self) -> list[str]:
        return [f"fatal: {self.fatal!r}"] if self.fatal is not None else []
