"""From a run directory to a model directory: the trial's K fold models as one exported model, checked.

    plan(run_dir, trial, out)   everything export.py needs, checked before any work (ConfigError: exit 2)
    export(plan, refit, log)    build, save, check parity, measure, write model.json and MODEL_CARD.md

Latency is measured on the CPU, TorchScript and onnxruntime on torch's thread count: per image, the median
over single calls (latency_ms); model.json's "latency_setup" and each model's "latency_calls" and
"latency_load_average" say on what and how, and the card repeats it.

The ensemble is deploy.ensemble.Exported over the trial's fold checkpoints. Its reference is the report's
own inference path (each fold model through distributed.train.predict, then the mean), so the exported
model's test accuracy is the report's ensemble test accuracy. Parity is checked on the 10,000 test images
for the PyTorch module, the TorchScript file and the ONNX file (onnxruntime) against that reference: the
largest absolute difference of a probability at most MAX_ABS_DIFF, and identical argmaxes for at least
MIN_ARGMAX_AGREEMENT of the images. A failed check raises ParityError (exit 1) and writes nothing: the files
are staged in a hidden directory that becomes RUN_DIR/model only at the end (deploy.bundle.Staging).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from analysis import evaluate, metrics, pareto, run_tables
from analysis.run_tables import Run
from distributed.config import CLASS_NAMES, ConfigError
from distributed.checkpoints import fold_file, load_checkpoint
from distributed.model import num_params
from distributed.run import cpu_name

from deploy import bundle, card, ensemble

Log = Callable[[str], None]
MAX_ABS_DIFF = 1e-4
MIN_ARGMAX_AGREEMENT = 0.9999
LATENCY_BATCHES = (1, 256)
LATENCY_WARMUP_CALLS = 3  # untimed calls before each latency figure
LATENCY_MIN_CALLS = 5     # each figure: the median of at least this many timed calls...
LATENCY_MIN_S = 1.0       # ...and of at least this many seconds of them


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
    run = run_tables.load_run(run_dir)
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
    files = [run.run_dir / ckpt / fold_file(k) for k in range(run.folds)]
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
    """A CPU session with torch's thread count, so that both runtimes' latencies are measured on the same threads."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
               min_s: float = LATENCY_MIN_S, min_calls: int = LATENCY_MIN_CALLS,
               warmup: int = LATENCY_WARMUP_CALLS) -> tuple[float, int]:
    """(milliseconds per image at this batch size, timed calls): each call timed alone, one call's time over the
    batch size, the median of at least `min_calls` calls and `min_s` seconds of them, after `warmup` untimed calls
    (the first calls allocate, and TorchScript's profiling executor optimises). The median of single calls, not
    the mean of a pass: on a shared CPU some calls stall for a scheduler slice or more, and a mean reports the
    stalls (seen on the 2-core box: 111 ms/image at batch 1 by the mean of 5 passes, 4 ms by this median, for
    a TorchScript ensemble that takes 1.7 ms on an idle CPU)."""
    xb = x_u8[:batch]
    for _ in range(warmup):
        run_batch(xb)
    times, t0 = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - t0 < min_s:
        t = time.perf_counter()
        run_batch(xb)
        times.append((time.perf_counter() - t) / batch * 1e3)
    return float(np.median(times)), len(times)


def latency_setup() -> dict:
    """What the latency figures were measured on and how (model.json's "latency_setup", for the card)."""
    import onnxruntime
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"device": "CPU", "cpu": cpu_name(), "logical_cpus": cpus, "torch_threads": torch.get_num_threads(),
            "onnxruntime_threads": torch.get_num_threads(), "onnxruntime_provider": "CPUExecutionProvider",
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "batches": list(LATENCY_BATCHES),
            "warmup_calls": LATENCY_WARMUP_CALLS, "min_calls": LATENCY_MIN_CALLS, "min_seconds": LATENCY_MIN_S,
            "statistic": "median over single calls of the call's time / batch size"}


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

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work on the CPU slows these
    timed = {rt: {f"batch_{b}": latency_ms(run, x_test, b) for b in LATENCY_BATCHES}
             for rt, run in (("onnxruntime", ort_run), ("torchscript", ts_run))}
    latency, latency_ts = ({k: ms for k, (ms, _) in timed[rt].items()} for rt in ("onnxruntime", "torchscript"))
    log(f"{name}: CPU latency per image (median of single calls, {torch.get_num_threads()} threads): onnxruntime "
        f"{latency['batch_1']:.2f} ms at batch 1, {latency['batch_256']:.3f} ms at batch 256; torchscript "
        f"{latency_ts['batch_1']:.2f} / {latency_ts['batch_256']:.3f} ms")
    scores = metrics.summarize(y_test, onnx_probs.argmax(1))  # the report's definitions
    per_class = scores["per_class"]
    return {"parity": checks, "test_acc": scores["acc"], "test_macro_f1": scores["macro_f1"],
            "per_class_f1": dict(zip(per_class["class"], per_class["f1"].astype(float))),
            "latency_ms": latency, "latency_ms_torchscript": latency_ts,
            "latency_calls": {rt: {k: n for k, (_, n) in t.items()} for rt, t in timed.items()},
            "latency_threads": torch.get_num_threads(), "latency_load_average": load}


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
        "latency_setup": latency_setup(),
        "models": entries,
    }
