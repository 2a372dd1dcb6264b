"""Table views of a run (analysis.run_tables), the layer table (analysis.architecture), and the inference
device plan and OOF checks (analysis.evaluate), on small synthetic inputs with known answers."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import run_tables
from analysis.architecture import layer_table
from analysis.evaluate import RunData, inference_devices, read_recorded_oof
from distributed.config import ConfigError, ModelConfig
from distributed.data import FashionMNIST
from distributed.model import make_model, num_params


def synthetic_epochs(curves: dict[str, list[list[float]]]) -> pd.DataFrame:
    """{trial_id: [[fold values of epoch 1], [epoch 2], ...]} -> an epochs.parquet-shaped table."""
    rows = []
    for tid, per_epoch in curves.items():
        for e, folds in enumerate(per_epoch, start=1):
            for k, v in enumerate(folds):
                rows.append({"trial_id": tid, "epoch": e, "fold": k, "train_loss": 1 - v, "train_acc": v,
                             "train_f1": v, "val_loss": 1 - v, "val_acc": v, "val_f1": v, "lr": 1e-3, "seconds": 1.0})
    return pd.DataFrame(rows)


def test_fold_band_of_known_curves():
    epochs = synthetic_epochs({"t": [[0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.6, 0.8, 0.7]]})
    band = run_tables.fold_band(epochs, "t", "val_acc")
    assert band.epoch.tolist() == [1, 2, 3]
    np.testing.assert_allclose(band["mean"], [0.2, 0.5, 0.7])
    np.testing.assert_allclose(band["std"], [0.1, 0.0, 0.1])  # ddof=1, as the engine reports fold std
    np.testing.assert_allclose(band.lo, [0.1, 0.5, 0.6])
    np.testing.assert_allclose(band.hi, [0.3, 0.5, 0.8])
    np.testing.assert_allclose(band.fold1, [0.2, 0.5, 0.8])


def test_fold_mean_curves_average_over_folds():
    epochs = synthetic_epochs({"a": [[0.2, 0.4]], "b": [[0.5, 0.7], [0.6, 0.8]]})
    curves = run_tables.fold_mean_curves(epochs).set_index(["trial_id", "epoch"])
    assert curves.loc[("a", 1), "val_acc_mean"] == pytest.approx(0.3)
    assert curves.loc[("b", 2), "val_loss_mean"] == pytest.approx(0.3)
    assert curves.loc[("b", 2), "val_acc_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))


def test_values_and_deepest_shared_epoch():
    epochs = synthetic_epochs({"a": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], "b": [[0.2, 0.2], [0.4, 0.4]],
                               "c": [[0.3, 0.1]]})
    epochs = epochs[~((epochs.trial_id == "b") & (epochs.epoch == 2) & (epochs.fold == 1))]  # b lost a fold
    assert run_tables.deepest_shared_epoch(epochs, folds=2, min_trials=3) == 1
    assert run_tables.deepest_shared_epoch(epochs, folds=2, min_trials=2) == 1  # b's epoch 2 lacks fold 1
    assert run_tables.deepest_shared_epoch(epochs, folds=2, min_trials=1) == 3
    assert run_tables.deepest_shared_epoch(epochs, folds=2, min_trials=4) is None
    at1 = run_tables.values_at_epoch(epochs, 1, folds=2)
    assert at1.loc["c"].tolist() == [0.3, 0.1] and list(at1.columns) == ["fold0", "fold1"]
    assert list(run_tables.values_at_epoch(epochs, 2, folds=2).index) == ["a"]


def test_rank_trials_puts_completed_first_then_by_epochs_reached():
    trials = pd.DataFrame({
        "trial_id": ["p1", "c1", "p3", "c2", "e"],
        "status": ["pruned", "completed", "pruned", "completed", "errored"],
        "epochs_run": [1, 9, 3, 9, 0],
        "val_acc_mean": [0.95, 0.80, 0.70, 0.85, None]})
    ranked = run_tables.rank_trials(trials)
    assert ranked.trial_id.tolist() == ["c2", "c1", "p3", "p1", "e"]
    assert ranked["rank"].tolist() == [1, 2, 3, 4, 5]


def test_format_value_uses_scientific_for_log_scale_hyperparameters():
    assert run_tables.format_value("lr", 0.0123) == "1.23e-02"
    assert run_tables.format_value("dropout", 0.41174) == "0.412"
    assert run_tables.format_value("batch_size", 128) == "128"


@pytest.mark.parametrize("cfg", [ModelConfig(width=8, depth=2, convs_per_block=1, fc_width=32),
                                 ModelConfig(), ModelConfig(width=16, depth=3, convs_per_block=2, fc_width=64)])
def test_layer_table_counts_every_parameter(cfg):
    model = make_model(cfg)
    table = layer_table(model)
    assert table.params.sum() == num_params(model)
    assert table.output_shape.iloc[-1] == "10"
    first_conv = table[table.type.str.startswith("Conv2d")].iloc[0]
    assert first_conv.output_shape == f"{cfg.width}×28×28"
    assert first_conv.params == 9 * cfg.width  # 3x3 kernel, 1 input channel, no bias (BN follows)
    side = 28 // 2 ** cfg.depth
    flatten = table[table.type == "Flatten"].iloc[0]
    assert flatten.output_shape == str(cfg.width * 2 ** (cfg.depth - 1) * side * side)
    assert model.training  # the probe restores the mode


def test_inference_devices():
    assert inference_devices(5, None, available=0) == ["cpu"] * 5
    assert inference_devices(3, None, available=2) == ["cuda:0"] * 3
    assert inference_devices(5, 2, available=4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert inference_devices(3, 0, available=4) == ["cpu"] * 3
    with pytest.raises(ConfigError, match="--num-gpus 2: this machine has 1 CUDA GPU"):
        inference_devices(3, 2, available=1)


def _tiny_run_data() -> RunData:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 4)
    ds = FashionMNIST(rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), y,
                      np.zeros((10, 28, 28), np.uint8), np.arange(10), "synthetic")
    positions = np.arange(40)
    folds = [np.arange(0, 40, 2), np.arange(1, 40, 2)]
    return RunData(ds, positions, folds)


def _write_oof(path, data: RunData, k: int, index=None, true=None):
    index = data.held_out(k) if index is None else index
    true = data.dataset.train_y[index] if true is None else true
    probs = np.full((len(index), 10), 0.1, np.float32)
    np.savez(path / f"oof_fold_{k}.npz", index=index, fold=np.full(len(index), k), true=true,
             pred=probs.argmax(1), probs=probs)


def test_read_recorded_oof_checks_the_split(tmp_path):
    data = _tiny_run_data()
    assert read_recorded_oof(tmp_path, data) is None  # no files: the caller recomputes
    for k in range(2):
        _write_oof(tmp_path, data, k)
    oof = read_recorded_oof(tmp_path, data)
    assert sorted(oof["index"].tolist()) == list(range(40)) and oof["probs"].shape == (40, 10)
    _write_oof(tmp_path, data, 1, index=data.held_out(0))
    with pytest.raises(ConfigError, match="not fold 1's held-out part"):
        read_recorded_oof(tmp_path, data)
    _write_oof(tmp_path, data, 1, true=np.zeros(20, np.int64))
    with pytest.raises(ConfigError, match="labels differ"):
        read_recorded_oof(tmp_path, data)


def _write_run(path, summary_changes=None, trials=None):
    from distributed.config import PRESETS, save
    path.mkdir()
    save(PRESETS["smoke"], path / "config.json")
    summary = {k: None for k in run_tables.SUMMARY_KEYS}
    summary.update({"name": "x", "folds": 2, "max_epochs": 3, "best_trial_id": "c1", **(summary_changes or {})})
    (path / "summary.json").write_text(json.dumps(summary))
    trials = trials if trials is not None else pd.DataFrame(
        {"trial_id": ["c1"], "status": ["completed"], "epochs_run": [3], "val_acc_mean": [0.5]})
    trials.to_parquet(path / "trials.parquet")
    synthetic_epochs({"c1": [[0.5, 0.5]]}).to_parquet(path / "epochs.parquet")
    return path


def test_load_run_rejects_bad_directories(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        run_tables.load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run directory"):
        run_tables.load_run(tmp_path / "empty")
    run = run_tables.load_run(_write_run(tmp_path / "ok"))
    assert run.best_trial_id == "c1" and run.trials["rank"].tolist() == [1]
    with pytest.raises(ConfigError, match="no trial completed its full budget of 3 epochs"):
        run_tables.load_run(_write_run(tmp_path / "none", {"best_trial_id": None}))
    with pytest.raises(ConfigError, match="not in trials.parquet"):
        run_tables.load_run(_write_run(tmp_path / "other", {"best_trial_id": "zz"}))
    bad = _write_run(tmp_path / "corrupt")
    (bad / "summary.json").write_text('{"name": ')
    with pytest.raises(ConfigError, match="corrupt summary.json"):
        run_tables.load_run(bad)
    (bad / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="missing keys"):
        run_tables.load_run(bad)
