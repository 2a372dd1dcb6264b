"""The report's CLIP section (section 8): an HTML fragment from CLIP_DIR, the output of
experiments/clip_zeroshot.py, beside the CNN's numbers on the same split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.clip_figures import per_class_f1_figure
from analysis.clip_weights import RANDOM
from analysis.clip_zeroshot import MOST_CONFUSED
from analysis.html import esc, figure_html, table_html
from analysis.metrics import most_confused
from analysis.style import to_png


def _cnn_overall(cnn_per_class: dict) -> dict:
    """Accuracy and macro-F1 from a per-class table: accuracy needs recall and support for every class."""
    rows = list(cnn_per_class.values())
    out = {"macro_f1": float(np.mean([r["f1"] for r in rows]))}
    if all("recall" in r and "support" in r for r in rows):
        total = sum(r["support"] for r in rows)
        out["acc"] = sum(r["recall"] * r["support"] for r in rows) / max(total, 1)
    return out


def report_section(clip_dir: Path, cnn_per_class: dict | None = None, cnn_summary: dict | None = None) -> dict:
    """The report's CLIP section from CLIP_DIR (clip_zeroshot.py's output): {"html": a self-contained fragment
    with the images inlined (headings h3/h4, to sit inside the report's own section), "metrics": {model,
    pretrained, acc, macro_f1, split, n_images}}: acc is on `split`, over n_images (all of it unless --limit).

    cnn_per_class: {class_name: {"f1": ..., optionally "recall", "support"}} of the CNN on the same split;
    cnn_summary: {"acc", "macro_f1"} of the CNN when the caller has them (else derived from cnn_per_class).
    """
    clip_dir = Path(clip_dir)
    m = json.loads((clip_dir / "metrics.json").read_text())
    files = m["files"]
    e = esc
    cnn = dict(_cnn_overall(cnn_per_class) if cnn_per_class else {}, **(cnn_summary or {}))

    rows = []
    if cnn:
        rows.append(("CNN (from the run)", m["split"], "all", cnn.get("acc"), cnn.get("macro_f1")))
    rows.append(("CLIP zero-shot", m["split"], m["n_images"], m["acc"], m["macro_f1"]))
    lp = m.get("linear_probe")
    if lp:
        rows.append((f"CLIP linear probe, {lp['folds']}-fold CV", "train", lp["n_train"], lp["acc"], lp["macro_f1"]))
        if "test_acc" in lp:
            rows.append(("CLIP linear probe, refit on all", m["split"], m["n_images"], lp["test_acc"],
                         lp["test_macro_f1"]))
    table = pd.DataFrame(rows, columns=["model", "split", "images", "accuracy", "macro-F1"])
    subset = f"{m['n_images']} {m['split']} images" + (" (a class-stratified subset)" if m.get("limit") else "")

    parts = [f'<div class="clip"><h3>CLIP: {e(m["model"])}, weights {e(m["pretrained"])}</h3>']
    if m["pretrained"] == RANDOM:
        parts.append("<p><b>Random weights</b>: these numbers test the pipeline, they say nothing about CLIP.</p>")
    parts.append(table_html(table, left=("model",)))
    if lp:
        parts.append(f"<p>Linear probe: logistic regression (C={lp['C']}) on frozen image embeddings, folds "
                     f"from {e(lp['source'])}; accuracy per fold "
                     f"{', '.join(f'{a:.3f}' for a in lp['acc_per_fold'])}. The gap between probe and zero-shot "
                     f"is what the text head loses; the gap between probe and CNN is the features.</p>")
    parts.append(figure_html((clip_dir / files["confusion_matrix"]).read_bytes(), "CLIP zero-shot confusion matrix",
                             f"Zero-shot confusion matrix on {subset}: rows are the true classes; left counts, "
                             f"right row-normalised (diagonal = recall)."))
    series = {}
    if cnn_per_class:
        series["CNN"] = {n: r["f1"] for n, r in cnn_per_class.items()}
    series["CLIP zero-shot"] = {n: r["f1"] for n, r in m["per_class"].items()}
    if lp and "test_per_class_f1" in lp:
        series["CLIP linear probe"] = lp["test_per_class_f1"]
    parts.append(figure_html(to_png(per_class_f1_figure(series)), "per-class F1",
                             f"Per-class F1: {', '.join(series)}. CLIP is scored on {subset}"
                             + (", the CNN on the run's evaluation of the same split." if cnn_per_class else ".")))
    pairs = most_confused(np.asarray(m["confusion"]), MOST_CONFUSED)  # from the matrix: any clip_zeroshot.py's output
    confused = "".join(f"<li>{e(c['true'])} taken for {e(c['predicted'])}: {c['count']}</li>"
                       for c in pairs.to_dict("records"))
    parts.append(f"<h4>Most confused</h4><ul>{confused}</ul><h4>Text-to-image retrieval</h4>")
    for r in m["retrieval"]:
        hits = "" if r["class"] is None else \
            f"; precision@{r['top_k']} {r['precision_at_k']:.2f} (green: {r['class']}, red: other classes)"
        parts.append(figure_html((clip_dir / r["file"]).read_bytes(), f"top {r['top_k']} for {r['query']}",
                                 f"The {r['top_k']} of the {subset} closest to \"{r['query']}\", best first, with "
                                 f"their true class and cosine similarity{hits}."))
    n_prompts = sum(len(v) for v in m["prompts"]["class_variants"].values()) * len(m["prompts"]["templates"])
    parts.append(f"<p>Class embeddings: {n_prompts} prompts ({len(m['prompts']['templates'])} templates x name "
                 f"variants per class), averaged per class. Image throughput {m['throughput_img_s']:.0f} images/s "
                 f"on {e(m['device'])}.</p></div>")
    return {"html": "\n".join(parts),
            "metrics": {k: m[k] for k in ("model", "pretrained", "acc", "macro_f1", "split", "n_images")}}
