"""Fold-paired ASHA: ASHA's rungs, but a trial below a rung's cutoff stops only when its folds say it is worse.

Every trial is measured on the same K folds, so at a rung the trial being decided and the trial at the
cutoff give K paired values. Plain ASHA compares their fold means and stops the trial whenever its mean
is below the cutoff, however much its folds disagree. Fold-ASHA keeps ASHA's rungs, grace period,
reduction factor, max_t and asynchronous promotion, and changes only the stop decision:

    a trial whose fold mean at a rung is below the rung's cutoff is stopped only when the one-sided
    corrected resampled t-test (Nadeau and Bengio, distributed/stats.py) of d_k = cutoff trial's fold k
    - this trial's fold k, k = 1..K, at the rung's epoch, with test/train ratio 1/(K-1), rejects
    "not worse" at level alpha: p <= alpha. Otherwise it is let through to the next rung.

The cutoff trial is the weakest trial already at the rung whose mean is at or above the cutoff (ASHA's
cutoff is an interpolated percentile, not a trial's value). With K = 1 there is nothing to test, and for
alpha >= 0.5 every test rejects (a trial below the cutoff has mean(d) > 0, so t > 0 and p < 0.5): both
give plain ASHA's decisions. The same class, with alpha None, is plain ASHA that records its decisions.

Every decision is a row of RUN_DIR/rungs.parquet, rewritten atomically as it is made. A resumed search
unpickles a fresh scheduler (Tune does not save a scheduler's state), and rebuilds the rungs from that file:
trials that finished before the crash never report again, and a restarted trial's replayed epochs meet the
decisions already recorded for them, so they add no rows and cannot be decided differently.
"""
from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from distributed.config import METRIC, ConfigError
from distributed.files import write_bytes_atomic
from distributed.stats import corrected_one_sided

RUNGS_FILE = "rungs.parquet"
KILL_ENV = "FMNIST_TEST_KILL_DRIVER_AT_RUNG"  # test-only hook: "N" kills the driver right after the N-th rung
# decision is in rungs.parquet, before Tune acts on it (the moment a resume must decide the same way again)
FOLDS_KEY = METRIC.removesuffix("_mean") + "_folds"  # the per-fold list beside the fold mean in every result
CONTINUE, STOP, LET_THROUGH = "continue", "stop", "let_through"  # "let through on doubt"
RUNG_COLUMNS = ("trial_id", "rung", "epoch", "folds", "value", "n_at_rung", "cutoff", "cutoff_trial_id",
                "t", "p", "alpha", "decision")


def cutoff_trial(recorded: dict, cutoff: float) -> str:
    """The trial the cutoff keeps last: the lowest value at or above `cutoff` (ties: the smaller id)."""
    return min((v, tid) for tid, v in recorded.items() if v >= cutoff)[1]


def rung_decision(value: float, folds, cutoff: float | None, cutoff_folds,
                  alpha: float | None) -> tuple[str, float, float]:
    """(decision, t, p) for a trial at a rung; larger values are better (the caller signs them for "min").

    At or above the cutoff, or the first trial at the rung (no cutoff): continue. Below it: stop when
    alpha is None (plain ASHA), K < 2, or the paired test says worse (p <= alpha); let through otherwise.
    """
    if cutoff is None or not value < cutoff:  # a NaN value continues, as in Ray's ASHA
        return CONTINUE, math.nan, math.nan
    folds = np.asarray(folds if folds is not None else [], dtype=float)
    if alpha is None or len(folds) < 2:
        return STOP, math.nan, math.nan
    t, p = corrected_one_sided(np.asarray(cutoff_folds, dtype=float) - folds, 1.0 / (len(folds) - 1))
    return (STOP if p <= alpha else LET_THROUGH), t, p


