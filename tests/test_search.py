"""The search space and the searcher's PRUNED bookkeeping, driven directly (no Ray cluster needed)."""
import functools
import json

import optuna
import pytest

from distributed.config import PRESETS, SEARCHABLE, override
from distributed.search import define_space, make_searcher


def test_space_samples_exactly_the_named_hyperparameters():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        define_space(trial, SEARCHABLE)
        p = trial.params
        assert set(p) == set(SEARCHABLE)
        assert 3e-4 <= p["lr"] <= 1e-2 and 1e-5 <= p["weight_decay"] <= 5e-2
        assert p["batch_size"] in (64, 128, 256) and p["width"] in (16, 32, 64) and p["depth"] in (2, 3)
        assert p["fc_width"] in (128, 256, 512)
        assert 0 <= p["dropout"] <= 0.6 and 0 <= p["label_smoothing"] <= 0.2 and 0 <= p["erase_p"] <= 0.5
    assert study.trials[0].distributions["lr"].log and study.trials[0].distributions["weight_decay"].log
    trial = study.ask()
    define_space(trial, ("dropout",))
    assert set(trial.params) == {"dropout"}


def result(value, it):
    return {"val_acc_mean": value, "epoch": it, "training_iteration": it}


def test_asha_stopped_trials_are_pruned_with_whole_curves(tmp_path):
    cfg = override(PRESETS["smoke"], epochs=3, name="unit")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(cfg, url)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert all(set(c) == set(cfg.search.space) for c in configs)
    # t0 runs the full budget; t1 is stopped after epoch 1; t2 errors
    searcher.on_trial_result("t0", result(0.5, 1))
    searcher.on_trial_result("t0", result(0.6, 2))
    searcher.on_trial_result("t0", result(0.6, 2))  # a replayed epoch (resumed trial) is recorded once
    searcher.on_trial_complete("t0", result(0.7, 3))
    searcher.on_trial_complete("t1", result(0.3, 1))
    searcher.on_trial_complete("t2", None, error=True)
    study = optuna.load_study(study_name="unit", storage=url)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                      optuna.trial.TrialState.FAIL]
    assert study.trials[0].value == pytest.approx(0.7)
    assert study.trials[0].intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}
    # Optuna stores a pruned trial's last intermediate value as its value; the state is what TPE reads
    assert study.trials[1].intermediate_values == {1: 0.3}
    assert study.best_trial.number == 0


def test_space_function_is_picklable():
    import pickle
    f = pickle.loads(pickle.dumps(functools.partial(define_space, space=("lr",))))
    study = optuna.create_study()
    t = study.ask()
    f(t)
    assert list(t.params) == ["lr"]


@pytest.mark.parametrize("preset", ["smoke", "quick", "full"])
def test_asha_takes_epochs_budget_and_rungs_from_the_config(preset, tmp_path):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from distributed.tuner import make_scheduler
    cfg = PRESETS[preset]
    asha = make_scheduler(cfg, tmp_path)
    assert isinstance(asha, ASHAScheduler)
    assert asha._time_attr == "epoch" and asha._max_t == cfg.train.epochs
    # rungs: grace_period * reduction_factor**k below max_t, e.g. full (30 epochs, grace 3, rf 3) -> 27, 9, 3
    g, rf = cfg.search.grace_period, cfg.search.reduction_factor
    expected = [g * rf ** k for k in range(10) if g * rf ** k < cfg.train.epochs]
    assert sorted(milestone for milestone, _ in asha._brackets[0]._rungs) == expected
    assert isinstance(make_scheduler(override(cfg, scheduler="fifo"), tmp_path), FIFOScheduler)


def test_the_searcher_limits_concurrency_itself(tmp_path):
    """Tune's ConcurrencyLimiter is told to pass through; a trial's end frees its place."""
    cfg = override(PRESETS["smoke"], epochs=3, name="unit")
    searcher = make_searcher(cfg, f"sqlite:///{tmp_path / 'optuna.db'}")
    assert searcher.set_max_concurrency(2) is True
    assert searcher.suggest("a") is not None and searcher.suggest("b") is not None
    assert searcher.suggest("c") is None and searcher.live_trials() == ["a", "b"]
    searcher.on_trial_complete("a", result(0.4, 1))  # stopped early: PRUNED, and no longer live
    assert set(searcher.suggest("c")) == set(cfg.search.space) and searcher.live_trials() == ["b", "c"]


