"""From a run directory to a model directory: the trial's K fold models as one exported model, checked.

    plan(run_dir, trial, out)   everything export.py needs, checked before any work (ConfigError: exit 2)
    export(plan, refit, log)    build, save, check parity, measure, write model.json and MODEL_CARD.md

The ensemble is deploy.ensemble.Exported over the trial's fold checkpoints. Its reference is the report's
own inference path (each fold model through distributed.train.predict, then the mean), so the exported
model's test accuracy is the report's ensemble test accuracy. Parity is checked on the 10,000 test images
for the PyTorch module, the TorchScript file and the ONNX file (onnxruntime) against that reference: the
largest absolute difference of a probability at most MAX_ABS_DIFF, and identical argmaxes for at least
MIN_ARGMAX_AGREEMENT of the images. A failed check raises ParityError (exit 1) and writes nothing: the files
are staged in a hidden directory that becomes RUN_DIR/model only at the end (deploy.bundle.Staging).
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from analysis import evaluate, metrics, pareto, tables
from analysis.tables import Run
from distributed.config import CLASS_NAMES, ConfigError
from distributed.cv import load_checkpoint
from distributed.model import num_params

from deploy import bundle, card, ensemble

Log = Callable[[str], None]
MAX_ABS_DIFF = 1e-4
MIN_ARGMAX_AGREEMENT = 0.9999
LATENCY_BATCHES = (1, 256)


class ParityError(Exception):
    """The exported files do not compute what the trained models compute (export refused, exit 1)."""


@dataclass
class Plan:
    run: Run
    trial: "object"          # the trial's row of trials.parquet (pandas Series)
    trial_id: str
    epoch: int
    files: list[Path]        # the K fold checkpoints
    out: Path
    data: evaluate.RunData
    models: list             # the fold models as trained (CPU, eval mode)
    train_cfg: object        # the TrainConfig they were validated with
    model_config: dict       # their ModelConfig, as the checkpoints store it


def plan(run_dir, trial_id: str | None = None, out=None) -> Plan:
    """Check the run, the trial and its fold checkpoints; ConfigError (one line) on anything wrong."""
    run = tables.load_run(run_dir)
    trial_id = trial_id or run.best_trial_id
    by_id = run.trials.set_index("trial_id")
    if trial_id not in by_id.index:
        raise ConfigError(f"--trial {trial_id}: no such trial in {run.run_dir}/trials.parquet "
                          f"(trials: {', '.join(sorted(by_id.index))})")
    row = by_id.loc[trial_id]
    ckpt = row.get("checkpoint_path")
    if not isinstance(ckpt, str) or not ckpt or not (run.run_dir / ckpt).is_dir():
        raise ConfigError(f"--trial {trial_id}: has no checkpoints in {run.run_dir}/folds/{trial_id} "
                          f"(status {row['status']}, {int(row['epochs_run'])} epoch(s)): nothing to export")
    files = [run.run_dir / ckpt / f"fold_{k}.pt" for k in range(run.folds)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"--trial {trial_id}: fold checkpoint {missing[0]} is missing; the export needs all "
                          f"{run.folds} fold models")
    out = Path(out) if out else run.run_dir / "model"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    epoch = int(ckpt.rsplit("_", 1)[1])
    # weights_only loads: a checkpoint that needs pickle is refused here (ConfigError), before any work
    models, cfgs = zip(*[evaluate.load_fold_model(f, "cpu", k, epoch) for k, f in enumerate(files)])
    if len({c.tta_flip for c in cfgs}) > 1:
        raise ConfigError(f"trial {trial_id}: its fold checkpoints disagree on tta_flip; the run is inconsistent")
    model_config = load_checkpoint(files[0], files[0])["model_config"]
    return Plan(run, row, trial_id, epoch, files, out, evaluate.load_data(run), list(models), cfgs[0], model_config)


def reference_probs(models, x_u8: np.ndarray, tta_flip: bool) -> np.ndarray:
    """The report's ensemble: each fold model through the training code's predict, then the mean."""
    return np.mean([evaluate._predict_np(m, x_u8, 1024, tta_flip=tta_flip)["probs"] for m in models], axis=0)


def _torch_probs(module, x_u8: np.ndarray, batch: int = 1024) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat([module(torch.from_numpy(x_u8[i:i + batch]))
                          for i in range(0, len(x_u8), batch)]).numpy()


def _onnx_session(path: Path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _onnx_probs(session, x_u8: np.ndarray, batch: int = 1024) -> np.ndarray:
    return np.concatenate([session.run([bundle.OUTPUT_NAME], {bundle.INPUT_NAME: x_u8[i:i + batch]})[0]
                           for i in range(0, len(x_u8), batch)])


def parity(reference: np.ndarray, candidates: dict[str, np.ndarray]) -> dict:
    """Largest |p - p_ref| and the share of identical argmaxes, per candidate; ParityError if one fails."""
    ref_pred = reference.argmax(1)
    out = {}
    for name, probs in candidates.items():
        out[name] = {"max_abs_diff": float(np.abs(probs - reference).max()),
                     "argmax_agreement": float((probs.argmax(1) == ref_pred).mean())}
    bad = {n: r for n, r in out.items()
           if not (r["max_abs_diff"] <= MAX_ABS_DIFF and r["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT)}
    if bad:
        raise ParityError("; ".join(f"{n}: max |dp| {r['max_abs_diff']:.2e} (limit {MAX_ABS_DIFF:.0e}), "
                                    f"argmax agreement {r['argmax_agreement']:.4%} (limit {MIN_ARGMAX_AGREEMENT:.2%})"
                                    for n, r in bad.items()))
    return out


def latency_ms(run_batch: Callable[[np.ndarray], object], x_u8: np.ndarray, batch: int,
               min_s: float = 1.0, repeats: int = 5) -> float:
    """CPU milliseconds per image at this batch size: the median of `repeats` timed passes of >= min_s/repeats."""
    xb = x_u8[:batch]
    for _ in range(3):  # warm-up: the first calls allocate, and TorchScript's profiling executor optimises
        run_batch(xb)
    times = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            run_batch(xb)
            n += 1
            if time.perf_counter() - t0 >= min_s / repeats:
                break
        times.append((time.perf_counter() - t0) / n / batch * 1e3)
    return float(np.median(times))


def check_model(stage: bundle.Staging, name: str, module, reference: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, log: Log) -> dict:
    """Parity of the staged files of one model, its test accuracy and CPU latency: its model.json entry."""
    t0 = time.perf_counter()
    scripted, _ = bundle.load_torchscript(stage.path(bundle.torchscript_file(name)))
    session = _onnx_session(stage.path(bundle.onnx_file(name)))
    onnx_probs = _onnx_probs(session, x_test)
    checks = parity(reference, {"pytorch": _torch_probs(module, x_test), "torchscript": _torch_probs(scripted, x_test),
                                "onnxruntime": onnx_probs})
    log(f"{name}: parity on {len(x_test)} test images: "
        + ", ".join(f"{n} max |dp| {r['max_abs_diff']:.1e}, argmax {r['argmax_agreement']:.2%}"
                    for n, r in checks.items()) + f" ({time.perf_counter() - t0:.0f} s)")

    def ort_run(xb):
        return session.run([bundle.OUTPUT_NAME], {bundle.INPUT_NAME: xb})

    def ts_run(xb):
        with torch.inference_mode():
            return scripted(torch.from_numpy(xb))

    latency = {f"batch_{b}": latency_ms(ort_run, x_test, b) for b in LATENCY_BATCHES}
    latency_ts = {f"batch_{b}": latency_ms(ts_run, x_test, b) for b in LATENCY_BATCHES}
    log(f"{name}: CPU latency per image: onnxruntime {latency['batch_1']:.2f} ms at batch 1, "
        f"{latency['batch_256']:.3f} ms at batch 256; torchscript {latency_ts['batch_1']:.2f} / "
        f"{latency_ts['batch_256']:.3f} ms")
    scores = metrics.summarize(y_test, onnx_probs.argmax(1))  # the report's definitions
    per_class = scores["per_class"]
    return {"parity": checks, "test_acc": scores["acc"], "test_macro_f1": scores["macro_f1"],
            "per_class_f1": dict(zip(per_class["class"], per_class["f1"].astype(float))),
            "latency_ms": latency, "latency_ms_torchscript": latency_ts,
            "latency_threads": torch.get_num_threads()}


def report_test_acc(run: Run, trial_id: str) -> tuple[float | None, list[str]]:
    """The test accuracy in RUN_DIR/report/metrics.json, when the report is of this trial; and its devices."""
    import json
    path = run.run_dir / "report" / "metrics.json"
    if not path.is_file():
        return None, []
    m = json.loads(path.read_text())
    if m.get("best_trial_id", run.best_trial_id) != trial_id:
        return None, []
    return m.get("test_acc"), list(m.get("inference_devices") or [])


def _versions() -> dict:
    import onnx
    import onnxruntime
    return {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _oof_acc(plan: Plan) -> float | None:
    oof = evaluate.read_recorded_oof(plan.run.run_dir / plan.trial["checkpoint_path"], plan.data)
    return None if oof is None else float((oof["probs"].argmax(1) == oof["true"]).mean())


def export(p: Plan, refit: bool = False, refit_gpu: bool | None = None, log: Log = print) -> dict:
    """Write p.out; returns model.json's content. ParityError (nothing written) when a check fails."""
    t0 = time.perf_counter()
    ds = p.data.dataset
    x_test, y_test = np.array(ds.test_x), np.array(ds.test_y)  # writable copies (the dataset's are read-only)
    models, train_cfg = p.models, p.train_cfg
    module = ensemble.build(models, train_cfg.tta_flip)
    log(f"trial {p.trial_id}: {len(models)} fold models at epoch {p.epoch}, {num_params(models[0]):,} parameters "
        f"each, flip TTA {'on' if train_cfg.tta_flip else 'off'}")
    reference = reference_probs(models, x_test, train_cfg.tta_flip)
    ref_acc = metrics.summarize(y_test, reference.argmax(1))["acc"]
    report_acc, report_devices = report_test_acc(p.run, p.trial_id)
    if report_acc is not None and all(d == "cpu" for d in report_devices) and abs(report_acc - ref_acc) > 1e-9:
        raise ParityError(f"the fold models score {ref_acc:.4f} on the test set, the report says "
                          f"{report_acc:.4f}: the report is not of these checkpoints (build it again)")

    with bundle.Staging(p.out) as stage:
        entries = {"ensemble": {**stage.save_model("ensemble", module),
                                "kind": f"{len(models)}-fold ensemble (mean of the fold models' softmax)",
                                "folds": len(models), "tta_flip": train_cfg.tta_flip,
                                "params": num_params(module), "params_per_model": num_params(models[0]),
                                **check_model(stage, "ensemble", module, reference, x_test, y_test, log)}}
        if entries["ensemble"]["test_acc"] != ref_acc:
            raise ParityError(f"the exported ensemble scores {entries['ensemble']['test_acc']:.4f} on the test "
                              f"set, the fold models {ref_acc:.4f}")
        refit_info = None
        if refit:
            from deploy import refit as refit_mod
            single, refit_info = refit_mod.refit(p, log=log, use_gpu=refit_gpu)
            single_module = ensemble.build([single], train_cfg.tta_flip)
            single_ref = reference_probs([single.eval()], x_test, train_cfg.tta_flip)
            entries["single"] = {**stage.save_model("single", single_module),
                                 "kind": f"one model refit on all {refit_info['images']} training images",
                                 "folds": 1, "tta_flip": train_cfg.tta_flip, "params": num_params(single_module),
                                 "params_per_model": num_params(single), "refit": refit_info,
                                 **check_model(stage, "single", single_module, single_ref, x_test, y_test, log)}
        meta = _meta(p, entries, train_cfg, ref_acc, report_acc)
        meta["export_seconds"] = round(time.perf_counter() - t0, 1)
        meta["file_sizes"] = {e[key]: stage.path(e[key]).stat().st_size  # for the card; model.json lists all
                              for e in entries.values() for key in ("onnx", "torchscript")}
        text = card.render({**meta, "export_id": stage.export_id})
        stage.finish(meta, {"MODEL_CARD.md": text.encode()})
    return bundle.read_meta(p.out)


