"""Report assembly without Ray: metrics.json from a synthetic evaluation, and the optional CLIP section
(absent, present through analysis.clip_report.report_section, or failing)."""
from __future__ import annotations

import dataclasses
import importlib.machinery
import json
import sys
import types

import numpy as np
import pytest

import analysis
from analysis import sections_eval, sections_search
from analysis.evaluate import Evaluation
from analysis.metrics_json import metrics_json, score, size_metrics
from distributed.config import CLASS_NAMES


def synthetic_evaluation(k: int = 3, n_oof: int = 300, seed: int = 0) -> Evaluation:
    rng = np.random.default_rng(seed)
    test_true = rng.integers(0, 10, 1000)
    probs = rng.dirichlet(np.ones(10), size=(k, 1000)).astype(np.float32)
    probs[:, np.arange(1000), test_true] += 0.3  # better than chance
    oof_true = rng.integers(0, 10, n_oof)
    oof_probs = rng.dirichlet(np.ones(10), size=n_oof).astype(np.float32)
    return Evaluation(oof_index=np.arange(n_oof), oof_fold=np.arange(n_oof) % k, oof_true=oof_true,
                      oof_probs=oof_probs, oof_source="recorded", test_true=test_true, test_probs_folds=probs,
                      embeddings=np.zeros((1000, 4), np.float32), devices=["cpu"] * k)


class FakeRun:
    summary = {"name": "x", "best_checkpoint": "folds/t/epoch_003", "best_cv": {"val_acc_mean": 0.5}}
    best_trial_id = "t"


def test_metrics_json_numbers_come_from_the_confusion_matrices():
    ev = synthetic_evaluation()
    scores = score(ev)
    m = json.loads(json.dumps(metrics_json(FakeRun(), ev, scores, None)))  # JSON-serialisable
    cm = np.array(m["confusion_test"])
    assert cm.sum() == 1000 and np.array(m["confusion_oof"]).sum() == 300
    assert m["test_acc"] == pytest.approx(np.mean(ev.test_probs.argmax(1) == ev.test_true))
    assert m["test_acc"] == pytest.approx(np.trace(cm) / 1000)
    assert m["test_acc_per_fold"] == pytest.approx([np.mean(p.argmax(1) == ev.test_true) for p in ev.test_probs_folds])
    assert m["oof_val_acc"] == pytest.approx(np.mean(ev.oof_probs.argmax(1) == ev.oof_true))
    assert list(m["per_class"]) == list(CLASS_NAMES) and m["clip"] is None
    assert m["tta_flip"] is False
    tta = dataclasses.replace(ev, tta_flip=True)
    assert metrics_json(FakeRun(), tta, score(tta), None)["tta_flip"] is True


def metrics_of(scores) -> dict:
    from analysis.metrics import per_class_dict
    return per_class_dict(scores["test"]["per_class"])


def _fake_clip(monkeypatch, report_section):
    module = types.ModuleType("analysis.clip_report")
    module.__spec__ = importlib.machinery.ModuleSpec("analysis.clip_report", None)
    module.report_section = report_section
    monkeypatch.setitem(sys.modules, "analysis.clip_report", module)
    monkeypatch.setattr(analysis, "clip_report", module, raising=False)


def test_clip_section_without_results_says_how_to_make_them(tmp_path):
    sec, metrics = sections_eval.clip_section(tmp_path, score(synthetic_evaluation()), print)
    assert metrics is None
    assert f"python experiments/clip_zeroshot.py --run-dir {tmp_path}" in sec.render()


@pytest.mark.parametrize("split", ["test", "train"])
def test_clip_section_embeds_the_fragment_and_compares(tmp_path, monkeypatch, split):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "metrics.json").write_text(json.dumps({"split": split}))
    seen = {}

    def report_section(clip_dir, cnn_per_class, cnn_summary):
        seen.update(dir=clip_dir, cnn=cnn_per_class, summary=cnn_summary)
        return {"html": "<p id='clip-fragment'>zero-shot</p>",
                "metrics": {"model": "ViT-B-32", "pretrained": "laion2b", "acc": 0.63, "macro_f1": 0.6, "extra": 1}}

    _fake_clip(monkeypatch, report_section)
    scores = score(synthetic_evaluation())
    sec, metrics = sections_eval.clip_section(tmp_path, scores, print)
    assert metrics == {"model": "ViT-B-32", "pretrained": "laion2b", "acc": 0.63, "macro_f1": 0.6}
    assert seen["dir"] == tmp_path / "clip"
    if split == "train":  # the CNN's numbers are on the test split: no comparison on another split
        assert seen["cnn"] is None and seen["summary"] is None
    else:
        assert list(seen["cnn"]) == list(CLASS_NAMES) and seen["cnn"]["Shirt"] == metrics_of(scores)["Shirt"]
        assert seen["summary"] == {"acc": scores["test"]["acc"], "macro_f1": scores["test"]["macro_f1"]}
    assert "<p id='clip-fragment'>zero-shot</p>" in sec.render()


