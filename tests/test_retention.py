"""--keep-checkpoints: the selection on known tables (rankings, ties, each policy, fewer trials than N), the flag's
bad values, `apply` on small run directories made here (local and in a bucket: what is deleted, what the
tables then say, the run's size), and a real smoke search with topk:2 whose report and export still work."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distributed import retention
from distributed.config import PRESETS, ConfigError, keep_checkpoints_count, override, validate
from distributed.lock import LOCK_NAME
from distributed.storage import RunLocation
from tests.conftest import load_script


def table(*rows) -> pd.DataFrame:
    """trials.parquet's columns that matter here, from (trial_id, status, epochs_run, val_acc_mean) rows."""
    df = pd.DataFrame(rows, columns=["trial_id", "status", "epochs_run", "val_acc_mean"])
    df["checkpoint_path"] = [f"folds/{t}/epoch_{e:03d}" if e else None for t, e in zip(df.trial_id, df.epochs_run)]
    return df


# A search of 3 epochs: c* completed, p* pruned, e1 errored. c2 and c3 tie; p1 reached epoch 2 with a lower
# value than p2, which stopped after 1.
TRIALS = table(("c1", "completed", 3, 0.80), ("c2", "completed", 3, 0.85), ("c3", "completed", 3, 0.85),
               ("e1", "errored", 2, 0.70), ("p1", "pruned", 2, 0.60), ("p2", "pruned", 1, 0.90),
               ("p3", "pruned", 1, np.nan))
RANKING = ["c2", "c3", "c1", "p1", "p2", "p3"]
PRESENT = ["c1", "c2", "c3", "e1", "orphan", "p1", "p2", "p3"]  # "orphan": a folds/ directory no table knows


def test_ranking_is_the_searchs_order():
    assert retention.ranking(TRIALS) == RANKING
    assert retention.ranking(TRIALS.iloc[::-1].reset_index(drop=True))[:2] == ["c3", "c2"]  # a tie: table order
    assert retention.ranking(TRIALS.iloc[:0]) == []


@pytest.mark.parametrize("policy, kept", [
    ("topk:2", ["c2", "c3", "e1"]),
    ("topk:4", ["c2", "c3", "c1", "p1", "e1"]),
    ("best", ["c2", "e1"]),
    ("topk:1", ["c2", "e1"]),
    ("topk:6", ["c2", "c3", "c1", "p1", "p2", "p3", "e1"]),
    ("topk:50", ["c2", "c3", "c1", "p1", "p2", "p3", "e1"]),  # fewer trials than N: all ranked ones
    ("all", ["c2", "c3", "c1", "p1", "p2", "p3", "e1", "orphan"]),
])
def test_select_keeps_the_top_of_the_ranking_and_every_errored_trial(policy, kept):
    got, removed = retention.select(TRIALS, PRESENT, keep_checkpoints_count(policy), "c2")
    assert got == kept
    assert sorted(removed) == sorted(set(PRESENT) - set(kept))


def test_select_keeps_the_best_trial_and_only_what_is_there():
    # summary.json names the best: kept even where it would not rank first (it always does in a real run)
    kept, removed = retention.select(TRIALS, PRESENT, 1, "c3")
    assert kept == ["c2", "c3", "e1"] and "c3" not in removed
    kept, removed = retention.select(TRIALS, ["c1", "p2"], 2, "c2")  # c2, c3 left no directory
    assert kept == [] and removed == ["c1", "p2"]


def test_select_without_a_best_trial_keeps_everything():
    pruned = TRIALS[TRIALS.status != "completed"]
    assert retention.select(pruned, PRESENT, 1, None) == (["p1", "p2", "p3", "c1", "c2", "c3", "e1", "orphan"], [])


def test_search_ended_counts_every_ending():
    counts = {"n_trials_completed": 1, "n_trials_pruned": 2, "n_trials_errored": 1}
    assert retention.search_ended(counts, 4) and not retention.search_ended(counts, 5)


@pytest.mark.parametrize("policy, count", [("all", None), ("best", 1), ("topk:1", 1), ("topk:12", 12)])
def test_policy_values(policy, count):
    assert keep_checkpoints_count(policy) == count
    validate(override(PRESETS["smoke"], keep_checkpoints=policy))


BAD = ["topk:0", "topk:x", "some", "topk:", "topk:-1", "top:3", "topk:2.5", "Best"]


@pytest.mark.parametrize("policy", BAD)
def test_bad_policy_is_a_config_error(policy):
    with pytest.raises(ConfigError, match=f"--keep-checkpoints {policy}: choose all, best or topk:N"):
        validate(override(PRESETS["smoke"], keep_checkpoints=policy))


