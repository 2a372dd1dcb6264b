"""The trial-side client of the slots: the function each Tune trial runs, thin and torch-free.

It hands its hyperparameters to the coordinator, which queues them for the next free slot, and relays every
epoch the slot's K folds finish (fold-mean, fold-std, per-fold lists and the epoch's checkpoint directory)
to Tune with ray.tune.report. ASHA and Optuna see exactly what they saw when each trial was its own Train
run. This module must not import torch (nor anything that does): it is what every trial actor imports, and
it starts in well under a second.
"""
from __future__ import annotations

import ray
import ray.tune

# The trial actor only waits on the coordinator (the slots' workers hold the real resources), but Tune
# refuses an empty resource request: it gets a token share of a CPU.
TRIAL_CPU = 0.01


class TrialFailed(RuntimeError):
    """The trial's folds failed (the message says how); Tune records the trial as errored."""


def run_trial(hparams: dict, coordinator) -> None:
    trial_id = ray.tune.get_context().get_trial_id()
    ray.get(coordinator.submit.remote(trial_id, hparams))
    # A new client starts at the trial's first epoch: after Tune restarted the trial (a resumed search, a
    # lost node) it replays the epochs already trained, so Tune, ASHA and the tables see the whole curve.
    cursor = 0
    while True:
        reply = ray.get(coordinator.results.remote(trial_id, cursor))
        for result in reply["results"]:
            ray.tune.report(result)
        cursor += len(reply["results"])
        if reply["error"]:
            raise TrialFailed(reply["error"])
        if reply["finished"] or (reply["stopped"] and not reply["results"]):
            return
