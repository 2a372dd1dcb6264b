"""experiments/export.py on the session's real smoke run: the model directory, its parity figures against
the report's test accuracy, --refit, the refusals (parity, bad input, pickled checkpoints), and the
pure parts (parity, latency, the card) on known arrays.

The export runs on a copy of the smoke run, with its report built first (the exported ensemble's test
accuracy must equal the report's).
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import load_script
from deploy import bundle, export

pytestmark = pytest.mark.ray


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_copy(smoke_run, tmp_path_factory) -> Path:
    run_dir, code = smoke_run
    assert code == 0
    dst = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("model", "report"))
    assert load_script("report").main([str(dst), "--no-umap"]) == 0
    return dst


@pytest.fixture(scope="module")
def exported(run_copy):
    code = load_script("export").main([str(run_copy), "--refit"])
    return run_copy / "model", code


def test_export_writes_a_checked_model_directory(exported, run_copy):
    model_dir, code = exported
    assert code == 0
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "MODEL_CARD.md", "ensemble.onnx", "ensemble.torchscript.pt", "model.json", "single.onnx",
        "single.torchscript.pt"]
    meta = bundle.read_meta(model_dir)  # every file's size and sha256 as listed
    summary = json.loads((run_copy / "summary.json").read_text())
    assert meta["trial_id"] == summary["best_trial_id"] and meta["is_best_trial"]
    assert meta["data"]["data_fingerprint"] == summary["data_fingerprint"]
    assert meta["data"]["split_fingerprint"] == summary["split_fingerprint"]
    assert set(meta["files"]) == {p.name for p in model_dir.iterdir()} - {"model.json"}
    for name, m in meta["models"].items():
        assert set(m["parity"]) == {"pytorch", "torchscript", "onnxruntime"}
        for r in m["parity"].values():
            assert r["max_abs_diff"] <= 1e-4 and r["argmax_agreement"] >= 0.9999
        assert m["latency_ms"]["batch_1"] > 0 and m["latency_ms"]["batch_256"] > 0
        assert set(m["per_class_f1"]) == set(meta["classes"]) and len(meta["classes"]) == 10
    ens = meta["models"]["ensemble"]
    assert ens["folds"] == summary["folds"] == 3
    assert ens["params"] == 3 * ens["params_per_model"]
    assert meta["models"]["single"]["params"] == ens["params_per_model"]


def test_exported_test_accuracy_is_the_reports(exported, run_copy):
    model_dir, _ = exported
    meta = json.loads((model_dir / "model.json").read_text())
    report = json.loads((run_copy / "report" / "metrics.json").read_text())
    assert meta["models"]["ensemble"]["test_acc"] == report["test_acc"]
    assert meta["test"]["report_test_acc"] == report["test_acc"]


def test_exported_files_compute_the_fold_models_ensemble(exported, fmnist):
    """Independently of export.py's own check: the ONNX and TorchScript files on 500 test images against
    the mean of the fold models' softmax, computed here from the checkpoints."""
    import onnxruntime as ort

    from analysis import evaluate
    model_dir, _ = exported
    meta = bundle.read_meta(model_dir)
    run_dir = model_dir.parent
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    ckpt = run_dir / trials.loc[meta["trial_id"], "checkpoint_path"]
    x = np.array(fmnist.test_x[:500])
    folds = [evaluate.load_fold_model(ckpt / f"fold_{k}.pt", "cpu", k, meta["epoch"])[0] for k in range(3)]
    expected = np.mean([evaluate._predict_np(m, x, 256, tta_flip=meta["models"]["ensemble"]["tta_flip"])["probs"]
                        for m in folds], axis=0)
    got = ort.InferenceSession(str(model_dir / "ensemble.onnx")).run(None, {"images": x})[0]
    assert got.shape == (500, 10) and np.allclose(got.sum(1), 1, atol=1e-5)
    assert np.abs(got - expected).max() < 1e-5
    scripted, found = bundle.load_torchscript(model_dir / "ensemble.torchscript.pt")
    assert found == meta["export_id"]
    with torch.inference_mode():
        assert np.abs(scripted(torch.from_numpy(x)).numpy() - expected).max() < 1e-5


def test_refit_trained_on_every_image_of_the_run(exported, run_copy):
    model_dir, _ = exported
    meta = json.loads((model_dir / "model.json").read_text())
    summary = json.loads((run_copy / "summary.json").read_text())
    single = meta["models"]["single"]
    assert single["refit"]["images"] == summary["n_train"] == 600
    assert single["refit"]["epochs"] == summary["max_epochs"]
    assert single["refit"]["device"] == "cpu"
    assert 0.1 < single["test_acc"] <= 1.0  # learned something on 600 images in 3 epochs