@pytest.mark.parametrize("policy", ["topk:0", "topk:x", "some"])
def test_bad_flag_exits_2_in_one_line_before_any_work(policy, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        load_script("tune").main(["--preset", "smoke", "--name", "x", "--storage-path", str(tmp_path),
                                  "--keep-checkpoints", policy])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"tune.py: error: --keep-checkpoints {policy}: choose all, best or topk:N with N a positive "
                     f"integer (e.g. topk:5)"]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- apply, on run directories made here

def fold_files(trial: str, epochs: int) -> dict[str, int]:
    """{path under the run: size} of a trial's last two epochs of 3 fold checkpoints (and OOF after epoch 3)."""
    out = {}
    for e in range(max(1, epochs - 1), epochs + 1):
        for k in range(3):
            out[f"folds/{trial}/epoch_{e:03d}/fold_{k}.pt"] = 1000 + 10 * e + k
            if e == 3:
                out[f"folds/{trial}/epoch_{e:03d}/oof_fold_{k}.npz"] = 300 + k
    return out


def files_of(trials: pd.DataFrame) -> dict[str, int]:
    out = {"folds/orphan/epoch_001/fold_0.pt": 777, "tune/c1/result.json": 55}
    for t, e in zip(trials.trial_id, trials.epochs_run):
        out.update(fold_files(t, e))
    return out


def make_run(run_dir: Path, trials: pd.DataFrame, files: dict[str, int], ended: bool = True) -> dict:
    """A run directory as a search leaves it: trials.parquet, files of the given sizes, the lock; the summary."""
    for rel, size in files.items():
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_bytes(b"x" * size)
    (run_dir / "trials.parquet").write_bytes(trials.to_parquet(index=False))
    (run_dir / LOCK_NAME).write_text('{"pid": 1}\n')
    counts = {f"n_trials_{s}": int((trials.status == s).sum()) for s in ("completed", "pruned", "errored")}
    if not ended:
        counts["n_trials_pruned"] -= 1  # one trial still running when Ctrl-C came
    return {"name": run_dir.name, "best_trial_id": "c2", **counts}


def disk_bytes(root: Path, skip=(LOCK_NAME,)) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in skip)


def at(run_dir: Path, storage_path: str | None = None) -> RunLocation:
    """The location of a run whose driver directory is run_dir (stored in storage_path, else beside it)."""
    return replace(RunLocation.of(storage_path or str(run_dir.parent), run_dir.name), local_dir=run_dir)


def cfg_for(tmp_path: Path, policy: str):
    return override(PRESETS["smoke"], name="run", storage_path=str(tmp_path), num_samples=len(TRIALS),
                    keep_checkpoints=policy)


def test_apply_removes_the_others_and_records_the_size(tmp_path, capsys):
    run_dir = tmp_path / "run"
    files = files_of(TRIALS)
    summary = make_run(run_dir, TRIALS, files)
    out = retention.apply(cfg_for(tmp_path, "topk:2"), at(run_dir), summary)

    assert sorted(p.name for p in (run_dir / "folds").iterdir()) == ["c2", "c3", "e1"]
    left = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    kept_files = {f for f in files if f.split("/")[1] in ("c2", "c3", "e1") or f.startswith("tune/")}
    assert {f for f in left if f.startswith(("folds/", "tune/"))} == kept_files  # kept trials keep every file
    removed = ["c1", "orphan", "p1", "p2", "p3"]
    freed = sum(size for f, size in files.items() if f.split("/")[1] in removed and f.startswith("folds/"))

    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == out
    assert saved["keep_checkpoints"] == "topk:2"
    assert saved["checkpoints_kept"] == ["c2", "c3", "e1"] and saved["checkpoints_removed"] == removed
    assert saved["checkpoint_bytes_freed"] == freed > 0
    assert saved["run_dir_bytes"] == disk_bytes(run_dir)  # summary.json itself included, the lock not
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    assert trials.checkpoint_path.isna().to_dict() == {t: t not in ("c2", "c3", "e1") for t in trials.index}
    for t in ("c2", "c3", "e1"):
        assert (run_dir / trials.checkpoint_path[t] / "fold_0.pt").is_file()
    assert retention.describe(saved) == (f"checkpoints: kept the fold checkpoints of 3 of 8 trials "
                                         f"(--keep-checkpoints topk:2); freed {freed / 1e6:.1f} MB; "
                                         f"run directory {saved['run_dir_bytes'] / 1e6:.1f} MB")


