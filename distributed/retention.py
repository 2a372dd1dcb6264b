"""What a finished search keeps of its fold checkpoints: --keep-checkpoints all | best | topk:N (default topk:5).

Every trial leaves RUN_DIR/folds/<trial>/: its last KEEP_EPOCHS (distributed.checkpoints) epochs of K fold
checkpoints, and the OOF predictions of the last one. Nothing reads most of them once the search is over: the report and
the export read the best trial's final epoch, and a resume only the trials that have not ended. The quick
preset (5 trials) keeps its checkpoints in about a hundred MB; a full search of 40 trials would keep several GB.

When every trial of the search has ended (`search_ended`: not after Ctrl-C, and nothing at all if run_search
raises), `apply` keeps the folds/ directories of

    - the first N trials of `ranking` (best: N = 1; all: every one), the order of tables.rank_trials: completed
      trials by fold-mean METRIC, then pruned trials by the epochs they reached and their last fold-mean; ties
      by trial id, as best_trial does
    - the best trial (summary.json's best_trial_id, rank 1 of that order)
    - every trial that neither completed nor was pruned (errored: a --resume retries it from its checkpoints)

and deletes every other directory under folds/, orphans the tables do not know included. A search with no
best trial (none completed) keeps everything: it failed, and its checkpoints are what there is to look at.
Afterwards trials.parquet's checkpoint_path is null for each trial whose folds/ directory is gone, so no
table points at deleted files, and summary.json records keep_checkpoints, checkpoints_kept,
checkpoints_removed, checkpoint_bytes_freed and run_dir_bytes (DESIGN section 4).

The policy need not match on --resume: it is applied at the end of the search, by the session that ends it.
Deletion goes through distributed.storage's list_dir/remove_file, so a run stored in a bucket is pruned
the same way.
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pandas as pd

from distributed import storage
from distributed.config import ExperimentConfig, keep_checkpoints_count
from distributed.files import write_bytes_atomic, write_json_atomic
from distributed.lock import LOCK_NAME
from distributed.storage import RunLocation
from distributed.tables import rank_trials

RANKED = ("completed", "pruned")  # the statuses a policy may remove; any other trial keeps its checkpoints


# ---------------------------------------------------------------- the selection (pure)

def ranking(trials: pd.DataFrame) -> list[str]:
    """Ids of the completed and pruned trials, best first, in the one order of tables.rank_trials: completed
    by METRIC, then pruned by epochs reached and METRIC (a pruned value comes from fewer epochs, so it never
    outranks a completed one). A missing value ranks last in its group; equal values keep the table's order
    (trial id), as tables.best_trial."""
    ranked = rank_trials(trials)
    return [t for t, s in zip(ranked.trial_id, ranked.status) if s in RANKED] if not ranked.empty else []


def select(trials: pd.DataFrame, present: list[str], keep: int | None,
           best_trial_id: str | None) -> tuple[list[str], list[str]]:
    """(kept, removed): which of the folds/ directories `present` a policy keeps (keep: keep_checkpoints_count's
    None for all, 1 for best, N for topk:N) and which it removes. kept is in ranking order, then by id."""
    order = {t: i for i, t in enumerate(ranking(trials))}
    if keep is None or best_trial_id is None:  # all, or a search without a best trial: keep everything
        keeping = set(present)
    else:
        protected = set() if trials.empty else set(trials.trial_id[~trials.status.isin(RANKED)])
        keeping = set(list(order)[:keep]) | {best_trial_id} | protected
    kept = sorted((t for t in present if t in keeping), key=lambda t: (order.get(t, len(order)), t))
    return kept, [t for t in present if t not in keeping]


def search_ended(summary: dict, num_samples: int) -> bool:
    """Every trial of the search ended (completed, pruned or errored), as tune.py tells a finished search from
    an interrupted one."""
    ended = summary["n_trials_completed"] + summary["n_trials_pruned"] + summary["n_trials_errored"]
    return ended >= num_samples


# ---------------------------------------------------------------- files: a local directory or a bucket prefix

def tree_files(root: str) -> dict[str, int]:
    """{path relative to root (posix): size} of every file under `root` (a local path or a URI); {} when it
    does not exist."""
    fs, prefix = storage.filesystem(root)
    if fs is None:
        return {Path(d, f).relative_to(root).as_posix(): os.path.getsize(os.path.join(d, f))
                for d, _, files in os.walk(root) for f in files}
    import pyarrow.fs
    infos = fs.get_file_info(pyarrow.fs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {posixpath.relpath(i.path, prefix): i.size for i in infos if i.type == pyarrow.fs.FileType.File}


def remove_tree(root: str) -> int:
    """Delete every file under `root` and the directories left empty. Returns the bytes freed."""
    files = tree_files(root)
    fs, prefix = storage.filesystem(root)
    if fs is not None:
        # pyarrow's S3 delete_file leaves an empty "directory" object (epoch_NNN/) for each parent it empties,
        # and list_dir would still show the trial: delete_dir takes the files and those markers, in batches
        fs.delete_dir(prefix)
        return sum(files.values())
    for rel in files:
        storage.remove_file(f"{root}/{rel}")
    for d, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):  # deepest first; remove_file took some
        try:
            os.rmdir(d)
        except OSError:  # not empty: a file appeared since the listing (never in a locked, ended run)
            pass
    return sum(files.values())


def run_bytes(run_root: str, skip: tuple[str, ...] = (LOCK_NAME,)) -> int:
    """The run's size where it is stored: every file under it but the top-level ones named in `skip` (the lock
    file goes as tune.py exits)."""
    return sum(size for rel, size in tree_files(run_root).items() if rel not in skip)


# ---------------------------------------------------------------- the end of a search

def apply(cfg: ExperimentConfig, where: RunLocation, summary: dict) -> dict:
    """Apply cfg.search.keep_checkpoints to an ended search (see the module docstring) and record the run's size;
    rewrites trials.parquet and summary.json (and their copies in the bucket). Returns the new summary.

    where: the run's location; its local_dir is the driver's run directory, its root where the nodes write
    (the run directory, or URI/NAME).
    """
    run_dir, run_root = Path(where.local_dir), where.root
    policy, folds = cfg.search.keep_checkpoints, f"{run_root}/folds"
    kept, removed, freed = None, [], 0  # kept None: not applied, the search has not ended
    if search_ended(summary, cfg.search.num_samples):
        trials = pd.read_parquet(run_dir / "trials.parquet")
        kept, removed = select(trials, storage.list_dir(folds), keep_checkpoints_count(policy),
                               summary["best_trial_id"])
        freed = sum(remove_tree(f"{folds}/{t}") for t in removed)
        # no table points at deleted files: checkpoint_path is null where folds/<trial> is gone (also after an
        # earlier session removed it: the tables are rebuilt from Tune's logs)
        gone = trials.checkpoint_path.notna() & ~trials.trial_id.isin(storage.list_dir(folds))
        if gone.any():
            trials.loc[gone, "checkpoint_path"] = None
            write_bytes_atomic(run_dir / "trials.parquet", trials.to_parquet(index=False))
            where.upload(files=("trials.parquet",))
    summary = {**summary, "keep_checkpoints": policy, "checkpoints_kept": kept, "checkpoints_removed": removed,
               "checkpoint_bytes_freed": freed}
    write_summary(run_dir / "summary.json", summary, run_bytes(run_root, skip=(LOCK_NAME, "summary.json")))
    where.upload(files=("summary.json",))
    return summary


def write_summary(path: Path, summary: dict, others: int) -> None:
    """summary.json with run_dir_bytes = others + its own size (rewritten until the count of digits settles)."""
    own = 0
    while True:
        summary["run_dir_bytes"] = others + own
        write_json_atomic(path, summary)
        if path.stat().st_size == own:
            return
        own = path.stat().st_size


def describe(summary: dict) -> str:
    """The line the search ends with: what --keep-checkpoints kept and freed, and the run's size."""
    size = f"run directory {mb(summary['run_dir_bytes'])}"
    kept, removed, policy = summary["checkpoints_kept"], summary["checkpoints_removed"], summary["keep_checkpoints"]
    if kept is None:
        return (f"checkpoints: all kept, the search has not ended (--resume continues from them; "
                f"--keep-checkpoints {policy} applies when it ends); {size}")
    if summary["best_trial_id"] is None:
        return f"checkpoints: all kept, no trial completed its budget (--keep-checkpoints {policy}); {size}"
    return (f"checkpoints: kept the fold checkpoints of {len(kept)} of {len(kept) + len(removed)} trials "
            f"(--keep-checkpoints {policy}); freed {mb(summary['checkpoint_bytes_freed'])}; {size}")


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
