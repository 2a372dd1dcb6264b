"""The search as Optuna saw it: the stored study (optuna.db), the trials' start order, and hyperparameter
importances computed at one fidelity.

Importances (fANOVA, Optuna's importance API) need trials trained equally long. Under ASHA most trials
stop early and Optuna records them as PRUNED, which its importance API ignores; with few completed
trials there is nothing to rank. So `study_at_epoch` builds an in-memory study whose values are the
fold-mean validation accuracy of every trial at one shared epoch (from epochs.parquet), with the
search-space distributions taken from optuna.db. At the full budget, when enough trials completed, this
is the ordinary study of completed trials.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from analysis.run_tables import Run, values_at_epoch

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_study(run: Run) -> optuna.Study | None:
    """The run's study, read from a private copy of optuna.db (so the run's file is never touched);
    None when the file or the study is missing or unreadable."""
    db = run.run_dir / "optuna.db"
    if not db.is_file():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "optuna.db"
        shutil.copyfile(db, copy)
        try:
            storage = optuna.storages.RDBStorage(f"sqlite:///{copy}")
            study = optuna.load_study(study_name=run.summary["name"], storage=storage)
            # Materialise the trials before the copy is deleted: later reads come from memory.
            memory = optuna.create_study(directions=study.directions)
            memory.add_trials(study.get_trials(deepcopy=False))
            storage.engine.dispose()
        except Exception:  # a missing study (KeyError), a foreign schema, a corrupt file: no study
            return None
    return memory


def _same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.isclose(a[k], b[k], rtol=1e-9, atol=0) if isinstance(a[k], float) else a[k] == b[k] for k in a)


def start_order(study: optuna.Study | None, run: Run) -> pd.Series:
    """trial_id -> Optuna trial number (the order trials were sampled), matched on the sampled values;
    trials without a match (or no study) are numbered after the others in table order."""
    numbers: dict[str, int] = {}
    if study is not None:
        for _, row in run.trials.iterrows():
            searched = row.searched if isinstance(row.searched, str) else ""
            params = {p: row[f"config_{p}"] for p in searched.split(",") if p}
            params = {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in params.items()}
            for t in study.get_trials(deepcopy=False):
                if t.number not in numbers.values() and _same_params(t.params, params):
                    numbers[row.trial_id] = t.number
                    break
    nxt = max(numbers.values(), default=-1) + 1
    for tid in run.trials.trial_id:
        if tid not in numbers:
            numbers[tid], nxt = nxt, nxt + 1
    return pd.Series(numbers, name="number")


def distributions(study: optuna.Study | None) -> dict:
    """The search space as Optuna distributions (union over the stored trials)."""
    out: dict = {}
    for t in study.get_trials(deepcopy=False) if study is not None else []:
        out.update(t.distributions)
    return out


def study_at_epoch(run: Run, dists: dict, epoch: int, metric: str = "val_acc") -> optuna.Study:
    """An in-memory study with one COMPLETE trial per run trial that reached `epoch` on every fold,
    valued at its fold-mean `metric` there."""
    values = values_at_epoch(run.epochs, epoch, run.folds, metric).mean(axis=1)
    study = optuna.create_study(direction="maximize")
    trials = run.trials.set_index("trial_id")
    names = [n for n in run.searched if n in dists]
    for trial_id, value in values.items():
        row = trials.loc[trial_id]
        params = {n: row[f"config_{n}"] for n in names}
        params = {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={n: dists[n] for n in names}, value=float(value),
            user_attrs={"trial_id": trial_id}))
    return study


def param_importances(study: optuna.Study, seed: int = 0) -> pd.Series:
    """fANOVA importances (sum to 1), largest first; empty when fewer than 3 trials or constant values."""
    values = [t.value for t in study.get_trials(deepcopy=False)]
    if len(values) < 3 or np.ptp(values) == 0 or not study.trials[0].params:
        return pd.Series(dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning and sklearn chatter on tiny samples
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    return pd.Series({k: float(v) for k, v in imp.items()}, name="importance")