def _meta(p: Plan, entries: dict, train_cfg, ref_acc: float, report_acc: float | None) -> dict:
    row, s = p.trial, p.run.summary
    fold_acc = [float(row[f"val_acc_fold{k}"]) for k in range(p.run.folds)]
    return {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "run": {"name": s["name"], "dir": str(p.run.run_dir), "preset": s.get("preset"),
                "trials": len(p.run.trials)},
        "trial_id": p.trial_id, "is_best_trial": p.trial_id == p.run.best_trial_id,
        "epoch": p.epoch, "status": row["status"],
        "classes": list(CLASS_NAMES),
        "input": {"name": bundle.INPUT_NAME, "dtype": "uint8", "shape": ["N", 28, 28],
                  "meaning": "grey 28x28 images, 0-255, a light garment centred on a dark background "
                             "(as Fashion-MNIST); scaling to [-1, 1] is inside the model"},
        "output": {"name": bundle.OUTPUT_NAME, "dtype": "float32", "shape": ["N", len(CLASS_NAMES)],
                   "meaning": "class probabilities, rows sum to 1, in the order of 'classes'"},
        "default_model": "ensemble",
        "config": {"model": p.model_config, "train": train_cfg.__dict__, "searched": pareto.hparams_of(row)},
        "cv": {"folds": p.run.folds, "val_acc_mean": float(row["val_acc_mean"]),
               "val_acc_std": float(row["val_acc_std"]), "val_acc_folds": fold_acc,
               "val_f1_mean": float(row["val_f1_mean"]), "val_f1_std": float(row["val_f1_std"]),
               "oof_acc": _oof_acc(p)},
        "test": {"images": int(len(p.data.dataset.test_y)), "ensemble_acc_reference": ref_acc,
                 "report_test_acc": report_acc},
        "data": {"n_train": int(s["n_train"]), "data_fingerprint": s["data_fingerprint"],
                 "split_fingerprint": s["split_fingerprint"], "source": str(p.data.dataset.source)},
        "versions": {"trained_with": s.get("versions") or {}, "exported_with": _versions()},
        "parity_limits": {"max_abs_diff": MAX_ABS_DIFF, "min_argmax_agreement": MIN_ARGMAX_AGREEMENT},
        "models": entries,
    }
