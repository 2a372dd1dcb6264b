"""One writer per run directory: RUN_DIR/.lock, held by the tune.py that writes the run.

Two tune.py processes on one run directory (two --resume, or a --resume beside a running search) would both
append trials to optuna.db and rewrite the tables. The lock file is made with O_CREAT | O_EXCL, so of two
processes exactly one gets it. It names its holder (PID, host, the process's start time, the command), so
the one refused can say who holds it:

    holder(run_dir)        the live holder's record, or None (no lock, or a stale one)
    RunLock(run_dir)       acquire(): ConfigError (exit 2) naming a live holder; takes over a stale lock
                           (its process is gone from this host) with one warning line; release() at exit

A lock whose holder is on another host cannot be checked from here and is never taken over: the message says
how to remove it. report.py and export.py read without the lock and only say when a run is being written.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from distributed.config import ConfigError

LOCK_NAME = ".lock"


def _start_time(pid: int) -> float | None:
    """The process's start time (psutil), None when no such process: with it a reused PID is not mistaken
    for the holder."""
    import psutil
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # someone else's process: it exists
        return -1.0


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # half-written by a process killed while writing it: a stale lock
        return {}


def _alive(rec: dict) -> bool:
    """Whether the lock's holder still runs. On another host we cannot tell: treated as alive."""
    if rec.get("host") != socket.gethostname():
        return bool(rec)
    started = _start_time(int(rec.get("pid", -1))) if isinstance(rec.get("pid"), int) else None
    return started is not None and (started == -1.0 or rec.get("started") is None
                                    or abs(started - rec["started"]) < 1.0)


def describe(rec: dict) -> str:
    return (f"PID {rec.get('pid')} on host {rec.get('host')} since {rec.get('since')} "
            f"({rec.get('command') or 'unknown command'})")


def holder(run_dir) -> dict | None:
    rec = _read(Path(run_dir) / LOCK_NAME)
    return rec if rec and _alive(rec) else None


def writing_note(run_dir) -> str | None:
    """For the readers of a run (report.py, export.py): who is still writing it, or None."""
    rec = holder(run_dir)
    return None if rec is None else f"note: the run is still being written by {describe(rec)}"


class RunLock:
    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def refuse_if_held(self) -> None:
        """The early check (before any work): ConfigError when a live process holds the run."""
        rec = _read(self.path)
        if rec and _alive(rec):
            raise ConfigError(self._held_message(rec))

    def _held_message(self, rec: dict) -> str:
        where = ("" if rec.get("host") == socket.gethostname() else
                 f"; if that process is gone, remove {self.path} by hand (a lock of another host is never "
                 f"taken over)")
        return f"run directory {self.path.parent} is being written by {describe(rec)}{where}"

    def acquire(self) -> None:
        for _ in range(3):  # a stale lock moved aside by us or by a rival: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                rec = _read(self.path)
                if rec is None:
                    continue  # removed in between
                if _alive(rec):
                    raise ConfigError(self._held_message(rec)) from None
                aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
                try:
                    os.replace(self.path, aside)  # atomic: of two processes taking over, one moves it
                except FileNotFoundError:
                    continue
                aside.unlink(missing_ok=True)
                print(f"warning: took over the stale lock of {self.path.parent} "
                      f"({describe(rec) if rec else 'an unreadable lock file'} is gone)", flush=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(_me(), f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise ConfigError(f"run directory {self.path.parent}: could not take its lock {self.path} "
                          f"(other processes keep taking it); try again")

    def release(self) -> None:
        if not self.held:
            return
        rec = _read(self.path)
        if rec and rec.get("pid") == os.getpid() and rec.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self.held = False
