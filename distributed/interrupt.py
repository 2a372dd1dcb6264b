"""Ctrl-C during a search: the first stops it cleanly, the second at once.

Ray Tune's own SIGINT handler ends the search well (it stops the trial loop and saves the experiment state,
so --resume continues the unfinished trials) but then prints a "Tuner.restore(...)" hint meant for Tune's
Python API, and the search returns as if it had finished. So tune.py turns Tune's handler off
(TUNE_DISABLE_SIGINT_HANDLER) and installs this one:

- first SIGINT: one line, then Tune's own interrupt, which Tune also listens for on SIGUSR1. tune.py then
  writes summary.json and the tables as after any search, prints the exact --resume command and exits 130
  (EXIT_INTERRUPTED, distributed.config).
  Before Tune's loop runs (while the slots start) there is nothing to save: it exits at once, as below.
- second SIGINT: the lock is released and the process exits with 130 at once. Ray's processes share the
  driver's fate, and what the run directory holds is what a killed driver leaves, which --resume accepts
  (the fault-tolerance table in docs/fault-tolerance.md).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable

from distributed.config import EXIT_INTERRUPTED

TUNE_INTERRUPT_LINES = ("Stop signal received", "Resume experiment with", "Trials did not complete")


class Interrupt:
    def __init__(self, resume_command: str, on_abort: Callable[[], None] = lambda: None):
        self.resume_command = resume_command
        self.on_abort = on_abort
        self.count = 0

    def install(self) -> "Interrupt":
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # read by Tune when the search starts
        signal.signal(signal.SIGINT, self._handler)
        return self

    @property
    def interrupted(self) -> bool:
        return self.count > 0

    def _handler(self, sig, frame) -> None:
        self.count += 1
        if self.count == 1 and tune_listens():
            print("\nCtrl-C: stopping the search; running trials keep their last finished epoch "
                  "(Ctrl-C again to quit at once)", flush=True)
            stop_tune()
            return
        self.abort()

    def abort(self) -> None:
        self.on_abort()
        print(f"\ninterrupted; continue with: {self.resume_command}", file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)


def tune_listens() -> bool:
    """Is Tune's loop running? It listens on SIGUSR1 while fit() runs (ray/tune/tune.py)."""
    return signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)


def _not_tune_interrupt_lines(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in TUNE_INTERRUPT_LINES)


def stop_tune() -> bool:
    """Tune's own interrupt: it ends its loop after this step and saves the experiment state, unfinished
    trials resumable. Its messages ("Resume experiment with: Tuner.restore(...)", for Tune's Python API, not
    for tune.py) are dropped: the caller says what happened. False when Tune is not running."""
    if not tune_listens():
        return False
    tune_log = logging.getLogger("ray.tune.tune")
    if _not_tune_interrupt_lines not in tune_log.filters:
        tune_log.addFilter(_not_tune_interrupt_lines)
    os.kill(os.getpid(), signal.SIGUSR1)
    return True
