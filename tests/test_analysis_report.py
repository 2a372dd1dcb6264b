"""experiments/report.py end to end on the session's real smoke run: the files, metrics.json against the
contract and against the tables behind it, the HTML, a headless-browser check, and bad input.

The report is built on a copy of the smoke run, so other tests that read or extend the shared run
(CLIP) neither see nor change it.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from analysis.browser import find_chromium, inspect_page
from analysis.sections import SECTION_TITLES
from analysis.run_tables import deepest_shared_epoch
from distributed.config import CLASS_NAMES
from conftest import load_script

CONTRACT = {"test_acc", "test_macro_f1", "test_acc_per_fold", "oof_val_acc", "oof_val_macro_f1", "per_class", "clip"}
ALWAYS = {"optimization_history", "asha_epochs", "accuracy_vs_size", "curves_all_trials", "curves_best_trial_folds",
          "curves_top_configs", "confusion_oof", "confusion_test", "per_class", "test_predictions",
          "misclassified_oof", "misclassified_test", "umap"}


def expected_figures(run_dir: Path) -> set[str]:
    """Importances and parallel coordinates need 3 trials at a shared epoch, the paired test 2: a smoke
    search has 4 trials, but a trial can fail on a loaded machine."""
    epochs, folds = pd.read_parquet(run_dir / "epochs.parquet"), json.loads((run_dir / "summary.json").read_text())["folds"]
    out = set(ALWAYS)
    if deepest_shared_epoch(epochs, folds, 3) is not None:
        out |= {"importances", "parallel_coordinates"}
    if deepest_shared_epoch(epochs, folds, 2) is not None:
        out.add("significance")
    if (run_dir / "rungs.parquet").is_file():  # ASHA's rung decisions (distributed/racing.py)
        out.add("rungs")
    return out


@pytest.fixture(scope="module")
def run_copy(smoke_run, tmp_path_factory) -> Path:
    run_dir, code = smoke_run
    assert code == 0
    dst = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(run_dir, dst)
    return dst


@pytest.fixture(scope="module")
def report(run_copy):
    code = load_script("report").main([str(run_copy), "--umap-samples", "200"])
    return run_copy, code


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.ray
def test_report_files(report):
    run_dir, code = report
    assert code == 0
    out = run_dir / "report"
    assert (out / "report.html").is_file() and (out / "metrics.json").is_file()
    assert {p.stem for p in (out / "figures").glob("*.png")} == expected_figures(run_dir)
    for p in (out / "figures").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tables = {p.stem for p in (out / "tables").glob("*.parquet")}
    assert {"trials", "curves", "confusion_oof", "confusion_test", "per_class", "oof_predictions",
            "test_predictions", "umap", "architecture"} <= tables
    assert ("significance" in tables) == ("significance" in expected_figures(run_dir))


@pytest.mark.ray
def test_metrics_follow_the_contract_and_the_tables(report):
    run_dir, _ = report
    m = json.loads((run_dir / "report" / "metrics.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    k, n_train = summary["folds"], summary["n_train"]
    assert CONTRACT <= set(m) and m["clip"] is None and m["tta_flip"] is False  # the smoke preset: no TTA
    cm_test, cm_oof = np.array(m["confusion_test"]), np.array(m["confusion_oof"])
    assert cm_test.sum() == 10_000 and cm_oof.sum() == n_train
    assert m["test_acc"] == pytest.approx(np.trace(cm_test) / cm_test.sum())
    assert m["oof_val_acc"] == pytest.approx(np.trace(cm_oof) / cm_oof.sum())
    assert list(m["per_class"]) == list(CLASS_NAMES)
    assert sum(c["support"] for c in m["per_class"].values()) == 10_000
    assert [c["support"] for c in m["per_class"].values()] == cm_test.sum(axis=1).tolist()
    assert len(m["test_acc_per_fold"]) == k

    tables = run_dir / "report" / "tables"
    test = pd.read_parquet(tables / "test_predictions.parquet")
    assert m["test_macro_f1"] == pytest.approx(f1_score(test.true, test.pred, average="macro", zero_division=0))
    assert m["test_acc_per_fold"] == pytest.approx([(test[f"pred_fold{j}"] == test.true).mean() for j in range(k)])
    probs = test[[f"p_{c}" for c in CLASS_NAMES]].to_numpy()
    np.testing.assert_array_equal(probs.argmax(1), test.pred)  # the ensemble predicts its mean's argmax

    # OOF: every training image of the run once, each fold's accuracy the one the search recorded
    oof = pd.read_parquet(tables / "oof_predictions.parquet")
    assert len(oof) == n_train and oof["index"].is_unique
    best = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id").loc[summary["best_trial_id"]]
    for j, fold in oof.groupby("fold"):
        assert (fold.true == fold.pred).mean() == pytest.approx(best[f"val_acc_fold{j}"], abs=1e-6)
    assert m["oof_val_macro_f1"] == pytest.approx(f1_score(oof.true, oof.pred, average="macro", zero_division=0))
    assert pd.read_parquet(tables / "architecture.parquet").params.sum() > 0


@pytest.mark.ray
def test_html_has_every_section_and_no_external_links(report):
    run_dir, _ = report
    page = (run_dir / "report" / "report.html").read_text()
    for title in SECTION_TITLES:
        assert f"<h2>{title}</h2>" in page
    n_figures = len(expected_figures(run_dir))
    assert page.count("<img ") == n_figures
    assert page.count('src="data:image/png;base64,') == n_figures
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page, re.I)
    assert "<script" not in page and "<link" not in page
    m = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert f"{100 * m['test_acc']:.2f}%" in page  # the headline shows metrics.json's number
    assert "clip_zeroshot.py --run-dir" in page  # no CLIP results yet: how to make them


@pytest.mark.ray
@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_in_headless_chromium(report, tmp_path):
    run_dir, _ = report
    shot = tmp_path / "report.png"
    res = inspect_page(run_dir / "report" / "report.html", screenshot=shot)
    assert res["headings"] == list(SECTION_TITLES)
    assert len(res["images"]) == len(expected_figures(run_dir))
    assert all(img["naturalWidth"] > 0 and img["naturalHeight"] > 0 for img in res["images"]), res["images"]
    assert res["errors"] == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and res["height"] > 5000


@pytest.mark.ray
def test_recomputed_oof_equals_the_recorded_one(run_copy, tmp_path):
    """Without the fold workers' oof_fold_<k>.npz, the report recomputes the OOF predictions from the
    checkpoints; on the CPU they must be the same predictions."""
    from analysis import evaluate, run_tables
    run = run_tables.load_run(run_copy)
    data = evaluate.load_data(run)
    recorded = evaluate.evaluate_best(run, data, ["cpu"] * run.folds)
    bare = tmp_path / "run"
    shutil.copytree(run_copy, bare, ignore=shutil.ignore_patterns("oof_fold_*.npz", "report"))
    recomputed = evaluate.evaluate_best(run_tables.load_run(bare), data, ["cpu"] * run.folds)
    assert (recorded.oof_source, recomputed.oof_source) == ("recorded", "recomputed")
    np.testing.assert_array_equal(recorded.oof_index, recomputed.oof_index)
    np.testing.assert_array_equal(recorded.oof_fold, recomputed.oof_fold)
    np.testing.assert_allclose(recorded.oof_probs, recomputed.oof_probs, atol=1e-5)
    np.testing.assert_array_equal(recorded.test_probs_folds, recomputed.test_probs_folds)


def _break_no_completed(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary.update(best_trial_id=None, best_config=None, best_cv=None, best_checkpoint=None, n_trials_completed=0)
    (run / "summary.json").write_text(json.dumps(summary))


def _break_checkpoint(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    (run / summary["best_checkpoint"] / "fold_1.pt").unlink()


def _break_checkpoint_dir(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    shutil.rmtree(run / summary["best_checkpoint"])


@pytest.mark.ray
@pytest.mark.parametrize("breakage, args, message", [
    (_break_no_completed, [], "no trial completed its full budget"),
    (_break_checkpoint, [], "fold_1.pt is missing"),
    (_break_checkpoint_dir, [], "checkpoint directory"),
    (None, ["--num-gpus", "64"], "--num-gpus 64: this machine has"),
    (None, ["--umap-samples", "5"], "--umap-samples: expected an integer >= 20"),
])
def test_bad_run_directory_exits_2_and_writes_nothing(run_copy, tmp_path, capsys, breakage, args, message):
    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("report"))
    if breakage:
        breakage(run)
    before = digest(run)
    with pytest.raises(SystemExit) as exc:
        load_script("report").main([str(run), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert digest(run) == before
    assert not (run / "report").exists()


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "no such directory"),
    (lambda tmp: (tmp / "notes.txt", (tmp / "notes.txt").write_text("x"))[0], "not a directory"),
    (lambda tmp: (tmp / "d").mkdir() or tmp / "d", "not a run directory (no summary.json)"),
])
def test_not_a_run_directory_exits_2(tmp_path, capsys, make, message):
    path = make(tmp_path)
    before = digest(tmp_path)
    with pytest.raises(SystemExit) as exc:
        load_script("report").main([str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert digest(tmp_path) == before and not (tmp_path / "d" / "report").exists()


def test_report_cli_runs_as_a_script_on_bad_input(tmp_path):
    """The real entry point (a subprocess): exit code 2, one stderr line, no traceback."""
    import subprocess
    script = Path(__file__).resolve().parents[1] / "experiments" / "report.py"
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "nope")], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"report.py: error: {tmp_path / 'nope'}: no such directory"]
