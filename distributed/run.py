"""Driver-side preparation of a run, before Ray starts: data, split, fingerprints, run-directory checks.

Everything here can fail with ConfigError (exit code 2) and writes nothing, so bad input never touches
an existing run directory.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np

from distributed import data as fm
from distributed import files, storage
from distributed.config import PRESETS, ConfigError, ExperimentConfig, load, to_dict
from distributed.folds import make_folds, split_fingerprint
from distributed.lock import RunLock

# Fields that define what a run's numbers mean: a resumed run must keep them.
RESUME_INVARIANTS = {
    "preset": lambda c: c.preset,
    "cv.folds": lambda c: c.cv.folds, "cv.fold_seed": lambda c: c.cv.fold_seed,
    "data.limit_train": lambda c: c.data.limit_train, "data.subset_seed": lambda c: c.data.subset_seed,
    "search.space": lambda c: tuple(c.search.space), "search.search_seed": lambda c: c.search.search_seed,
    "search.scheduler": lambda c: c.search.scheduler, "train.epochs": lambda c: c.train.epochs,
    "model": lambda c: c.model, "train": lambda c: c.train,
}


def versions() -> dict:
    import optuna
    import ray
    import torch
    return {"ray": ray.__version__, "torch": torch.__version__, "optuna": optuna.__version__}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform knows: what a figure was measured on."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def run_exists(storage_path: str, name: str) -> bool:
    """Is there a run called name: the local (working copy of the) run directory, or URI/NAME in a bucket."""
    where = storage.RunLocation.of(storage_path, name)
    return where.local_dir.exists() or (where.store is not None and storage.remote_run_exists(where.store, name))


def default_run_name(preset: str, storage_path: str, now: datetime | None = None) -> str:
    """PRESET-YYYYmmdd-HHMMSS, the name of a run started without --name: a new run every time. A second run
    started within the same second gets the first free of -2, -3, ... (start_run_dir makes the directory
    atomically, so two runs racing for one name can never share it)."""
    name = f"{preset}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"
    candidate, n = name, 1
    while run_exists(storage_path, candidate):
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def stored_preset(storage_path: str, name: str) -> str | None:
    """The preset in config.json of the run --resume continues (the local copy, else the bucket's); None when
    there is no readable config.json or its preset is unknown: prepare_run then refuses the resume, saying why."""
    where = storage.RunLocation.of(storage_path, name)
    local = where.local_dir / "config.json"
    try:
        if local.is_file():
            text = local.read_text()
        else:
            store = where.store
            if store is None:
                return None
            with storage.open_store(store).open_input_stream(store.fs_path(name, "config.json")) as f:
                text = f.read().decode()
        preset = json.loads(text).get("preset", ExperimentConfig().preset)  # as load() reads it
    except Exception:  # missing, unreadable, truncated or not this tool's: prepare_run says which
        return None
    return preset if preset in PRESETS else None


def check_writable(run_dir: Path) -> None:
    """The run directory (a resume's) or the deepest existing folder above it must be writable: found here,
    in one line, rather than as a traceback once the search has started."""
    try:
        target = run_dir if run_dir.exists() else next(p for p in run_dir.parents if p.exists())
    except PermissionError as e:  # a folder on the way that this user may not enter
        raise ConfigError(f"--storage-path {run_dir.parent}: not accessible by this user ({e.strerror}: "
                          f"{e.filename})") from None
    if not target.is_dir():
        raise ConfigError(f"{target}: exists and is not a directory; choose another --storage-path")
    if not os.access(target, os.W_OK | os.X_OK):
        if target == run_dir:
            raise ConfigError(f"run directory {run_dir} is not writable by this user")
        raise ConfigError(f"--storage-path {run_dir.parent}: cannot make the run directory there ({target} is "
                          f"not writable by this user); choose another --storage-path")
    if target != run_dir:  # can a folder be made there at all? (/proc, a read-only mount: the OS says why)
        try:
            os.rmdir(tempfile.mkdtemp(dir=target, prefix=".tune-probe-"))
        except OSError as e:
            what = "cannot make the run directory there" if target == run_dir.parent else "cannot create it"
            raise ConfigError(f"--storage-path {run_dir.parent}: {what}: {e.strerror}") from None


def local_runs(folder: Path) -> list[str]:
    """The runs in a storage folder (the folders that hold a config.json), the most recently started first."""
    try:
        found = [(p.stat().st_mtime, p.parent.name) for p in folder.glob("*/config.json")]
    except OSError:
        return []
    return [name for _, name in sorted(found, reverse=True)]


def no_such_run(cfg: ExperimentConfig, runs: list[str], most: int = 10) -> str:
    """The line for --resume of a run that is not there, naming the runs that are (at most `most` of them)."""
    where = f"--resume --name {cfg.name}: there is no such run in {cfg.storage_path}"
    if not runs:
        return f"{where}; it holds no runs" if storage.path_exists(cfg.storage_path) else \
            f"{where}; that folder does not exist"
    more = f" and {len(runs) - most} more" if len(runs) > most else ""
    return f"{where}; the runs there are: {', '.join(runs[:most])}{more}"


def prepare_run(cfg: ExperimentConfig) -> tuple[storage.RunLocation, dict, dict]:
    """Returns (where the run is stored, shared arrays for the object store, meta for summary.json). The
    RunLocation reads as the local run directory (str, os.fspath); run_search and the tables take it."""
    where = storage.RunLocation.of(cfg.storage_path, cfg.name)
    run_dir, store = where.local_dir, where.store
    if cfg.resume and store is None and not run_dir.exists():
        raise ConfigError(no_such_run(cfg, local_runs(run_dir.parent)))
    check_writable(run_dir)
    low = files.low_disk(run_dir, cfg.resources.min_free_mb)  # it would stop at its first check (distributed.guard)
    if low:
        raise ConfigError(f"{low}; free some space, or lower --min-free-mb")
    if run_dir.exists() and not cfg.resume:
        raise ConfigError(f"run directory {run_dir} already exists: pass --resume to continue it, "
                          f"or choose another --name")
    if store is None:
        return (where, *_check_run(cfg, run_dir))
    in_bucket = storage.remote_run_exists(store, cfg.name)  # also: can the bucket be read at all?
    if in_bucket and not cfg.resume:
        raise ConfigError(f"{store.run_uri(cfg.name)} already exists: pass --resume to continue it, "
                          f"or choose another --name")
    if cfg.resume and not in_bucket and not run_dir.exists():
        raise ConfigError(no_such_run(cfg, storage.list_dir(store.uri)))
    if not (cfg.resume and in_bucket and not run_dir.exists()):
        return (where, *_check_run(cfg, run_dir))
    # A resume on a machine without the driver's working copy: fetch it from the bucket and check it like a
    # local one; if the check refuses, the fetched copy goes again (a refused resume leaves nothing behind).
    made_parent = not run_dir.parent.exists()
    n = storage.download_driver_files(store, cfg.name, run_dir)
    try:
        shared, meta = _check_run(cfg, run_dir)
    except ConfigError:
        shutil.rmtree(run_dir.parent if made_parent else run_dir, ignore_errors=True)
        raise
    print(f"--resume: fetched {n} file(s) of {store.run_uri(cfg.name)} into {run_dir}", flush=True)
    return where, shared, meta


def _check_run(cfg: ExperimentConfig, run_dir: Path) -> tuple[dict, dict]:
    """prepare_run's checks of the local run directory (for --resume) and the data; loads the data. Returns
    (shared arrays, meta)."""
    if cfg.resume and not (run_dir / "config.json").exists():
        raise ConfigError(f"--resume: {run_dir} is not a run directory of this tool (no config.json)")
    if cfg.resume:
        RunLock(run_dir).refuse_if_held()  # another tune.py writes it now: refused before any work
    if cfg.resume:
        try:
            stored = load(run_dir / "config.json")
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ConfigError) as e:
            raise ConfigError(f"--resume: {run_dir}/config.json is corrupt or not this tool's ({e}); "
                              f"the run cannot be resumed") from None
        changed = [k for k, get in RESUME_INVARIANTS.items() if get(stored) != get(cfg)]
        if changed:
            raise ConfigError(f"--resume {cfg.name}: {', '.join(changed)} differ from the stored run "
                              f"({run_dir}/config.json); pass the same settings or choose another --name")
        # Tune restores the newest of these; one it cannot read it only logs ("Failed to restore the run
        # state"), then starts the whole search anew: every trial trained again, twice in optuna.db
        states = sorted((run_dir / "tune").glob("experiment_state-*.json"))
        if states:
            try:
                json.loads(states[-1].read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"--resume: {states[-1]} (Tune's saved search) is corrupt ({e}); the run "
                                  f"cannot be resumed") from None

    dataset = fm.load(cfg.data)
    positions = fm.stratified_subset(dataset.train_y, cfg.data.limit_train, cfg.data.subset_seed)
    folds = make_folds(dataset.train_y[positions], cfg.cv.folds, cfg.cv.fold_seed)
    meta = {
        "data_fingerprint": fm.fingerprint(dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y),
        "split_fingerprint": split_fingerprint(folds, positions),
        "n_train": int(len(positions)), "data_source": dataset.source, "versions": versions(),
    }
    if cfg.resume and (run_dir / "summary.json").exists():
        try:
            old = json.loads((run_dir / "summary.json").read_text())
        except json.JSONDecodeError:
            raise ConfigError(f"--resume: {run_dir}/summary.json is corrupt (truncated?); "
                              f"the run cannot be resumed") from None
        for key in ("data_fingerprint", "split_fingerprint"):
            if old.get(key) != meta[key]:
                raise ConfigError(f"--resume {cfg.name}: {key} {meta[key]} differs from the stored "
                                  f"{old.get(key)}: the data or the folds changed")
        meta["wall_s_before"] = float(old.get("wall_s", 0.0))
    shared = {"x": dataset.train_x, "y": dataset.train_y, "positions": positions,
              "folds": [np.asarray(f) for f in folds]}
    return shared, meta


def start_run_dir(run_dir: os.PathLike, cfg: ExperimentConfig) -> RunLock:
    """Make the run directory (a new run's atomically: one made by another run since prepare_run looked is
    refused, never shared), take its lock (distributed.lock: one writer per run) and write the effective
    config into it. Returns the lock, held until the caller releases it (at exit at the latest).
    run_dir: the local run directory, or prepare_run's RunLocation."""
    from distributed.files import write_json_atomic
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir(exist_ok=cfg.resume)
    except FileExistsError:
        raise ConfigError(f"run directory {run_dir} was made by another run since this one started: "
                          f"start again, or choose another --name") from None
    lock = RunLock(run_dir)
    lock.acquire()  # a --resume that lost the race to another one is refused here, before writing
    atexit.register(lock.release)
    write_json_atomic(run_dir / "config.json", to_dict(cfg))
    return lock
