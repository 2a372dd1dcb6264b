"""The search space (one define-by-run function) and the Optuna searcher that records ASHA stops as PRUNED."""
from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import signal

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from distributed.config import METRIC, MODE, ExperimentConfig

EXPERIMENT_STATES = "experiment_state-*.json"  # Tune's snapshots of its trials, one per session
TUNE_TRIAL_ID = "tune_trial_id"  # the Optuna trial's user attribute naming the Tune trial that owns it
KILL_ENV = "FMNIST_TEST_KILL_DRIVER_AT_SUGGEST"  # test-only hook: "N" kills the driver right after the N-th
# suggestion is in optuna.db, before Tune's next experiment snapshot (the moment that orphans an Optuna trial)
KILL_AT_SAVE_ENV = "FMNIST_TEST_KILL_DRIVER_AT_SAVE"  # test-only hook: "N:DIR" kills the driver in the first
# save of this searcher that holds N trials, after copying the experiment state Tune has just saved (the N-th
# trial in it) to DIR, the experiment on storage: what Tune's background upload can leave, as it copies the
# driver's staging directory while the next save writes it


def define_space(trial: optuna.Trial, space: tuple[str, ...], widths=(16, 32, 64), batch_sizes=(64, 128, 256),
                 fc_widths=(128, 256, 512)) -> None:
    """Sample the hyperparameters named in `space`; does no other work. Log scales where multiplicative.
    widths / batch_sizes / fc_widths: the choices of the categorical ones (SearchConfig; the defaults are those
    of runs made before they were settings)."""
    if "lr" in space:
        trial.suggest_float("lr", 3e-4, 1e-2, log=True)             # peak LR of the one-cycle schedule
    if "weight_decay" in space:
        trial.suggest_float("weight_decay", 1e-5, 5e-2, log=True)   # AdamW, decoupled
    if "dropout" in space:
        trial.suggest_float("dropout", 0.0, 0.6)
    if "batch_size" in space:
        trial.suggest_categorical("batch_size", list(batch_sizes))
    if "width" in space:
        trial.suggest_categorical("width", list(widths))             # channels of the first block
    if "depth" in space:
        trial.suggest_int("depth", 2, 3)
    if "fc_width" in space:
        trial.suggest_categorical("fc_width", list(fc_widths))       # hidden units of the head
    if "label_smoothing" in space:
        trial.suggest_float("label_smoothing", 0.0, 0.2)
    if "erase_p" in space:
        trial.suggest_float("erase_p", 0.0, 0.5)


def tune_snapshot(experiment_dir: str) -> dict[str, tuple[str, dict]] | None:
    """Tune's newest experiment state in experiment_dir: trial id -> (status, last result); None if none.

    It is the file Tune itself resumes from (the newest experiment_state-*.json, by name, as Tune picks it).
    """
    paths = glob.glob(os.path.join(experiment_dir, EXPERIMENT_STATES))
    if not paths:
        return None
    with open(max(paths)) as f:
        trial_data = json.load(f)["trial_data"]
    snapshot = {}
    for state_json, metadata_json in trial_data:
        state, metadata = json.loads(state_json), json.loads(metadata_json)
        snapshot[state["trial_id"]] = (state["status"], metadata.get("last_result") or {})
    return snapshot


class CVOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED (not COMPLETE) for trials ASHA stopped before max_t, counts the
    search's trials and running trials itself, and resumes whole after any driver kill (see restore).

    Ray's OptunaSearch reports every trial that ended without error as COMPLETE with its last value, so a
    1-epoch value would compete with 15-epoch values in TPE's good/bad split. The intermediate values are
    already in the study (on_trial_result), so a PRUNED trial keeps its learning curve.
    """

    _max_concurrent = 0  # no limit of its own until set_max_concurrency (class defaults: a searcher pickled
    _num_samples = 0     # by an older version resumes too)

    def __init__(self, *args, max_t: int, num_samples: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._num_samples = num_samples  # the trials of the search: this searcher says FINISHED after them

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Limit concurrency here, not in Tune's ConcurrencyLimiter (True tells the limiter to pass through).

        The limiter keeps its own set of live trials, saved after this searcher's state: a driver killed
        between the two saves resumes trials the limiter never heard of, and it drops their completions, so
        their Optuna trials would stay RUNNING. Here the live trials are derived from the one mapping that
        `restore` makes whole again.
        """
        self._max_concurrent = max_concurrent
        return True

    def live_trials(self) -> list[str]:
        return [tid for tid in self._ot_trials if tid not in self._completed_trials]

    def suggest(self, trial_id: str):
        # Counted here, not by Tune (its count is saved after this searcher's state, tuner.py gives it -1):
        # after `restore`, the trials this searcher owns are the trials Tune has
        if self._num_samples and len(self._ot_trials) >= self._num_samples:
            return Searcher.FINISHED
        if self._max_concurrent and len(self.live_trials()) >= self._max_concurrent:
            return None  # Tune asks again when a trial ends
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # the Tune trial that owns it, in optuna.db before Tune knows the trial
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        if os.environ.get(KILL_ENV) == str(len(self._ot_trials)):
            os.kill(os.getpid(), signal.SIGKILL)
        return config

    def save(self, checkpoint_path: str):
        at, _, upload_to = os.environ.get(KILL_AT_SAVE_ENV, "").partition(":")
        if at == str(len(self._ot_trials)):
            for path in glob.glob(os.path.join(os.path.dirname(checkpoint_path), EXPERIMENT_STATES)):
                shutil.copy(path, upload_to)
            os.kill(os.getpid(), signal.SIGKILL)
        super().save(checkpoint_path)

    def restore(self, checkpoint_path: str):
        """The searcher as Tune last saved it, then made to agree with Tune's own snapshot and optuna.db.

        Tune saves its trials first and this searcher second, uploads both from its staging directory in the
        background, and optuna.db is written as things happen: a killed driver leaves the three at different
        moments (the experiment state Tune resumes from can hold trials the searcher state does not; its
        trial count, saved after the searcher, can lag too, hence the count in `suggest`). Each RUNNING
        Optuna trial is settled by what Tune will do with its Tune trial (the `tune_trial_id` attribute):
        - Tune will resume it: it is this searcher's again (Tune's snapshot had it, the searcher's did not);
        - Tune saved it finished: its last result is told to Optuna now (Tune will not report it again);
        - Tune has no such trial (sampled just before the kill): marked FAIL, Optuna's state for trials
          that did not finish, so the study holds each Tune trial once.
        """
        super().restore(checkpoint_path)
        snapshot = tune_snapshot(os.path.dirname(checkpoint_path))
        owner = {t.number: tid for tid, t in self._ot_trials.items()}
        for ft in self._ot_study.get_trials(deepcopy=False):
            tid = owner.get(ft.number, ft.user_attrs.get(TUNE_TRIAL_ID))
            if ft.state.is_finished():
                if tid in self._ot_trials:  # told before the kill, after the searcher's last save
                    self._completed_trials.add(tid)
                continue
            if ft.state != optuna.trial.TrialState.RUNNING:
                continue
            # Tune will have this trial: by its snapshot, or without one (no file) by the searcher's own state
            in_tune = tid in snapshot if snapshot is not None else tid in self._ot_trials
            if in_tune:
                if tid not in self._ot_trials:
                    self._ot_trials[tid] = optuna.Trial(self._ot_study, ft._trial_id)
                if snapshot is not None and snapshot[tid][0] == "TERMINATED" and tid not in self._completed_trials:
                    self.on_trial_complete(tid, snapshot[tid][1])
                    print(f"--resume: trial {tid} had finished before the driver stopped; its result is now "
                          f"in optuna.db (Optuna trial {ft.number})", flush=True)
            else:
                self._ot_study.tell(ft.number, state=optuna.trial.TrialState.FAIL)
                self._ot_trials.pop(tid, None)
                params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in ft.params.items())
                print(f"--resume: Optuna trial {ft.number} ({params}) was sampled just before the driver stopped "
                      f"and belongs to no trial; marked FAIL in optuna.db", flush=True)

    def _report_epoch(self, trial_id: str, result: dict) -> None:
        """Record result's metric as the intermediate value of its epoch (once: a replayed epoch is a no-op)."""
        ot_trial, step = self._ot_trials[trial_id], result["epoch"]
        if step not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
            ot_trial.report(result[self.metric], step)

    def on_trial_result(self, trial_id: str, result: dict):
        # Steps are epochs, not Tune's report count, which a resumed trial's replayed epochs would shift.
        if trial_id not in self._completed_trials and "epoch" in result:
            self._report_epoch(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        # Tune hands the last result to on_trial_complete only, never to on_trial_result.
        if result and trial_id in self._ot_trials and "epoch" in result and trial_id not in self._completed_trials:
            self._report_epoch(trial_id, result)
        stopped_early = not error and result is not None and result.get("epoch", self._max_t) < self._max_t
        if not stopped_early or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def make_searcher(cfg: ExperimentConfig, storage_url: str) -> CVOptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is ours to print, one line per epoch
    storage = optuna.storages.RDBStorage(storage_url)
    return CVOptunaSearch(
        space=functools.partial(define_space, space=tuple(cfg.search.space), widths=cfg.search.widths,
                                batch_sizes=cfg.search.batch_sizes, fc_widths=cfg.search.fc_widths),
        metric=METRIC, mode=MODE,
        sampler=optuna.samplers.TPESampler(seed=cfg.search.search_seed),
        study_name=cfg.name, storage=storage,
        max_t=cfg.train.epochs, num_samples=cfg.search.num_samples,
    )
