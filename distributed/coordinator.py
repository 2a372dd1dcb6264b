"""The slot coordinator: one small actor per search that hands trials to warm fold-worker groups.

    Tune trial (distributed.trial)      --submit / results-->   Coordinator   <--get_job / fold_report--  fold workers
    driver (SlotCallback, Tune events)  --decide / end------>   (this file)                                (distributed.cv)

It holds the queue of submitted trials, which slot runs which trial, each trial's per-fold epoch reports and
their fold-mean aggregates, and Tune's decision after every epoch (continue, or stop). No torch here: the
trial client and the driver import this module, and neither should pay for torch.

Invariants it keeps (issue "warm fold workers"):
- all K workers of a slot run the same trial; a slot takes its next trial only when all K have left the last;
- a fold may write epoch e of a trial only after Tune decided to continue after epoch e-1 (`may_write`), so a
  trial that ASHA stopped after epoch e never gets epoch e+1 anywhere (tables, optuna.db, folds/);
- an epoch reaches Tune once, when all K folds have reported it (a fold that re-reports after a restart is
  ignored), so a restarted worker group never makes Tune see an epoch twice.
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from distributed.config import FOLD_METRICS

CHECKPOINT_PATH_KEY = "checkpoint_path"  # the key Ray's TuneReportCallback uses; distributed.tables reads it


def fold_mean(folds: list[dict]) -> dict:
    """K per-fold metric dicts of one epoch -> the dict Tune sees: fold-mean, fold-std (ddof=1), per-fold lists.

    Where the folds ran is a comma-joined string, not a list: Tune's TensorBoard logger warns about every
    list it cannot draw as a histogram (a list of strings), once per trial."""
    folds = sorted(folds, key=lambda m: m["fold"])
    out = {"epoch": folds[0]["epoch"], "num_folds": len(folds),
           "fold_node_ids": ",".join(m["node_id"] for m in folds),
           "fold_node_ips": ",".join(m["node_ip"] for m in folds),
           "fold_pids": [m.get("pid") for m in folds]}
    for key in FOLD_METRICS:
        values = [float(m[key]) for m in folds]
        out[f"{key}_mean"] = float(np.mean(values))
        out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[f"{key}_folds"] = values
    return out


@dataclass
class TrialState:
    trial_id: str
    hparams: dict
    slot: int | None = None
    folds: dict[int, dict[int, dict]] = field(default_factory=dict)  # epoch -> fold -> metrics
    checkpoints: dict[int, str] = field(default_factory=dict)        # epoch -> checkpoint directory
    results: list[dict] = field(default_factory=list)                # aggregated epochs, in order
    continue_after: int = 0      # Tune decided to continue after this epoch (0: nothing decided yet)
    stopped: bool = False        # Tune stopped or ended the trial: no more epochs
    error: str | None = None
    finished: bool = False       # the last epoch of the budget was aggregated
    assignments: int = 0         # times the trial was handed to a worker group (> 1: restarts)
    first_step_at: dict[int, float] = field(default_factory=dict)    # fold -> wall time of its first step

    @property
    def over(self) -> bool:
        return self.stopped or self.error is not None or self.finished


@dataclass
class SlotState:
    current: str | None = None
    handed: set[int] = field(default_factory=set)  # ranks of the current worker group given the current trial
    left: set[int] = field(default_factory=set)    # ranks that have left the current trial
    dead: str | None = None                       # why the slot's Train run ended, if it did
    up: set[int] = field(default_factory=set)      # ranks that have asked for work at least once


class Coordinator:
    """An asyncio actor: every wait is an awaited condition, so nothing polls and nothing blocks the others."""

    def __init__(self, folds: int, num_slots: int, epochs: int, max_failures: int):
        self.k, self.epochs, self.max_failures = folds, epochs, max_failures
        self.trials: dict[str, TrialState] = {}
        self.queue: deque[str] = deque()
        self.slots = [SlotState() for _ in range(num_slots)]
        self.tune_started: dict[str, float] = {}  # trial -> wall time Tune started it (SlotCallback)
        self.shutting_down = False
        self.fatal: dict | None = None  # what stops the whole search: {"message": one line, "code": exit code}
        self.changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _wait(self, predicate, timeout: float | None = None) -> bool:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(predicate), timeout)
                return True
            except asyncio.TimeoutError:
                return False

    # ------------------------------------------------------------------ the trial side (distributed.trial)
    async def submit(self, trial_id: str, hparams: dict) -> None:
        """Queue a trial. A trial submitted again (Tune restarted its client) keeps its state and its slot."""
        if trial_id not in self.trials:
            self.trials[trial_id] = TrialState(trial_id, hparams)
            self.queue.append(trial_id)
        t = self.trials[trial_id]
        if t.stopped and not t.finished and t.error is None:  # Tune retried a trial it had ended: run it again
            t.stopped = False
            if t.slot is None and trial_id not in self.queue:
                self.queue.append(trial_id)
        if all(s.dead for s in self.slots):
            t.error = t.error or self._all_dead()
        await self._notify()

    async def results(self, trial_id: str, cursor: int, timeout: float = 30.0) -> dict:
        """Aggregated epochs from `cursor` on, waiting up to `timeout` s for one; and whether the trial is over."""
        t = self.trials[trial_id]
        await self._wait(lambda: len(t.results) > cursor or t.over, timeout)
        return {"results": t.results[cursor:], "finished": t.finished,
                "error": t.error, "stopped": t.stopped}

    # ------------------------------------------------------------------ the driver side (slots.SlotCallback)
    def trial_started(self, trial_id: str, at: float) -> None:
        self.tune_started.setdefault(trial_id, at)  # the first start: a restarted trial keeps its clock

    async def decide(self, trial_id: str, epoch: int, stop: bool) -> None:
        """Tune's decision after `epoch`: continue (ASHA promoted or kept it) or stop."""
        t = self.trials.get(trial_id)
        if t is None:
            return
        if stop:
            t.stopped = True
        else:
            t.continue_after = max(t.continue_after, epoch)
        await self._notify()

    async def end(self, trial_id: str) -> None:
        """Tune ended the trial (completed, stopped or errored): its slot abandons it at the next check."""
        t = self.trials.get(trial_id)
        if t is not None and not t.over:
            t.stopped = True
        if trial_id in self.queue:
            self.queue.remove(trial_id)
        await self._notify()

    async def shutdown(self) -> None:
        self.shutting_down = True
        await self._notify()

    def engine_stats(self) -> dict:
        """Per trial: seconds from Tune starting it to the last of its folds starting its first training step."""
        latency = {}
        for t in self.trials.values():
            started = self.tune_started.get(t.trial_id)
            if started is not None and len(t.first_step_at) == self.k:
                latency[t.trial_id] = round(max(t.first_step_at.values()) - started, 3)
        return {"trial_start_latency_s": latency,
                "restarts": {t.trial_id: t.assignments - 1 for t in self.trials.values() if t.assignments > 1}}

    # ------------------------------------------------------------------ the worker side (distributed.cv)
    def _all_dead(self) -> str:
        return "every slot's worker group has ended: " + "; ".join(sorted({s.dead for s in self.slots if s.dead}))

    def _release(self, slot: SlotState) -> None:
        """Free the slot once its trial is over (the ranks still on it abandon it at their next check), or when
        all K ranks have left it."""
        t = self.trials.get(slot.current) if slot.current else None
        if t is None or not (t.over or len(slot.left) == self.k):
            return
        if not t.over:  # every fold left a trial that is not over: only shutdown does that
            t.error = "the fold workers left the trial before its last epoch"
        slot.current, slot.handed, slot.left = None, set(), set()

    async def get_job(self, slot_index: int, rank: int, left: str | None) -> dict | None:
        """The trial this slot's rank should run next (None: the search is over).

        `left` is the trial this rank just finished or abandoned (None: the rank's process just started). A rank
        that was already handed the slot's current trial and asks again with left=None belongs to a worker group
        that Ray Train restarted: it gets the same trial back, to resume from its fold's last checkpoint.
        """
        slot = self.slots[slot_index]
        slot.up.add(rank)
        if left is not None and left == slot.current:
            slot.left.add(rank)
        elif left is None and slot.current and rank in slot.handed:  # a restarted worker group
            t = self.trials[slot.current]
            t.assignments += 1
            slot.handed, slot.left = set(), set()
            self._restart_check(t)

        def ready() -> bool:
            if self.shutting_down:
                return True
            self._release(slot)
            if slot.current is None:
                while self.queue and self.trials[self.queue[0]].over:
                    self.queue.popleft()
                if not self.queue:
                    return False
                t = self.trials[self.queue.popleft()]
                slot.current, slot.handed, slot.left = t.trial_id, set(), set()
                t.slot, t.assignments = slot_index, t.assignments + 1
                self._restart_check(t)
            return slot.current != left and rank not in slot.left

        async with self.changed:
            self.changed.notify_all()  # a rank waiting in this slot may now see it released
            await self.changed.wait_for(ready)
            self.changed.notify_all()  # ... or another slot's rank the queue it popped
        if self.shutting_down:
            return None
        slot.handed.add(rank)
        t = self.trials[slot.current]
        return {"trial_id": t.trial_id, "hparams": t.hparams}

    def _restart_check(self, t: TrialState) -> None:
        restarts = t.assignments - 1
        if restarts > self.max_failures and t.error is None:
            t.error = (f"the fold worker group failed {restarts} times while running this trial "
                       f"(--max-failures {self.max_failures})")

    async def wait_ready(self, timeout: float | None = None) -> dict:
        """Wait until every slot has all K workers asking for work (or has failed, or the search cannot run);
        how many are up."""
        await self._wait(lambda: self.fatal or all(len(s.up) == self.k or s.dead for s in self.slots), timeout)
        return {"up": sum(len(s.up) == self.k for s in self.slots), "dead": [s.dead for s in self.slots if s.dead],
                "fatal": self.fatal}

    async def stop_search(self, message: str, code: int) -> None:
        """A fold worker cannot go on (its node cannot see the run directory, its disk is full): the driver's
        StopGuard stops the search as Ctrl-C does (distributed.guard). The first message is the one kept; the
        trials stay as they are, to be resumed."""
        self.fatal = self.fatal or {"message": message, "code": code}
        await self._notify()

    def fatal_error(self) -> dict | None:
        return self.fatal

    async def started(self, trial_id: str, fold: int, at: float) -> None:
        """A fold began its first training step of the trial (for trial_start_latency_s)."""
        self.trials[trial_id].first_step_at.setdefault(fold, at)

    async def may_write(self, trial_id: str, epoch: int) -> bool:
        """Wait until Tune has decided about epoch-1 of the trial; True: write and report epoch, False: abandon."""
        t = self.trials[trial_id]
        await self._wait(lambda: t.over or t.continue_after >= epoch - 1 or self.shutting_down)
        return not (t.over or self.shutting_down)

    def is_over(self, trial_id: str) -> bool:
        """Cheap mid-epoch check: has Tune stopped the trial (or has it failed)?"""
        t = self.trials[trial_id]
        return t.over or self.shutting_down

    async def fold_report(self, trial_id: str, fold: int, metrics: dict, checkpoint: str | None) -> None:
        """One fold's epoch. When all K folds of an epoch are in, the epoch becomes a Tune result."""
        t = self.trials[trial_id]
        epoch = int(metrics["epoch"])
        if t.over or epoch <= len(t.results):  # a stopped trial, or an epoch Tune has seen (a restarted fold)
            return
        t.folds.setdefault(epoch, {}).setdefault(fold, metrics)
        if checkpoint:
            t.checkpoints[epoch] = checkpoint
        # epochs reach Tune in order: an epoch completes once it and every earlier epoch has all K folds
        while len(t.folds.get(len(t.results) + 1, {})) == self.k:
            e = len(t.results) + 1
            result = fold_mean(list(t.folds[e].values()))
            if e in t.checkpoints:
                result[CHECKPOINT_PATH_KEY] = t.checkpoints[e]
            t.results.append(result)
            del t.folds[e]  # the aggregate is what stays
            if e >= self.epochs:
                t.finished = True
        await self._notify()

    async def fold_error(self, trial_id: str, fold: int, message: str) -> None:
        """The trial's training raised in a fold (not a dead worker): the trial errors, the slot goes on."""
        t = self.trials[trial_id]
        if t.error is None:
            t.error = f"fold {fold}: {message}"
        await self._notify()

    async def slot_failed(self, slot_index: int, message: str) -> None:
        """A slot's Train run ended with an error: its trial errors; with no slot left, every trial does."""
        slot = self.slots[slot_index]
        slot.dead = message
        if slot.current and self.trials[slot.current].error is None:
            self.trials[slot.current].error = message
        slot.current, slot.left = None, set()
        if all(s.dead for s in self.slots):
            for t in self.trials.values():
                if not t.over:
                    t.error = self._all_dead()
        await self._notify()
