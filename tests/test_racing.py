"""Fold-paired ASHA (distributed/racing.py) on hand-made rung histories, without Ray running: the decisions
follow the rule, t and p are distributed/stats.py's, K = 1 or alpha = 1 give plain ASHA's decisions, and a
scheduler rebuilt from rungs.parquet after a crash decides as the one that never crashed."""
from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from distributed.config import METRIC, MODE, PRESETS, ConfigError, override, validate
from distributed.racing import CONTINUE, LET_THROUGH, STOP, FoldASHA, cutoff_trial, load_rungs, rung_decision
from distributed.stats import corrected_one_sided, corrected_resampled_ttest

S, C = TrialScheduler.STOP, TrialScheduler.CONTINUE


def result(epoch, folds):
    return {"epoch": epoch, METRIC: float(np.mean(folds)), "val_acc_folds": list(folds)}


def fold_asha(run_dir, alpha=0.1, max_t=4, grace=1, rf=2):
    sched = FoldASHA(run_dir, alpha=alpha, max_t=max_t, grace_period=grace, reduction_factor=rf)
    assert sched.set_search_properties(METRIC, MODE)
    return sched


def feed(sched, trial_id, epoch, folds):
    trial = SimpleNamespace(trial_id=trial_id)
    if trial_id not in sched._trial_info:
        sched.on_trial_add(None, trial)
    return sched.on_trial_result(None, trial, result(epoch, folds))


@pytest.mark.parametrize("diffs", [[0.02, 0.05, 0.01], [0.1, -0.02, 0.03, 0.04, 0.0], [0.3, 0.29]])
def test_one_sided_t_and_p_are_the_two_sided_corrected_test_halved(diffs):
    k = len(diffs)
    t, p = corrected_one_sided(diffs, 1 / (k - 1))
    ref = corrected_resampled_ttest(diffs, test_train_ratio=1 / (k - 1))
    assert t == pytest.approx(ref["t"], rel=1e-12) and t > 0
    assert p == pytest.approx(ref["p"] / 2, rel=1e-12)  # one-sided: half the two-sided p when t > 0
    assert corrected_one_sided([-d for d in diffs], 1 / (k - 1))[1] == pytest.approx(1 - ref["p"] / 2)


def test_degenerate_differences():
    assert corrected_one_sided([0.1], 0.5) == (pytest.approx(math.nan, nan_ok=True),) * 2
    assert corrected_one_sided([0.25, 0.25, 0.25], 0.5) == (math.inf, 0.0)  # the same gap on every fold: certain
    assert corrected_one_sided([0.0, 0.0], 1.0) == (0.0, 1.0)


def test_cutoff_trial_is_the_weakest_kept_one():
    assert cutoff_trial({"a": 0.9, "b": 0.7, "c": 0.8}, 0.75) == "c"
    assert cutoff_trial({"a": 0.8, "b": 0.8}, 0.8) == "a"  # ties: the smaller id


def test_rung_decision_follows_the_rule():
    cut = [0.90, 0.60, 0.84]  # mean 0.78
    assert rung_decision(0.80, [0.8] * 3, None, None, 0.1)[0] == CONTINUE   # first at its rung
    assert rung_decision(0.78, [0.78] * 3, 0.78, cut, 0.1)[0] == CONTINUE   # at the cutoff is not below it
    noisy = [0.95, 0.55, 0.80]  # mean 0.7667: below, but its folds disagree with the cutoff trial's
    decision, t, p = rung_decision(np.mean(noisy), noisy, 0.78, cut, 0.1)
    ref = corrected_resampled_ttest(np.subtract(cut, noisy), 1 / 2)
    assert decision == LET_THROUGH and t == pytest.approx(ref["t"]) and p == pytest.approx(ref["p"] / 2) and p > 0.1
    assert rung_decision(np.mean(noisy), noisy, 0.78, cut, None)[0] == STOP  # plain ASHA: below is enough
    assert rung_decision(np.mean(noisy), noisy, 0.78, cut, 1.0)[0] == STOP   # alpha 1: every test rejects
    worse = [0.86, 0.56, 0.81]  # 0.04, 0.04, 0.03 below on every fold
    decision, t, p = rung_decision(np.mean(worse), worse, 0.78, cut, 0.1)
    assert decision == STOP and p == pytest.approx(corrected_resampled_ttest(np.subtract(cut, worse), 0.5)["p"] / 2)
    assert p < 0.02
    assert rung_decision(0.5, [0.5], 0.78, [0.78], 0.1)[0] == STOP  # K = 1: nothing to test, ASHA's rule