def test_model_card_states_the_figures(exported):
    model_dir, _ = exported
    meta = json.loads((model_dir / "model.json").read_text())
    card = (model_dir / "MODEL_CARD.md").read_text()
    ens, single = meta["models"]["ensemble"], meta["models"]["single"]
    assert f"{100 * ens['test_acc']:.2f}%" in card and f"{100 * single['test_acc']:.2f}%" in card
    assert f"{ens['params']:,}" in card and f"{ens['latency_ms']['batch_1']:.2f}" in card
    assert f"{100 * meta['cv']['val_acc_mean']:.2f}% ± {100 * meta['cv']['val_acc_std']:.2f}" in card
    assert meta["data"]["data_fingerprint"] in card and meta["export_id"] in card
    assert "dark background" in card and "Real photos differ" in card
    for c in meta["classes"]:
        assert f"| {c} | {ens['per_class_f1'][c]:.3f} | {single['per_class_f1'][c]:.3f} |" in card
    from deploy.card import latency_lines
    assert "\n".join(latency_lines(meta)) in card  # the Latency section, from model.json's figures
    setup = meta["latency_setup"]
    assert setup["cpu"] == export.cpu_name() and setup["torch_threads"] == torch.get_num_threads()
    for m in (ens, single):
        assert m["latency_calls"]["onnxruntime"]["batch_1"] >= 5 and m["latency_calls"]["torchscript"]["batch_256"] >= 5
        # the median of single calls: on this 2-core box a TorchScript call at batch 1 costs ~2 ms, not hundreds
        assert 0 < m["latency_ms_torchscript"]["batch_1"] < 50
    assert f"Measured at export on the CPU: {setup['cpu']}, {setup['logical_cpus']} logical CPU" in card


def test_a_failed_parity_check_writes_nothing(exported, run_copy, monkeypatch, capsys):
    model_dir, _ = exported
    before = digest(model_dir)
    monkeypatch.setattr(export, "MAX_ABS_DIFF", 0.0)  # onnxruntime differs in the last bits: now a failure
    code = load_script("export").main([str(run_copy)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("export.py: refused, nothing written: onnxruntime: max |dp|")
    assert digest(model_dir) == before
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".model.")]  # no staging directory left


def _refused(run_dir, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        load_script("export").main([str(run_dir), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_exits_2_and_leaves_the_model_alone(exported, run_copy, tmp_path, capsys):
    model_dir, _ = exported
    before = digest(model_dir)
    assert "--trial nosuch: no such trial" in _refused(run_copy, ["--trial", "nosuch"], capsys)
    assert "not a directory" in _refused(run_copy, ["--out", str(run_copy / "summary.json")], capsys)
    assert "not a run directory (no summary.json)" in _refused(tmp_path, [], capsys)
    # a trial whose checkpoints are gone
    broken = tmp_path / "run"
    shutil.copytree(run_copy, broken, ignore=shutil.ignore_patterns("model", "report"))
    best = json.loads((broken / "summary.json").read_text())["best_trial_id"]
    trials = pd.read_parquet(broken / "trials.parquet").set_index("trial_id")
    other = next(t for t in trials.index if t != best)
    shutil.rmtree(broken / "folds" / other)
    assert f"--trial {other}: has no checkpoints" in _refused(broken, ["--trial", other], capsys)
    ckpt = broken / trials.loc[best, "checkpoint_path"]
    (ckpt / "fold_1.pt").unlink()
    assert "fold_1.pt is missing" in _refused(broken, [], capsys)
    assert digest(model_dir) == before


class Payload:
    """Something only pickle can rebuild: what a tampered checkpoint would carry."""


def test_a_checkpoint_that_needs_pickle_is_refused(run_copy, tmp_path, capsys):
    from analysis import evaluate
    from distributed.config import ConfigError
    broken = tmp_path / "run"
    shutil.copytree(run_copy, broken, ignore=shutil.ignore_patterns("model", "report"))
    summary = json.loads((broken / "summary.json").read_text())
    path = broken / summary["best_checkpoint"] / "fold_0.pt"
    state = torch.load(path, weights_only=True)
    state["extra"] = Payload()
    torch.save(state, path)
    line = _refused(broken, [], capsys)
    assert "fold_0.pt: refused: it holds objects that only pickle can load" in line
    assert "Payload" in line
    assert not (broken / "model").exists()
    with pytest.raises(ConfigError, match="only pickle can load"):  # the report's loader refuses it too
        evaluate.load_fold_model(path, "cpu", 0, summary["max_epochs"])


# ---- pure parts, no Ray

def test_parity_figures_on_known_arrays():
    ref = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]], dtype=np.float32)
    close = ref + np.float32(5e-5)
    out = export.parity(ref, {"a": close})
    assert out["a"]["argmax_agreement"] == 1.0 and abs(out["a"]["max_abs_diff"] - 5e-5) < 1e-6
    flipped = np.array([[0.3, 0.7], [0.4, 0.6], [0.5, 0.5]], dtype=np.float32)
    with pytest.raises(export.ParityError, match=r"b: max \|dp\| 4.00e-01 .* argmax agreement 66.6667%"):
        export.parity(ref, {"a": close, "b": flipped})


class FakeClock:
    """time.perf_counter for export.latency_ms: each call of run() takes the next of `seconds`."""

    def __init__(self, seconds):
        self.now, self.seconds, self.batches = 0.0, iter(seconds), []

    def perf_counter(self) -> float:
        return self.now

    def run(self, xb) -> None:
        self.batches.append(len(xb))
        self.now += next(self.seconds)