class FoldASHA(AsyncHyperBandScheduler):
    """ASHA (one bracket, time_attr "epoch") whose stop decision is rung_decision's, every decision a row
    of RUN_DIR/rungs.parquet. alpha None: plain ASHA's decisions, still recorded."""

    def __init__(self, run_dir, alpha: float | None, max_t: int, grace_period: int, reduction_factor: float):
        super().__init__(time_attr="epoch",  # not Tune's report count: a resumed trial replays its reports
                         max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor)
        self.run_dir, self.alpha = str(run_dir), alpha
        self._folds: dict[tuple[str, int], list[float]] = {}  # (trial, rung) -> fold values there
        self._decided: dict[tuple[str, int], str] = {}        # (trial, epoch) -> Tune's action, for replays
        self._rows: list[dict] = []

    @property
    def _bracket(self):
        return self._brackets[0]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        # Tune calls this once per fit(), fresh or resumed, before any trial: the place to rebuild the rungs
        ok = super().set_search_properties(metric, mode, **spec)
        if ok:
            self.restore_rungs(load_rungs(Path(self.run_dir)))
        return ok

    def restore_rungs(self, rows: pd.DataFrame) -> None:
        """The rung state of an earlier session of this search, from its rungs.parquet rows (in order)."""
        rungs = dict(self._bracket._rungs)
        for r in rows.to_dict("records"):
            r["folds"] = [float(v) for v in r["folds"]]
            rungs[int(r["rung"])][r["trial_id"]] = self._metric_op * r["value"]
            self._folds[(r["trial_id"], int(r["rung"]))] = r["folds"]
            self._decided[(r["trial_id"], int(r["epoch"]))] = (TrialScheduler.STOP if r["decision"] == STOP
                                                               else TrialScheduler.CONTINUE)
            self._rows.append(r)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        tid, epoch = trial.trial_id, int(result[self._time_attr])
        if (tid, epoch) in self._decided:  # a replayed epoch of a restarted trial: what was decided then
            return self._decided[(tid, epoch)]
        if epoch >= self._max_t:
            self._num_stopped += 1
            return TrialScheduler.STOP
        row = self._place(tid, epoch, result)
        if row is None:
            return TrialScheduler.CONTINUE
        action = TrialScheduler.STOP if row["decision"] == STOP else TrialScheduler.CONTINUE
        self._num_stopped += action == TrialScheduler.STOP
        self._decided[(tid, epoch)] = action
        self._rows.append(row)
        write_rungs(Path(self.run_dir), self._rows)  # before Tune acts on it: a crash cannot lose a decision
        if os.environ.get(KILL_ENV) == str(len(self._rows)):
            os.kill(os.getpid(), signal.SIGKILL)
        return action

    def _place(self, tid: str, epoch: int, result: dict) -> dict | None:
        """Ray's _Bracket.on_result with rung_decision: the highest rung at or below `epoch` that the trial
        has not passed decides, then records it. None: no such rung."""
        for milestone, recorded in self._bracket._rungs:  # highest first
            if epoch < milestone or tid in recorded:
                continue
            value = float(result[self._metric])
            folds = [float(v) for v in result.get(FOLDS_KEY) or []]
            cutoff = self._bracket.cutoff(recorded)
            cutoff = None if cutoff is None else float(cutoff)
            ref = cutoff_trial(recorded, cutoff) if cutoff is not None and not math.isnan(cutoff) else None
            ref_folds = [self._metric_op * v for v in self._folds.get((ref, milestone), [])]
            signed = [self._metric_op * v for v in folds]
            usable = ref is not None and len(ref_folds) == len(signed)  # no fold values to pair: ASHA's rule
            decision, t, p = rung_decision(self._metric_op * value, signed if usable else None, cutoff,
                                           ref_folds if usable else None, self.alpha)
            recorded[tid] = self._metric_op * value  # a NaN too: the percentile ignores it, as in Ray's ASHA
            self._folds[(tid, milestone)] = folds
            return {"trial_id": tid, "rung": int(milestone), "epoch": epoch, "folds": folds, "value": value,
                    "n_at_rung": len(recorded) - 1,
                    "cutoff": math.nan if cutoff is None else self._metric_op * cutoff,
                    "cutoff_trial_id": ref, "t": t, "p": p,
                    "alpha": math.nan if self.alpha is None else self.alpha, "decision": decision}
        return None

    def on_trial_complete(self, tune_controller, trial, result: dict):
        # Ray's ASHA records the last result once more; every rung below max_t was already decided in
        # on_trial_result, and a rung at max_t decides nothing (a trial there is stopped by max_t anyway).
        self._trial_info.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller, trial):
        self._trial_info.pop(trial.trial_id, None)


def rungs_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(RUNG_COLUMNS))


def write_rungs(run_dir: Path, rows: list[dict]) -> None:
    write_bytes_atomic(run_dir / RUNGS_FILE, rungs_frame(rows).to_parquet(index=False))


def load_rungs(run_dir: Path) -> pd.DataFrame:
    """RUN_DIR/rungs.parquet (RUNG_COLUMNS, one row per trial and rung), or an empty table with the same
    columns (a new search, a FIFO one, or a run from before the file existed). The scheduler rebuilds its rungs
    from it on resume; the report reads it too. An unreadable file raises ConfigError."""
    path = Path(run_dir) / RUNGS_FILE
    if not path.is_file():
        return rungs_frame([])
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for truncated or foreign files
        raise ConfigError(f"{path}: unreadable Parquet ({type(e).__name__}: {e})") from None