def test_a_failing_clip_section_leaves_a_note_not_a_crash(tmp_path, monkeypatch):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "metrics.json").write_text("{}")

    def broken(clip_dir, cnn_per_class, cnn_summary):
        raise KeyError("prompts")

    _fake_clip(monkeypatch, broken)
    lines = []
    sec, metrics = sections_eval.clip_section(tmp_path, score(synthetic_evaluation()), lines.append)
    assert metrics is None and "The CLIP section failed: KeyError" in sec.render()
    assert lines and lines[0].startswith("warning: CLIP section failed")


def search_run(tmp_path, completed: int):
    """A Run of four trials (the first `completed` completed, the rest pruned) with searched width and
    dropout, as trials.parquet and epochs.parquet hold them; no optuna.db."""
    from dataclasses import asdict, replace

    import pandas as pd

    from analysis.run_tables import Run, rank_trials
    from distributed.config import PRESETS
    from test_analysis_tables import synthetic_epochs

    cfg = PRESETS["smoke"]
    specs = [("wide", 16, 0.1, 0.850), ("narrow", 4, 0.2, 0.846), ("mid", 8, 0.3, 0.840), ("tiny", 2, 0.4, 0.6)]
    rows = []
    for j, (tid, width, dropout, acc) in enumerate(specs):
        row = {"trial_id": tid, "status": "completed" if j < completed else "pruned",
               "epochs_run": 3 if j < completed else 1, "val_acc_mean": acc, "val_acc_std": 0.01,
               "val_f1_mean": acc, "val_loss_mean": 1 - acc, "time_total_s": 1.0, "checkpoint_path": None,
               "searched": "dropout,width"}
        row.update({f"config_{k}": v for k, v in {**asdict(replace(cfg.model, width=width, dropout=dropout)),
                                                  **asdict(cfg.train)}.items()})
        rows.append(row)
    epochs = synthetic_epochs({tid: [[acc] * 3] * (3 if j < completed else 1)
                               for j, (tid, _, _, acc) in enumerate(specs)})
    return Run(tmp_path, {"name": "x", "folds": 3, "max_epochs": 3, "best_trial_id": "wide"}, cfg,
               rank_trials(pd.DataFrame(rows)), epochs)


def test_search_section_shows_accuracy_against_size(tmp_path):
    from analysis import pareto
    run = search_run(tmp_path, completed=3)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text(json.dumps(
        {"trial_id": "narrow", "models": {"ensemble": {"latency_ms": {"batch_1": 0.5, "batch_256": 0.01}}}}))
    size = pareto.size_table(run)
    sec = sections_search.search_section(run, print, size)
    assert sec.figures["accuracy_vs_size"][:8] == b"\x89PNG\r\n\x1a\n"
    table = sec.tables["accuracy_vs_size"]
    assert table.trial_id.tolist() == ["narrow", "mid", "wide"]  # completed only, smallest first
    assert table.on_front.tolist() == [True, False, True] and table.latency_ms_b1.iloc[0] == 0.5
    page = sec.render()
    narrow = int(table.params.iloc[0])
    assert "<h3>Accuracy against size</h3>" in page and "Pruned trials are left out" in page
    assert (f"The smallest configuration within 0.5 points of the best is trial narrow: {narrow:,} parameters, "
            f"validation accuracy 84.60% ± 1.00%, with dropout=0.2, width=4") in page
    assert f"<code>python experiments/export.py {tmp_path} --trial narrow</code>" in page
    assert "measured only for the exported trial narrow" in page
    assert "<td>0.500</td>" in page  # its latency, in the shown table
    assert size_metrics(size) == {"front": ["narrow", "wide"],
                                           "smallest_within_half_point": {"trial_id": "narrow", "params": narrow}}
    assert json.loads(json.dumps(metrics_json(FakeRun(), synthetic_evaluation(), score(
        synthetic_evaluation()), None, size_metrics(size))))["size"]["front"] == ["narrow", "wide"]


def test_accuracy_against_size_with_one_completed_trial(tmp_path):
    from analysis import pareto
    run = search_run(tmp_path, completed=1)
    sec = sections_search.search_section(run, print, pareto.size_table(run))
    assert "accuracy_vs_size" in sec.figures and sec.tables["accuracy_vs_size"].trial_id.tolist() == ["wide"]
    page = sec.render()
    assert "Only one trial completed its full budget (trial wide:" in page
    assert f"python experiments/export.py {tmp_path} --trial wide" in page
    assert "latency columns stay empty" in page