def test_a_hand_made_rung_history(tmp_path):
    """Rungs at epochs 1 and 2 (grace 1, reduction factor 2, max_t 4); 3 folds."""
    s = fold_asha(tmp_path)
    assert feed(s, "a", 1, [0.80, 0.82, 0.84]) == C          # first at rung 1
    assert feed(s, "b", 1, [0.70, 0.72, 0.74]) == S          # 0.10 below a on every fold
    assert feed(s, "c", 1, [0.90, 0.60, 0.84]) == C          # 0.78 >= cutoff 0.77
    assert feed(s, "d", 1, [0.95, 0.55, 0.80]) == C          # 0.767 < cutoff 0.78 (c), but not surely worse
    assert feed(s, "a", 2, [0.85, 0.86, 0.87]) == C          # first at rung 2
    assert feed(s, "d", 2, [0.80, 0.84, 0.85]) == S          # 0.83 < 0.86 and below on every fold
    assert feed(s, "a", 3, [0.86, 0.87, 0.88]) == C          # no rung at 3
    assert feed(s, "a", 4, [0.87, 0.88, 0.89]) == S          # max_t
    rows = load_rungs(tmp_path)
    assert list(zip(rows.trial_id, rows.rung, rows.decision)) == [
        ("a", 1, CONTINUE), ("b", 1, STOP), ("c", 1, CONTINUE), ("d", 1, LET_THROUGH), ("a", 2, CONTINUE),
        ("d", 2, STOP)]
    d1 = rows.iloc[3]
    assert d1.cutoff == pytest.approx(0.78) and d1.cutoff_trial_id == "c" and d1.n_at_rung == 3
    assert d1.value == pytest.approx(np.mean([0.95, 0.55, 0.80])) and list(d1.folds) == [0.95, 0.55, 0.80]
    ref = corrected_resampled_ttest(np.subtract([0.90, 0.60, 0.84], [0.95, 0.55, 0.80]), 0.5)
    assert d1.t == pytest.approx(ref["t"]) and d1.p == pytest.approx(ref["p"] / 2) and d1.alpha == 0.1
    assert rows.iloc[1].cutoff_trial_id == "a" and rows.iloc[1].p < 1e-12
    assert rows.iloc[0][["cutoff", "t", "p"]].isna().all() and pd.isna(rows.cutoff_trial_id[0])


def random_history(rng, n_trials, k, epochs):
    """Per trial and epoch K fold accuracies (trial quality + fold noise), and an asynchronous arrival order."""
    quality = rng.uniform(0.6, 0.9, n_trials)
    folds = {f"t{i}": {e: list(np.clip(quality[i] + 0.02 * e + rng.normal(0, 0.03, k), 0, 1))
                       for e in range(1, epochs + 1)} for i in range(n_trials)}
    order, next_epoch = [], {tid: 1 for tid in folds}
    while any(e <= epochs for e in next_epoch.values()):  # a random running trial reports its next epoch
        tid = rng.choice([t for t, e in next_epoch.items() if e <= epochs])
        order.append((tid, next_epoch[tid]))
        next_epoch[tid] += 1
    return folds, order


def drive(sched, folds, order, stopped=None, actions=None):
    """Feed `order` as Tune would: a stopped trial reports no more. Returns {(trial, epoch): action}."""
    stopped = set() if stopped is None else stopped
    actions = {} if actions is None else actions
    for tid, epoch in order:
        if tid in stopped:
            continue
        actions[(tid, epoch)] = a = feed(sched, tid, epoch, folds[tid][epoch])
        if a == S:
            stopped.add(tid)
    return actions


