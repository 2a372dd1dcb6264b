"""MODEL_CARD.md: model.json for people. Every figure comes from the model.json content it is rendered from."""
from __future__ import annotations


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def latency_lines(meta: dict) -> list[str]:
    """The card's Latency section: each model's figures per runtime, and what and how they were measured."""
    setup = meta["latency_setup"]
    cpus = setup["logical_cpus"]
    lines = ["", "## Latency", "",
             "| model | runtime | ms/image, batch 1 | batch 256 | timed calls, batch 1 / 256 | load average |",
             "|---|---|---|---|---|---|"]
    threads = setup["torch_threads"]
    busy = []
    for name, e in meta["models"].items():
        load = e["latency_load_average"]
        # the export's own threads were busy just before (parity), so they count in the load: others' share is the rest
        if load is not None and load - threads >= max(1, cpus / 2):
            busy.append(f"`{name}` {load:.1f}")
        for rt, ms in (("onnxruntime", e["latency_ms"]), ("TorchScript", e["latency_ms_torchscript"])):
            calls = e["latency_calls"][rt.lower()]
            lines.append(f"| `{name}` | {rt} | {ms['batch_1']:.2f} | {ms['batch_256']:.3f} | "
                         f"{calls['batch_1']} / {calls['batch_256']} | {'n/a' if load is None else f'{load:.2f}'} |")
    lines += ["", f"Measured at export on the CPU: {setup['cpu']}, {cpus} logical CPU{'s' * (cpus != 1)}; TorchScript "
              f"with torch {setup['torch']} on {setup['torch_threads']} thread{'s' * (setup['torch_threads'] != 1)}, "
              f"onnxruntime {setup['onnxruntime']} ({setup['onnxruntime_provider']}) on "
              f"{setup['onnxruntime_threads']} intra-op thread{'s' * (setup['onnxruntime_threads'] != 1)}. Each "
              f"figure is the median over single calls of the call's time divided by the batch size: at least "
              f"{setup['min_calls']} calls and {setup['min_seconds']:g} s of them, after {setup['warmup_calls']} "
              f"untimed warm-up calls; the load average is the 1-minute one as the model's measurement began."]
    if busy:
        lines += ["", f"The CPU was busy: load average {', '.join(busy)} on {cpus} logical CPUs, of which this "
                  f"export's {threads} thread{'s' * (threads != 1)} account for at most {threads}. Other processes "
                  f"took CPU time during the measurement, so expect lower figures on an idle machine."]
    return lines


