"""The search space (one define-by-run function) and the Optuna searcher that records ASHA stops as PRUNED."""
from __future__ import annotations

import functools
import os
import signal

import optuna
from ray.tune.search.optuna import OptunaSearch

from distributed.config import METRIC, MODE, ExperimentConfig

KILL_ENV = "FMNIST_TEST_KILL_DRIVER_AT_SUGGEST"  # test-only hook: "N" kills the driver right after the N-th
# suggestion is in optuna.db, before Tune's next experiment snapshot (the moment that orphans an Optuna trial)


def define_space(trial: optuna.Trial, space: tuple[str, ...]) -> None:
    """Sample the hyperparameters named in `space`; does no other work. Log scales where multiplicative."""
    if "lr" in space:
        trial.suggest_float("lr", 3e-4, 1e-2, log=True)             # peak LR of the one-cycle schedule
    if "weight_decay" in space:
        trial.suggest_float("weight_decay", 1e-5, 5e-2, log=True)   # AdamW, decoupled
    if "dropout" in space:
        trial.suggest_float("dropout", 0.0, 0.6)
    if "batch_size" in space:
        trial.suggest_categorical("batch_size", [64, 128, 256])
    if "width" in space:
        trial.suggest_categorical("width", [16, 32, 64])             # channels of the first block
    if "depth" in space:
        trial.suggest_int("depth", 2, 3)
    if "label_smoothing" in space:
        trial.suggest_float("label_smoothing", 0.0, 0.2)
    if "erase_p" in space:
        trial.suggest_float("erase_p", 0.0, 0.5)


class CVOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED (not COMPLETE) for trials ASHA stopped before max_t.

    Ray's OptunaSearch reports every trial that ended without error as COMPLETE with its last value, so a
    1-epoch value would compete with 15-epoch values in TPE's good/bad split. The intermediate values are
    already in the study (on_trial_result), so a PRUNED trial keeps its learning curve.
    """

    def __init__(self, *args, max_t: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_t = max_t

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if os.environ.get(KILL_ENV) == str(len(self._ot_trials)):
            os.kill(os.getpid(), signal.SIGKILL)
        return config

    def restore(self, checkpoint_path: str):
        """The searcher as Tune last saved it; then no Optuna trial may stay RUNNING without a Tune trial.

        A driver killed after Optuna recorded a new suggestion but before Tune saved its state leaves that
        trial RUNNING in optuna.db, owned by nothing the resumed search knows. It is marked FAIL (Optuna's
        own state for trials that did not finish), so the study holds each Tune trial once.
        """
        super().restore(checkpoint_path)
        owned = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            if t.number not in owned:
                self._ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
                print(f"--resume: Optuna trial {t.number} ({params}) was sampled just before the driver stopped "
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
        space=functools.partial(define_space, space=tuple(cfg.search.space)),
        metric=METRIC, mode=MODE,
        sampler=optuna.samplers.TPESampler(seed=cfg.search.search_seed),
        study_name=cfg.name, storage=storage,
        max_t=cfg.train.epochs,
    )
