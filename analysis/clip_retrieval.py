"""CLIP text-to-image retrieval: the images closest to a query, and the class a query names (to score the
retrieved images against)."""
from __future__ import annotations

import re

import numpy as np

from analysis.clip_zeroshot import CLASS_VARIANTS, normalise

# The seed project's four text-to-image queries.
DEFAULT_QUERIES = ("a photo of a bag", "a photo of a dress", "a photo of a sneaker", "a photo of a t-shirt")


def retrieve(query_emb: np.ndarray, image_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine scores) of the k images most similar to one query embedding, best first."""
    scores = normalise(image_emb) @ normalise(np.asarray(query_emb).reshape(-1))
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


def query_class(query: str, class_variants: dict[str, tuple[str, ...]] = CLASS_VARIANTS) -> int | None:
    """The class a free-text query names, or None when it names none or several ("a shirt or a coat").

    Words are matched whole, with '-' counted as part of a word, so "t-shirt" does not also name Shirt.
    """
    text = query.lower()
    found = {i for i, variants in enumerate(class_variants.values()) for v in variants
             if re.search(rf"(?<![\w-]){re.escape(v.lower())}s?(?![\w-])", text)}
    return found.pop() if len(found) == 1 else None