def test_apply_all_and_an_unended_search_delete_nothing(tmp_path):
    for policy, ended in (("all", True), ("best", False)):
        run_dir = tmp_path / f"{policy}-{ended}"
        summary = make_run(run_dir, TRIALS, files_of(TRIALS), ended=ended)
        before = disk_bytes(run_dir)
        parquet = (run_dir / "trials.parquet").read_bytes()
        out = retention.apply(cfg_for(tmp_path, policy), at(run_dir), summary)
        assert sorted(p.name for p in (run_dir / "folds").iterdir()) == PRESENT
        assert (run_dir / "trials.parquet").read_bytes() == parquet
        assert out["checkpoint_bytes_freed"] == 0 and out["checkpoints_removed"] == []
        assert out["checkpoints_kept"] == (["c2", "c3", "c1", "p1", "p2", "p3", "e1", "orphan"] if ended else None)
        assert out["run_dir_bytes"] == disk_bytes(run_dir) == before + (run_dir / "summary.json").stat().st_size
    assert "all kept, the search has not ended" in retention.describe(out)


def test_apply_again_nulls_what_an_earlier_session_removed(tmp_path):
    """A resumed (already finished) search rebuilds trials.parquet from Tune's logs: paths to removed
    directories come back, and the end of that session nulls them again, whatever its policy."""
    run_dir = tmp_path / "run"
    summary = make_run(run_dir, TRIALS, files_of(TRIALS))
    retention.apply(cfg_for(tmp_path, "best"), at(run_dir), summary)
    (run_dir / "trials.parquet").write_bytes(TRIALS.to_parquet(index=False))  # rebuilt: every path is back
    out = retention.apply(cfg_for(tmp_path, "all"), at(run_dir), summary)
    assert out["checkpoints_kept"] == ["c2", "e1"] and out["checkpoint_bytes_freed"] == 0
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert list(trials.trial_id[trials.checkpoint_path.notna()]) == ["c2", "e1"]


def test_apply_in_a_bucket(s3_server, tmp_path):
    """A run stored in a bucket: the nodes' files are objects there, the driver's a local working copy."""
    s3_server.make_bucket("keep")
    fs = s3_server.filesystem()
    files = files_of(TRIALS)
    for rel, size in files.items():
        with fs.open_output_stream(f"keep/runs/run/{rel}") as f:
            f.write(b"x" * size)
    local = tmp_path / "results" / "run"
    local.mkdir(parents=True)
    summary = make_run(local, TRIALS, {})
    cfg = override(cfg_for(tmp_path, "topk:2"), storage_path="s3://keep/runs")
    where = at(local, "s3://keep/runs")
    assert where.root == "s3://keep/runs/run"
    out = retention.apply(cfg, where, summary)

    objects = s3_server.objects("keep/runs/run")
    trial_dirs = {k.split("/")[4] for k in objects if k.startswith("keep/runs/run/folds/")}
    assert trial_dirs == {"c2", "c3", "e1"}
    assert out["checkpoints_removed"] == ["c1", "orphan", "p1", "p2", "p3"]
    assert out["checkpoint_bytes_freed"] == sum(s for f, s in files.items()
                                                if f.startswith("folds/") and f.split("/")[1] not in trial_dirs)
    assert json.loads(s3_server.read("keep/runs/run/summary.json")) == out
    assert out["run_dir_bytes"] == sum(objects.values())  # the bucket's copy: what the run takes where it lives
    uploaded = pd.read_parquet(io.BytesIO(s3_server.read("keep/runs/run/trials.parquet")))
    assert sorted(uploaded.trial_id[uploaded.checkpoint_path.notna()]) == ["c2", "c3", "e1"]


# ---------------------------------------------------------------- a real search

@pytest.fixture(scope="module")
def topk2(ray_local, tmp_path_factory):
    """A real smoke search (4 trials, 3 folds) with --keep-checkpoints topk:2; the run directory's files just
    before the policy was applied; the search's output."""
    storage = tmp_path_factory.mktemp("keep")
    before, original = {}, retention.apply

    def spy(cfg, where, summary):
        run_dir = where.local_dir
        before.update({p.relative_to(run_dir).as_posix(): p.stat().st_size for p in run_dir.rglob("*") if p.is_file()})
        return original(cfg, where, summary)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(retention, "apply", spy)
        code = load_script("tune").main(["--preset", "smoke", "--name", "k2", "--storage-path", str(storage),
                                         "--keep-checkpoints", "topk:2"])
    assert code == 0, out.getvalue()
    return storage / "k2", before, out.getvalue()


