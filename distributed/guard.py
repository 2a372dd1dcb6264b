"""What stops a search early, the way Ctrl-C does: its disk is nearly full, or a fold worker's node cannot
see the run directory.

Both are found while Tune's loop runs. StopGuard (a Tune callback, on the driver) asks once a second: is
there less than --min-free-mb free where the run is written, and has the coordinator been told of a
problem (distributed.cv: a fold worker that hit a full disk, or started on a node that cannot see the run
directory)? Either way it sends Tune's own interrupt (interrupt.stop_tune), as the first Ctrl-C does: Tune
ends its loop and saves its experiment state while there is still room, unfinished trials stay resumable,
and the tables are written as after any search. run_search then raises SearchStopped with the reason.
"""
from __future__ import annotations

import time
from pathlib import Path

import ray
import ray.tune

from distributed import files
from distributed.config import EXIT_DISK_FULL
from distributed.interrupt import stop_tune

CHECK_EVERY_S = 1.0


class StopGuard(ray.tune.Callback):
    def __init__(self, coordinator, disk: Path | None, min_free_mb: int):
        self.coordinator, self.disk, self.min_free_mb = coordinator, disk, min_free_mb
        self.checked = 0.0
        self.reason: tuple[str, int] | None = None  # (the one line, the exit code)

    def __getstate__(self):
        # Tune pickles its callbacks into the experiment state; a resumed search brings its own guard
        return {"coordinator": None, "disk": None, "min_free_mb": 0, "checked": 0.0, "reason": None}

    def on_step_end(self, iteration, trials, **info):
        if self.reason is not None or time.monotonic() - self.checked < CHECK_EVERY_S:
            return
        self.checked = time.monotonic()
        self.reason = self.problem()
        if self.reason is not None:
            print(f"stopping the search: {self.reason[0]}", flush=True)
            stop_tune()

    def problem(self) -> tuple[str, int] | None:
        low = files.low_disk(self.disk, self.min_free_mb) if self.disk is not None else None
        if low:
            return low, EXIT_DISK_FULL
        if self.coordinator is not None:
            fatal = ray.get(self.coordinator.fatal_error.remote())
            if fatal is not None:
                return fatal["message"], fatal["code"]
        return None