@pytest.mark.parametrize("k, alpha", [(1, 0.1), (3, 1.0), (3, None), (5, 0.5)])
def test_plain_ashas_decisions_when_k_is_1_or_alpha_1(tmp_path, k, alpha):
    rng = np.random.default_rng(k)
    folds, order = random_history(rng, n_trials=12, k=k, epochs=9)
    ray_asha = ASHAScheduler(time_attr="epoch", max_t=9, grace_period=1, reduction_factor=3)
    ray_asha.set_search_properties(METRIC, MODE)
    ours = drive(fold_asha(tmp_path, alpha=alpha, max_t=9, rf=3), folds, order)
    assert ours == drive(ray_asha, folds, order)
    assert list(ours.values()).count(S) >= 6  # the streams do stop trials below the cutoffs


def test_fold_asha_lets_noisy_trials_through_where_asha_stops(tmp_path):
    rng = np.random.default_rng(7)
    folds, order = random_history(rng, n_trials=12, k=3, epochs=9)
    asha = drive(fold_asha(tmp_path / "asha", alpha=None, max_t=9, rf=3), folds, order)
    racing = drive(fold_asha(tmp_path / "fold", alpha=0.1, max_t=9, rf=3), folds, order)
    assert sum(a == S and e < 9 for (_, e), a in racing.items()) < sum(a == S and e < 9 for (_, e), a in asha.items())
    rows = load_rungs(tmp_path / "fold")
    below = rows.value < rows.cutoff  # False where there is no cutoff (NaN)
    assert (rows.decision[~below] == CONTINUE).all()
    assert (rows.decision[below] == np.where(rows.p[below] <= 0.1, STOP, LET_THROUGH)).all()
    assert (rows.decision == LET_THROUGH).sum() >= 2


@pytest.mark.parametrize("crash_at", [5, 17, 30])
def test_rungs_rebuilt_after_a_crash_give_the_same_decisions(tmp_path, crash_at):
    rng = np.random.default_rng(crash_at)
    folds, order = random_history(rng, n_trials=10, k=3, epochs=9)
    whole = drive(fold_asha(tmp_path / "whole", max_t=9, rf=3), folds, order)

    run_dir = tmp_path / "crashed"
    fresh = pickle.dumps(FoldASHA(run_dir, alpha=0.1, max_t=9, grace_period=1, reduction_factor=3))  # tuner.pkl
    first = pickle.loads(fresh)
    first.set_search_properties(METRIC, MODE)
    stopped = set()
    before = drive(first, folds, order[:crash_at], stopped)
    # The driver dies right after the last decision: Tune may not have saved it, so that trial restarts too.
    last = list(before)[-1][0]
    seen = {}
    for tid, epoch in before:  # in the order reported
        seen.setdefault(tid, []).append(epoch)
    finished = {tid for tid in stopped if tid != last}
    resumed = pickle.loads(fresh)
    resumed.set_search_properties(METRIC, MODE)  # what Tune calls first: loads rungs.parquet
    after = {}
    for tid, epochs in seen.items():  # restarted trials replay every epoch they reported
        if tid in finished:
            continue
        for epoch in epochs:
            after[(tid, epoch)] = a = feed(resumed, tid, epoch, folds[tid][epoch])
            assert a == before[(tid, epoch)], (tid, epoch)
        if after[(tid, epochs[-1])] == S:
            finished.add(tid)
    drive(resumed, folds, order[crash_at:], finished, after)
    assert {**before, **after} == whole
    pd.testing.assert_frame_equal(load_rungs(run_dir), load_rungs(tmp_path / "whole"))
    assert not load_rungs(run_dir).duplicated(["trial_id", "rung"]).any()