def render(meta: dict) -> str:
    m, cv, data = meta["models"], meta["cv"], meta["data"]
    ens = m["ensemble"]
    lines = [
        f"# Model card: Fashion-MNIST classifier from run `{meta['run']['name']}`, trial `{meta['trial_id']}`",
        "",
        f"Exported {meta['created']} by `experiments/export.py` (export id `{meta['export_id']}`). "
        f"{'The best trial of the search' if meta['is_best_trial'] else 'Not the best trial of the search'} "
        f"({meta['run']['trials']} trials, {meta['run']['preset']} preset), at epoch {meta['epoch']}.",
        "",
        "## What it does",
        "",
        f"Classifies 28x28 grey images into the 10 Fashion-MNIST classes: {', '.join(meta['classes'])}.",
        "",
        f"- Input `{meta['input']['name']}`: uint8, shape (N, 28, 28), 0-255. "
        f"{meta['input']['meaning'][0].upper()}{meta['input']['meaning'][1:]}.",
        f"- Output `{meta['output']['name']}`: float32, shape (N, 10): {meta['output']['meaning']}.",
        "- Use it: `python experiments/predict.py MODEL_DIR image.png ...` (onnxruntime), or load "
        "`ensemble.onnx` in any ONNX runtime, or `torch.jit.load('ensemble.torchscript.pt')`.",
        "",
        "## Models in this directory",
        "",
        "| model | what | parameters | ONNX | TorchScript | test accuracy | CPU ms/image, batch 1 | batch 256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sizes = meta["file_sizes"]
    for name, e in m.items():
        lines.append(f"| `{name}` | {e['kind']}{', flip TTA' if e['tta_flip'] else ''} | {e['params']:,} | "
                     f"{_mb(sizes[e['onnx']])} | {_mb(sizes[e['torchscript']])} | {_pct(e['test_acc'])} | "
                     f"{e['latency_ms']['batch_1']:.2f} | {e['latency_ms']['batch_256']:.3f} |")
    lines += ["", "CPU milliseconds per image with onnxruntime (what `predict.py` runs); both runtimes, and what "
              "they were measured on, under Latency below."]
    if "single" in m:
        s = m["single"]
        d = s["test_acc"] - ens["test_acc"]
        lines += ["", f"Choosing: the single model is {ens['params'] / s['params']:.1f}x smaller and "
                  f"{ens['latency_ms']['batch_1'] / s['latency_ms']['batch_1']:.1f}x faster at batch 1; its test "
                  f"accuracy is {abs(100 * d):.2f} points {'above' if d >= 0 else 'below'} the ensemble's. "
                  f"Refit: {s['refit']['epochs']} epochs on {s['refit']['images']} images, "
                  f"{s['refit']['seconds']:.0f} s on {s['refit']['device']}."]
    lines += latency_lines(meta)
    lines += [
        "",
        "## How well it works",
        "",
        f"- Cross-validation ({cv['folds']} folds, this configuration): validation accuracy "
        f"{_pct(cv['val_acc_mean'])} ± {100 * cv['val_acc_std']:.2f} (folds: "
        f"{', '.join(f'{100 * a:.2f}' for a in cv['val_acc_folds'])}), macro-F1 {cv['val_f1_mean']:.4f} ± "
        f"{cv['val_f1_std']:.4f}.",
        f"- Out-of-fold accuracy over all {data['n_train']} training images: {_pct(cv['oof_acc'])}.",
        f"- Test set ({meta['test']['images']} images, never used in the search): ensemble accuracy "
        f"{_pct(ens['test_acc'])}, macro-F1 {ens['test_macro_f1']:.4f}"
        + (f" (the report says {_pct(meta['test']['report_test_acc'])})."
           if meta["test"]["report_test_acc"] is not None else "."),
        "",
        "Per-class F1 on the test set:",
        "",
        "| class | " + " | ".join(m) + " |",
        "|---|" + "---|" * len(m),
    ]
    for c in meta["classes"]:
        lines.append(f"| {c} | " + " | ".join(f"{e['per_class_f1'][c]:.3f}" for e in m.values()) + " |")
    lines += [
        "",
        "## Parity of the exported files",
        "",
        f"Against the trained models run by the training code, on the {meta['test']['images']} test images "
        f"(limits: largest |difference| of a probability <= {meta['parity_limits']['max_abs_diff']:g}, identical "
        f"argmax for >= {100 * meta['parity_limits']['min_argmax_agreement']:.2f}% of the images):",
        "",
        "| model | runtime | largest abs. difference | identical argmax |",
        "|---|---|---|---|",
    ]
    for name, e in m.items():
        for rt, r in e["parity"].items():
            lines.append(f"| `{name}` | {rt} | {r['max_abs_diff']:.2e} | {100 * r['argmax_agreement']:.2f}% |")
    cfg = meta["config"]
    lines += [
        "",
        "## Configuration",
        "",
        "- Searched hyperparameters: " + (", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                                   for k, v in cfg["searched"].items()) or "none") + ".",
        "- Model: " + ", ".join(f"{k} {v}" for k, v in cfg["model"].items()) + ".",
        "- Training: " + ", ".join(f"{k} {v}" for k, v in cfg["train"].items()) + ".",
        "",
        "## Data and provenance",
        "",
        f"- Trained on {data['n_train']} Fashion-MNIST training images ({data['source']}), each fold model on "
        f"{cv['folds'] - 1}/{cv['folds']} of them. Data fingerprint `{data['data_fingerprint']}`, fold split "
        f"fingerprint `{data['split_fingerprint']}`.",
        "- Trained with " + ", ".join(f"{k} {v}" for k, v in meta["versions"]["trained_with"].items())
        + "; exported with " + ", ".join(f"{k} {v}" for k, v in meta["versions"]["exported_with"].items()) + ".",
        "- Files and their sha256 are listed in `model.json`; `predict.py` refuses a directory whose files differ.",
        "",
        "## Limits",
        "",
        "- It knows only the 10 Fashion-MNIST classes, and gives one of them for any input, with a probability "
        "that is not a measure of whether the input is a garment at all.",
        "- It was trained only on Fashion-MNIST: Zalando product photos reduced to 28x28 grey, a light garment "
        "centred on a dark background. Real photos differ: backgrounds, lighting, folds, people wearing the "
        "clothes, several items, other angles. `predict.py` converts images the way Fashion-MNIST was made "
        "(`--invert` for dark-on-light product photos), but expect lower accuracy than the figures above on "
        "anything that is not a product photo of one item.",
        "- Its weakest classes on the test set (lowest F1): "
        + ", ".join(f"{c} ({f:.3f})" for c, f in sorted(ens["per_class_f1"].items(), key=lambda kv: kv[1])[:3])
        + "; the run's report shows which classes they are confused with.",
        "",
    ]
    return "\n".join(lines)