def test_latency_is_the_median_per_image_of_single_calls_after_warm_up(monkeypatch):
    x = np.zeros((256, 28, 28), np.uint8)
    # 3 slow warm-up calls (not timed), then 2 ms calls of which some stall for 100 ms (a busy CPU)
    clock = FakeClock([0.5, 0.5, 0.5] + [0.002, 0.1, 0.002, 0.002, 0.1] + [0.002] * 100)
    monkeypatch.setattr(export, "time", clock)
    ms, calls = export.latency_ms(clock.run, x, 100, min_s=0.05, min_calls=5)
    assert calls == 5 and set(clock.batches) == {100} and len(clock.batches) == 3 + 5  # 0.206 s >= 0.05 s
    assert ms == pytest.approx(0.02)  # 2 ms / 100 images; the mean would say 0.412
    clock = FakeClock([0.0] * 3 + [1 / 64] * 100)  # binary-exact seconds: 7 calls make the first >= 0.1 s
    monkeypatch.setattr(export, "time", clock)
    ms, calls = export.latency_ms(clock.run, x, 1, min_s=0.1, min_calls=5)
    assert calls == 7 and ms == pytest.approx(1000 / 64)


def test_latency_setup_names_the_cpu_and_threads():
    import os

    import onnxruntime
    setup = export.latency_setup()
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    assert setup["cpu"] == names[0]
    assert setup["logical_cpus"] == len(os.sched_getaffinity(0))
    assert setup["torch_threads"] == setup["onnxruntime_threads"] == torch.get_num_threads()
    assert (setup["torch"], setup["onnxruntime"]) == (torch.__version__, onnxruntime.__version__)
    assert (setup["warmup_calls"], setup["min_calls"], setup["min_seconds"]) == (3, 5, 1.0)


def card_meta(load: float | None) -> dict:
    setup = {"device": "CPU", "cpu": "AMD EPYC 7R13", "logical_cpus": 2, "torch_threads": 2, "onnxruntime_threads": 2,
             "onnxruntime_provider": "CPUExecutionProvider", "torch": "2.14.1", "onnxruntime": "1.32.0",
             "batches": [1, 256], "warmup_calls": 3, "min_calls": 5, "min_seconds": 1.0}
    entry = {"latency_ms": {"batch_1": 1.234, "batch_256": 0.4567}, "latency_ms_torchscript": {
        "batch_1": 1.71, "batch_256": 0.8101}, "latency_calls": {"onnxruntime": {"batch_1": 801, "batch_256": 9},
                                                                 "torchscript": {"batch_1": 577, "batch_256": 5}},
        "latency_load_average": load}
    return {"latency_setup": setup, "models": {"ensemble": entry}}


def test_card_says_what_latency_was_measured_on():
    from deploy import card
    assert card.latency_lines(card_meta(0.42)) == [
        "", "## Latency", "",
        "| model | runtime | ms/image, batch 1 | batch 256 | timed calls, batch 1 / 256 | load average |",
        "|---|---|---|---|---|---|",
        "| `ensemble` | onnxruntime | 1.23 | 0.457 | 801 / 9 | 0.42 |",
        "| `ensemble` | TorchScript | 1.71 | 0.810 | 577 / 5 | 0.42 |",
        "",
        "Measured at export on the CPU: AMD EPYC 7R13, 2 logical CPUs; TorchScript with torch 2.14.1 on 2 threads, "
        "onnxruntime 1.32.0 (CPUExecutionProvider) on 2 intra-op threads. Each figure is the median over single "
        "calls of the call's time divided by the batch size: at least 5 calls and 1 s of them, after 3 untimed "
        "warm-up calls; the load average is the 1-minute one as the model's measurement began."]
    assert card.latency_lines(card_meta(2.99))[-1].startswith("Measured at export")  # 2 threads its own: not busy
    busy = card.latency_lines(card_meta(3.0))
    assert busy[-2:] == ["", "The CPU was busy: load average `ensemble` 3.0 on 2 logical CPUs, of which this export's "
                             "2 threads account for at most 2. Other processes took CPU time during the measurement, "
                             "so expect lower figures on an idle machine."]
    assert card.latency_lines(card_meta(None))[5:7] == [  # no load average where the OS gives none
        "| `ensemble` | onnxruntime | 1.23 | 0.457 | 801 / 9 | n/a |",
        "| `ensemble` | TorchScript | 1.71 | 0.810 | 577 / 5 | n/a |"]


def test_checkpoint_loader_accepts_plain_state(tmp_path):
    from distributed.checkpoints import load_checkpoint
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.ones(2)}, "history": [{"epoch": 1, "val_acc": 0.5, "node_id": "x"}]}, buf)
    state = load_checkpoint(io.BytesIO(buf.getvalue()), "mem")
    assert state["history"][0]["val_acc"] == 0.5 and torch.equal(state["model"]["w"], torch.ones(2))