@pytest.mark.ray
def test_a_finished_search_keeps_exactly_the_top_2(topk2):
    from analysis.run_tables import rank_trials  # the report's own ranking, independent of retention's
    run_dir, before, stdout = topk2
    summary = json.loads((run_dir / "summary.json").read_text())
    trials = pd.read_parquet(run_dir / "trials.parquet")
    ranked = rank_trials(trials)
    ranked = ranked[ranked.status != "errored"]
    had = {p.split("/")[1] for p in before if p.startswith("folds/")}  # every trial wrote at least epoch 1
    expected = set(ranked.trial_id[:2]) | (set(trials.trial_id[trials.status == "errored"]) & had)
    assert summary["best_trial_id"] == ranked.trial_id.iloc[0]
    assert {p.name for p in (run_dir / "folds").iterdir()} == expected
    assert set(summary["checkpoints_kept"]) == expected
    assert sorted(summary["checkpoints_removed"]) == sorted(had - expected) and len(had) == len(trials) == 4

    # the kept trials keep every file they had; the freed bytes are the removed ones' files
    now = {p.relative_to(run_dir).as_posix(): p.stat().st_size for p in run_dir.rglob("*") if p.is_file()}
    assert {f: s for f, s in before.items() if f.startswith("folds/") and f.split("/")[1] in expected} == \
        {f: s for f, s in now.items() if f.startswith("folds/")}
    freed = sum(s for f, s in before.items() if f.startswith("folds/") and f.split("/")[1] not in expected)
    assert summary["checkpoint_bytes_freed"] == freed > 0
    # the table points only at what is there
    assert set(trials.trial_id[trials.checkpoint_path.notna()]) <= expected
    for path in trials.checkpoint_path.dropna():
        assert all((run_dir / path / f"fold_{k}.pt").is_file() for k in range(summary["folds"]))
    best = trials.set_index("trial_id").loc[summary["best_trial_id"]]
    assert all((run_dir / best.checkpoint_path / f"oof_fold_{k}.npz").is_file() for k in range(summary["folds"]))
    assert summary["run_dir_bytes"] == sum(now.values())  # the size on disk, summary.json's own bytes included
    line = [s for s in stdout.splitlines() if s.startswith("checkpoints:")]
    assert line == [f"checkpoints: kept the fold checkpoints of {len(expected)} of 4 trials (--keep-checkpoints "
                    f"topk:2); freed {freed / 1e6:.1f} MB; run directory {summary['run_dir_bytes'] / 1e6:.1f} MB"]
    print(f"\nsmoke topk:2: {sum(before.values())} bytes before, {sum(now.values())} after, {freed} freed")


@pytest.mark.ray
def test_report_and_export_work_on_the_pruned_run(topk2, tmp_path, capsys):
    run_dir, _, _ = topk2
    run = tmp_path / "k2"
    shutil.copytree(run_dir, run)
    assert load_script("report").main([str(run), "--no-umap"]) == 0
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert 0 < metrics["test_acc"] <= 1
    assert load_script("export").main([str(run)]) == 0
    assert (run / "model" / "model.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    html = (run / "report" / "report.html").read_text()
    import re
    # the trials table says which checkpoints --keep-checkpoints removed (2 of the 4 trials)
    assert len(re.findall(r"<td[^>]*>removed</td>", html)) == len(summary["checkpoints_removed"]) == 2
    removed = summary["checkpoints_removed"][0]
    with pytest.raises(SystemExit) as e:  # a removed trial: one clear line, nothing written
        load_script("export").main([str(run), "--trial", removed, "--out", str(tmp_path / "m2")])
    assert e.value.code == 2
    assert f"--trial {removed}: has no checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()


@pytest.mark.ray
def test_the_default_keeps_all_four_smoke_trials(smoke_run):
    """topk:5 of a 4-trial search: nothing removed (the session's shared smoke run)."""
    run_dir, code = smoke_run
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert summary["keep_checkpoints"] == "topk:5" and summary["checkpoints_removed"] == []
    assert summary["checkpoint_bytes_freed"] == 0
    kept = sorted(p.name for p in (run_dir / "folds").iterdir())
    assert sorted(summary["checkpoints_kept"]) == kept
    assert set(trials.trial_id[trials.status != "errored"]) <= set(kept)
    assert all((run_dir / p).is_dir() for p in trials.checkpoint_path.dropna())