def write_tune_snapshot(directory, trials):
    """An experiment_state-*.json as Tune writes it: trial_data holds (trial state, run metadata) JSON pairs."""
    data = [[json.dumps({"trial_id": tid, "status": status, "config": {}}),
             json.dumps({"last_result": last, "num_failures": 0})] for tid, status, last in trials]
    (directory / "experiment_state-2026-12-03_07-00-00.json").write_text(json.dumps({"trial_data": data}))
    (directory / "experiment_state-2026-12-03_06-00-00.json").write_text(json.dumps({"trial_data": []}))  # older


def test_resume_settles_every_running_optuna_trial_by_what_tune_saved(tmp_path, capsys):
    """A driver killed between Tune's save of its trials and the searcher's: Tune's snapshot knows trials
    the searcher's does not. Each RUNNING Optuna trial is then resumed, told, or failed, by Tune's snapshot."""
    cfg = override(PRESETS["smoke"], epochs=3, name="unit", num_samples=6)
    url, states = f"sqlite:///{tmp_path / 'optuna.db'}", optuna.trial.TrialState
    searcher = make_searcher(cfg, url)
    searcher.set_max_concurrency(4)
    for tid in ("done", "ended", "told"):
        searcher.suggest(tid)
    searcher.on_trial_complete("done", result(0.7, 3))
    searcher.on_trial_result("ended", result(0.5, 1))
    searcher.save(str(tmp_path / "searcher-state-x.pkl"))  # the searcher's last save...
    searcher.suggest("resumed")  # ...then: a new trial Tune saved, a result Tune saved, an end Optuna stored
    searcher.suggest("orphan")   # and a suggestion Tune never saved
    searcher.on_trial_complete("told", result(0.6, 3))
    write_tune_snapshot(tmp_path, [("done", "TERMINATED", result(0.7, 3)), ("ended", "TERMINATED", result(0.8, 3)),
                                   ("told", "TERMINATED", result(0.6, 3)), ("resumed", "PENDING", {})])

    fresh = make_searcher(cfg, url)
    fresh.restore(str(tmp_path / "searcher-state-x.pkl"))
    out = capsys.readouterr().out.splitlines()
    study = optuna.load_study(study_name="unit", storage=url)
    assert [t.state for t in study.trials] == [states.COMPLETE, states.COMPLETE, states.COMPLETE, states.RUNNING,
                                               states.FAIL]
    assert study.trials[1].value == pytest.approx(0.8) and study.trials[1].intermediate_values == {1: 0.5, 3: 0.8}
    assert [t.user_attrs["tune_trial_id"] for t in study.trials] == ["done", "ended", "told", "resumed", "orphan"]
    assert out == ["--resume: trial ended had finished before the driver stopped; its result is now in optuna.db "
                   "(Optuna trial 1)",
                   out[1]]
    assert out[1].startswith("--resume: Optuna trial 4 (") and out[1].endswith("belongs to no trial; marked FAIL "
                                                                               "in optuna.db")
    # the resumed trial is the searcher's own again: its results land, and it holds one of the 4 places
    assert fresh.live_trials() == ["resumed"]
    fresh.on_trial_result("resumed", result(0.55, 1))
    fresh.on_trial_complete("resumed", result(0.65, 3))
    study = optuna.load_study(study_name="unit", storage=url)
    assert study.trials[3].state == states.COMPLETE and study.trials[3].intermediate_values == {1: 0.55, 3: 0.65}
    # the search's 6 trials are counted from the trials Tune has (4), not from the suggestions Optuna saw (5)
    assert fresh.live_trials() == [] and fresh.suggest("next") is not None and fresh.suggest("last") is not None
    assert fresh.suggest("more") == "FINISHED" and fresh.live_trials() == ["next", "last"]


def test_the_full_presets_choices_are_its_own():
    """The full preset searches GPU-sized batches and widths (no batch 64, no width 16: slow per image on a GPU
    and weak); the searcher gets the preset's choices."""
    full = PRESETS["full"].search
    assert (full.widths, full.batch_sizes, full.fc_widths) == ((32, 48, 64), (128, 256, 512), (128, 256, 512))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {"width": set(), "batch_size": set(), "fc_width": set()}
    for _ in range(60):
        trial = study.ask()
        define_space(trial, full.space, full.widths, full.batch_sizes, full.fc_widths)
        for name in seen:
            seen[name].add(trial.params[name])
    assert seen == {"width": {32, 48, 64}, "batch_size": {128, 256, 512}, "fc_width": {128, 256, 512}}
    cfg = override(PRESETS["full"], name="unit", widths=(32, 64), batch_sizes=(256,))
    searcher = make_searcher(cfg, "sqlite:///:memory:")
    configs = [searcher.suggest(f"t{i}") for i in range(8)]
    assert {c["width"] for c in configs} <= {32, 64} and {c["batch_size"] for c in configs} == {256}