def test_one_rungs_reader_for_engine_and_report(tmp_path):
    from analysis.run_tables import rung_table
    from distributed.racing import RUNG_COLUMNS
    assert load_rungs(tmp_path).empty and list(load_rungs(tmp_path).columns) == list(RUNG_COLUMNS)
    assert rung_table(tmp_path).empty and list(rung_table(tmp_path).columns) == [*RUNG_COLUMNS, "fold_std"]
    (tmp_path / "rungs.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(ConfigError, match="rungs.parquet: unreadable Parquet"):
        load_rungs(tmp_path)


def test_why_it_stopped_and_the_rung_view_from_a_hand_made_history(tmp_path):
    from analysis.plots_search import plot_rungs
    from analysis.run_tables import rung_table, why_stopped

    s = fold_asha(tmp_path)
    for tid, epoch, folds in [("a", 1, [0.80, 0.82, 0.84]), ("b", 1, [0.70, 0.72, 0.74]),
                              ("c", 1, [0.90, 0.60, 0.84]), ("d", 1, [0.95, 0.55, 0.80]),
                              ("a", 2, [0.85, 0.86, 0.87]), ("d", 2, [0.80, 0.84, 0.85])]:
        feed(s, tid, epoch, folds)
    rungs = rung_table(tmp_path)
    assert rungs.fold_std.iloc[0] == pytest.approx(0.02)
    trials = pd.DataFrame({"trial_id": ["a", "b", "c", "d", "e"], "epochs_run": [4, 1, 4, 2, 1],
                           "status": ["completed", "pruned", "completed", "pruned", "errored"]})
    why = why_stopped(trials, rungs).tolist()
    p_b, p_d1, p_d2 = rungs.p.iloc[1], rungs.p.iloc[3], rungs.p.iloc[5]
    assert why == ["ran the full budget",
                   f"rung 1: 0.7200 < cutoff 0.8200 (a), p = {p_b:.3g} <= 0.1",
                   "ran the full budget",
                   f"rung 2: 0.8300 < cutoff 0.8600 (a), p = {p_d2:.3g} <= 0.1; let through at rung 1 (p = {p_d1:.3f})",
                   "errored"]
    plain = rungs.assign(p=math.nan, t=math.nan, alpha=math.nan)
    assert why_stopped(trials.iloc[1:2], plain).tolist() == ["rung 1: 0.7200 < cutoff 0.8200 (a) (ASHA: the mean alone)"]
    assert why_stopped(trials.iloc[1:2], rungs.iloc[:0]).tolist() == ["stopped after 1 epoch(s), no rung decision recorded"]
    fig = plot_rungs(rungs)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["rung at epoch 1: 4 trial(s), 1 stopped",
                                               "rung at epoch 2: 2 trial(s), 1 stopped"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["a", "b", "c", "d"]


def test_config_takes_fold_asha_and_checks_alpha():
    cfg = override(PRESETS["smoke"], scheduler="fold-asha", racing_alpha=0.05)
    validate(cfg)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"--racing-alpha .*must be in \(0, 1\]"):
            validate(override(cfg, racing_alpha=bad))
    with pytest.raises(ConfigError, match="choose 'asha', 'fold-asha' or 'fifo'"):
        validate(override(cfg, scheduler="racing"))


def check_smoke_rungs(rungs: pd.DataFrame, trials: pd.DataFrame) -> None:
    """A smoke search's rungs.parquet (3 folds, rungs at epochs 1 and 2, reduction factor 2) against the rule
    and against trials.parquet (indexed by trial_id)."""
    reached = {(tid, r) for tid, n in trials.epochs_run.items() for r in (1, 2) if n >= r}
    assert set(zip(rungs.trial_id, rungs.rung)) == reached and len(rungs) == len(reached)
    # each cutoff is ASHA's (median of the trials already there), each test the rule's
    for rung, g in rungs.groupby("rung"):
        for i, r in enumerate(g.itertuples()):
            assert r.n_at_rung == i
            if i == 0:
                assert r.decision == CONTINUE and pd.isna(r.cutoff)
                continue
            assert r.cutoff == pytest.approx(np.percentile(g.value.iloc[:i], 50))
            if r.value >= r.cutoff:
                assert r.decision == CONTINUE
                continue
            ref = g.set_index("trial_id").loc[r.cutoff_trial_id]
            test = corrected_resampled_ttest(np.subtract(ref.folds, r.folds), 1 / 2)
            assert r.t == pytest.approx(test["t"]) and r.p == pytest.approx(test["p"] / 2)
            assert r.decision == (STOP if r.p <= 0.1 else LET_THROUGH)
    # a stop ends the trial there (Optuna: PRUNED); a trial let through runs on and is not pruned
    stops = rungs[rungs.decision == STOP]
    assert set(stops.trial_id) == set(trials.index[trials.status == "pruned"])
    assert all(trials.epochs_run[t] == r for t, r in zip(stops.trial_id, stops.rung))
    ran_on = rungs[rungs.decision != STOP]
    assert all(trials.epochs_run[t] > r for t, r in zip(ran_on.trial_id, ran_on.rung))


@pytest.mark.ray
def test_a_real_fold_asha_smoke_search_records_every_rung(ray_local, tmp_path):
    import optuna

    from analysis import sections_search
    from analysis.html import Section
    from analysis.run_tables import load_run, trials_display
    from conftest import load_script

    code = load_script("tune").main(["--preset", "smoke", "--scheduler", "fold-asha", "--name", "racing",
                                     "--storage-path", str(tmp_path)])
    assert code == 0
    run_dir = tmp_path / "racing"
    rungs, trials = load_rungs(run_dir), pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    # a row for every (trial, rung) reached (rungs at epochs 1 and 2 of 3), and no other
    reached = {(tid, r) for tid, n in trials.epochs_run.items() for r in (1, 2) if n >= r}
    assert set(zip(rungs.trial_id, rungs.rung)) == reached and len(rungs) == len(reached)
    for r in rungs.itertuples():  # the fold values are the epoch's, fold by fold
        at = epochs[(epochs.trial_id == r.trial_id) & (epochs.epoch == r.rung)].sort_values("fold")
        assert list(r.folds) == pytest.approx(at.val_acc.tolist()) and r.value == pytest.approx(at.val_acc.mean())
    check_smoke_rungs(rungs, trials)
    study = optuna.load_study(study_name="racing", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    pruned = {t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert len(pruned) == (trials.status == "pruned").sum()
    # the report's rung view and "why it stopped"
    run = load_run(run_dir)
    sec = Section("search", "The search")
    sections_search.rung_view(sec, run)
    assert sec.figures["rungs"][:8] == b"\x89PNG\r\n\x1a\n" and len(sec.tables["rungs"]) == len(rungs)
    assert sec.parts[-1].count("<tr>") == len(rungs) + 1
    why = trials_display(run).set_index("trial")["why it stopped"]
    for tid, status in trials.status.items():
        assert why[tid].startswith("rung " if status == "pruned" else "ran the full budget")


@pytest.mark.slow  # 80 s: make test stays under 30 minutes (`make test-all` runs it)
@pytest.mark.ray
@pytest.mark.faults
def test_driver_killed_right_after_a_rung_decision_resumes_with_the_same_rungs(tmp_path):
    """The driver dies right after the third decision (the second trial's first rung) is in rungs.parquet,
    before Tune acted on it. The resumed search rebuilds the rungs from the file: the restarted trial's
    replayed epochs add no rows and get the same decision, and later trials meet cutoffs that still hold
    the trial that finished before the kill."""
    import os
    import subprocess
    import sys

    from distributed.racing import KILL_ENV
    from conftest import ROOT

    cmd = [sys.executable, str(ROOT / "experiments" / "tune.py"), "--preset", "smoke", "--scheduler", "fold-asha",
           "--storage-path", str(tmp_path), "--name", "kill"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, KILL_ENV: "3"})
    assert out.returncode == -9, out.stderr[-2000:]
    run_dir = tmp_path / "kill"
    before = load_rungs(run_dir)
    assert len(before) == 3 and before.trial_id.nunique() == 2

    out = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={k: v for k, v in os.environ.items() if k != KILL_ENV})
    assert out.returncode == 0, out.stderr[-3000:]
    after = load_rungs(run_dir)
    pd.testing.assert_frame_equal(after.iloc[:3], before)  # the decisions made before the kill, unchanged
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    assert len(trials) == 4
    check_smoke_rungs(after, trials)  # one row per (trial, rung) reached; every cutoff counts the first trial
    assert after.n_at_rung[after.rung == 1].tolist() == [0, 1, 2, 3]
