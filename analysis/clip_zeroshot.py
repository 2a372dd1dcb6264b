"""CLIP zero-shot classification of Fashion-MNIST: the prompts, class embeddings (prompt-template x
class-name-variant ensemble), predictions and their scores (`run_zero_shot`: all of it for one encoder and one
image set). experiments/clip_zeroshot.py wires this, retrieval and the linear probe together.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from analysis.clip_encoders import Encoder
from analysis.metrics import most_confused
from distributed.config import CLASS_NAMES

# Templates describe what the images are: small, grey, centred product shots. Each is combined with every
# name variant of a class; the class embedding is the normalised mean of all of them (CLIP paper, sec. 3.1.4).
TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a grayscale photo of a {}.",
    "a low resolution photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a product photo of a {}.",
    "a centered photo of a {} on a black background.",
)

# Name variants per class, in label order (keys equal CLASS_NAMES). Fashion-MNIST's own names are poor
# prompts ("T-shirt/top", "Trouser"), so each class gets the words people caption such images with.
CLASS_VARIANTS: dict[str, tuple[str, ...]] = {
    "T-shirt/top": ("t-shirt", "top", "tee"),
    "Trouser": ("trousers", "pants", "jeans"),
    "Pullover": ("pullover", "sweater", "jumper"),
    "Dress": ("dress",),
    "Coat": ("coat", "jacket"),
    "Sandal": ("sandal", "sandals"),
    "Shirt": ("shirt", "button-down shirt", "blouse"),
    "Sneaker": ("sneaker", "running shoe", "trainer"),
    "Bag": ("bag", "handbag", "purse"),
    "Ankle boot": ("ankle boot", "boot"),
}
assert tuple(CLASS_VARIANTS) == CLASS_NAMES

MOST_CONFUSED = 5  # off-diagonal cells listed in metrics.json and the report


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_prompts(class_variants: dict[str, tuple[str, ...]], templates=TEMPLATES) -> list[list[str]]:
    return [[t.format(v) for v in variants for t in templates] for variants in class_variants.values()]


def class_text_embeddings(encoder: Encoder, class_variants: dict[str, tuple[str, ...]] = CLASS_VARIANTS,
                          templates=TEMPLATES) -> np.ndarray:
    """(C, D): per class, the normalised mean of its normalised prompt embeddings (templates x variants)."""
    prompts = class_prompts(class_variants, templates)
    flat = normalise(encoder.encode_text([p for ps in prompts for p in ps]))
    bounds = np.cumsum([0] + [len(ps) for ps in prompts])
    return normalise(np.stack([flat[lo:hi].mean(0) for lo, hi in zip(bounds[:-1], bounds[1:])]))


def zero_shot_predict(image_emb: np.ndarray, class_emb: np.ndarray, logit_scale: float = 100.0):
    """(predictions (N,), probabilities (N, C)): cosine similarity scaled by the model's temperature, softmax."""
    logits = logit_scale * (normalise(image_emb) @ normalise(class_emb).T)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return logits.argmax(axis=1), probs.astype(np.float32)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names=CLASS_NAMES) -> dict:
    """acc, macro_f1, per_class {name: precision, recall, f1, support}, confusion (rows: true), and
    most_confused: the MOST_CONFUSED largest off-diagonal cells as analysis.metrics.most_confused lists them,
    [{true, predicted, count, share_of_true}]."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    labels = np.arange(len(class_names))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "acc": float(np.trace(cm) / max(cm.sum(), 1)),
        "macro_f1": float(f.mean()),
        "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, n in enumerate(class_names)},
        "confusion": cm.tolist(),
        "most_confused": most_confused(cm, MOST_CONFUSED, class_names).to_dict("records"),
    }


@dataclass
class ZeroShot:
    image_emb: np.ndarray   # (N, D) L2-normalised
    class_emb: np.ndarray   # (C, D) L2-normalised
    pred: np.ndarray        # (N,)
    probs: np.ndarray       # (N, C)
    metrics: dict           # classification_metrics(...)
    images_per_s: float     # image-encoding throughput (preprocess + forward), model loading excluded


def run_zero_shot(encoder: Encoder, images: np.ndarray, labels: np.ndarray,
                  class_variants: dict[str, tuple[str, ...]] = CLASS_VARIANTS, templates=TEMPLATES,
                  progress: Callable[[int, int], None] | None = None) -> ZeroShot:
    """Embed the images and the class prompts, predict, score. Labels index into class_variants' order."""
    start = time.perf_counter()
    image_emb = normalise(encoder.encode_images(images, progress))
    rate = len(images) / max(time.perf_counter() - start, 1e-9)
    class_emb = class_text_embeddings(encoder, class_variants, templates)
    pred, probs = zero_shot_predict(image_emb, class_emb, encoder.logit_scale)
    return ZeroShot(image_emb, class_emb, pred, probs,
                    classification_metrics(labels, pred, tuple(class_variants)), rate)
