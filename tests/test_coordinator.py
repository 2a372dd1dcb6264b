"""The slot coordinator's rules, without Ray: the actor class is plain asyncio, driven here step by step."""
import asyncio

import pytest

from distributed.config import FOLD_METRICS
from distributed.coordinator import CHECKPOINT_PATH_KEY, Coordinator, fold_mean


def metrics(fold, epoch, acc):
    return {"fold": fold, "epoch": epoch, "node_id": f"n{fold}", "node_ip": "127.0.0.1", "pid": 100 + fold,
            **{m: acc for m in FOLD_METRICS}}


def run(coro):
    return asyncio.run(coro)


def test_fold_mean_is_the_mean_std_and_list_of_the_folds():
    out = fold_mean([metrics(2, 1, 0.6), metrics(0, 1, 0.8), metrics(1, 1, 0.7)])
    assert out["epoch"] == 1 and out["num_folds"] == 3
    assert out["val_acc_folds"] == [0.8, 0.7, 0.6]  # in fold order
    assert out["val_acc_mean"] == pytest.approx(0.7) and out["val_acc_std"] == pytest.approx(0.1)
    assert out["fold_node_ids"] == "n0,n1,n2" and out["fold_pids"] == [100, 101, 102]


def test_a_slot_serves_queued_trials_in_order_and_only_after_all_folds_left():
    async def scenario():
        c = Coordinator(folds=2, num_slots=1, epochs=1, max_failures=0)
        await c.submit("a", {"lr": 1})
        await c.submit("b", {"lr": 2})
        jobs = [await c.get_job(0, r, None) for r in (0, 1)]
        assert [j["trial_id"] for j in jobs] == ["a", "a"] and jobs[0]["hparams"] == {"lr": 1}
        await c.fold_report("a", 0, metrics(0, 1, 0.5), "/x/a/epoch_001")
        # rank 0 is done with "a" but rank 1 is not: rank 0 must wait, the slot is still "a"'s
        waiting = asyncio.ensure_future(c.get_job(0, 0, "a"))
        await asyncio.sleep(0.05)
        assert not waiting.done() and c.slots[0].current == "a"
        await c.fold_report("a", 1, metrics(1, 1, 0.7), "/x/a/epoch_001")
        reply = await c.results("a", 0, timeout=1)
        assert reply["finished"] and len(reply["results"]) == 1
        assert reply["results"][0]["val_acc_mean"] == pytest.approx(0.6)
        assert reply["results"][0][CHECKPOINT_PATH_KEY] == "/x/a/epoch_001"
        assert (await c.get_job(0, 1, "a"))["trial_id"] == "b"
        assert (await asyncio.wait_for(waiting, 1))["trial_id"] == "b"
        await c.shutdown()
        assert await c.get_job(0, 0, "b") is None
    run(scenario())


def test_an_epoch_may_be_written_only_after_tune_continued_the_one_before():
    async def scenario():
        c = Coordinator(folds=1, num_slots=1, epochs=5, max_failures=0)
        await c.submit("a", {})
        await c.get_job(0, 0, None)
        assert await c.may_write("a", 1)  # nothing to decide before the first epoch
        await c.fold_report("a", 0, metrics(0, 1, 0.5), None)
        pending = asyncio.ensure_future(c.may_write("a", 2))
        await asyncio.sleep(0.05)
        assert not pending.done()  # epoch 2 is trained, but Tune has not decided about epoch 1
        await c.decide("a", 1, stop=False)
        assert await asyncio.wait_for(pending, 1) is True
        await c.fold_report("a", 0, metrics(0, 2, 0.6), None)
        pending = asyncio.ensure_future(c.may_write("a", 3))
        await c.decide("a", 2, stop=True)  # ASHA stops the trial after epoch 2
        assert await asyncio.wait_for(pending, 1) is False
        assert c.is_over("a")
        await c.fold_report("a", 0, metrics(0, 3, 0.9), None)  # too late: ignored
        assert [r["epoch"] for r in (await c.results("a", 0, timeout=0))["results"]] == [1, 2]
    run(scenario())


def test_a_restarted_fold_re_reports_without_tune_seeing_an_epoch_twice():
    async def scenario():
        c = Coordinator(folds=2, num_slots=1, epochs=3, max_failures=1)
        await c.submit("a", {})
        for r in (0, 1):
            await c.get_job(0, r, None)
        await c.fold_report("a", 0, metrics(0, 1, 0.5), None)
        await c.fold_report("a", 1, metrics(1, 1, 0.7), None)
        await c.fold_report("a", 0, metrics(0, 2, 0.6), None)  # fold 1 dies during epoch 2
        # Ray Train restarts the group: the same trial again, counted as a restart
        assert (await c.get_job(0, 1, None))["trial_id"] == "a"
        assert (await c.get_job(0, 0, None))["trial_id"] == "a"
        assert c.trials["a"].assignments == 2 and c.trials["a"].error is None
        # both folds replay their history from their checkpoints, then fold 1 trains epoch 2
        for m in (metrics(0, 1, 0.5), metrics(0, 2, 0.6), metrics(1, 1, 0.7), metrics(1, 2, 0.8)):
            await c.fold_report("a", m["fold"], m, None)
        results = (await c.results("a", 0, timeout=0))["results"]
        assert [r["epoch"] for r in results] == [1, 2]
        assert results[1]["val_acc_folds"] == [0.6, 0.8]
        # a second restart of the same trial exceeds --max-failures 1: the trial errors
        waiting = asyncio.ensure_future(c.get_job(0, 0, None))
        await asyncio.sleep(0.05)
        assert "failed 2 times" in c.trials["a"].error
        assert (await c.results("a", 2, timeout=0))["error"]
        assert not waiting.done() and c.slots[0].current is None  # the slot dropped it and waits for work
        await c.shutdown()
        assert await asyncio.wait_for(waiting, 1) is None
    run(scenario())


def test_a_failed_fold_errors_its_trial_and_a_dead_slot_errors_what_is_left():
    async def scenario():
        c = Coordinator(folds=2, num_slots=1, epochs=3, max_failures=0)
        await c.submit("a", {})
        await c.submit("b", {})
        await c.get_job(0, 0, None)
        await c.fold_error("a", 0, "ValueError: bad")
        reply = await c.results("a", 0, timeout=1)
        assert reply["error"] == "fold 0: ValueError: bad"
        assert await c.may_write("a", 1) is False  # the other fold abandons it
        await c.slot_failed(0, "slot 0's Train run failed: no GPU")
        assert (await c.results("b", 0, timeout=1))["error"].startswith("every slot's worker group has ended")
        await c.submit("c", {})
        assert "no GPU" in (await c.results("c", 0, timeout=1))["error"]
    run(scenario())


def test_start_latency_is_from_tune_start_to_the_last_fold_first_step():
    async def scenario():
        c = Coordinator(folds=2, num_slots=1, epochs=1, max_failures=0)
        c.trial_started("a", 100.0)
        await c.submit("a", {})
        await c.started("a", 0, 100.5)
        await c.started("a", 1, 101.25)
        await c.started("a", 1, 109.0)  # a later start (after a restart) keeps the first
        assert c.engine_stats()["trial_start_latency_s"] == {"a": 1.25}
    run(scenario())
