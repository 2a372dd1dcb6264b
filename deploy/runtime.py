"""Run one model of an exported model directory: checked before use, then batched inference.

    open_model(model_dir, name, backend)   model.json and every checksum verified (deploy.bundle), the model
                                           file loaded and its embedded export_id compared with model.json's
    Model.predict(images)                  uint8 (N, 28, 28) -> float32 probabilities (N, 10), in batches

onnxruntime is the default backend: it starts in well under a second and needs no torch, which this module
imports only for the TorchScript backend. Both run the same exported module (preprocessing inside), so they
agree to float rounding. Each takes the GPU when it can use one: onnxruntime when its build has the CUDA
execution provider, TorchScript when torch sees CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from deploy.bundle import (EXPORT_ID_KEY, INPUT_NAME, OUTPUT_NAME, BundleError, check_embedded_id,
                           load_torchscript, read_meta)
from distributed.config import NUM_CLASSES

BACKENDS = ("onnxruntime", "torchscript")
BATCH_SIZE = 256  # images per inference call: large enough to amortise the call, small enough for any GPU


@dataclass(frozen=True)
class Model:
    name: str                                  # its key in model.json's "models"
    classes: list[str]                         # output order, from model.json
    device: str                                # where it runs, for the user ("CPU (onnxruntime ...)")
    run: Callable[[np.ndarray], np.ndarray]    # one batch: uint8 (n, 28, 28) -> probabilities (n, 10)

    def predict(self, images: np.ndarray, batch_size: int = BATCH_SIZE,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        probs = np.empty((len(images), len(self.classes)), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            stop = min(start + batch_size, len(images))
            probs[start:stop] = self.run(np.ascontiguousarray(images[start:stop]))
            if progress:
                progress(stop, len(images))
        return probs


def open_model(model_dir: Path, name: str | None = None, backend: str = "onnxruntime") -> Model:
    """The model `name` (default: model.json's default_model, else "ensemble"); BundleError if anything is off."""
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    name = name or meta.get("default_model", "ensemble")
    models = meta.get("models", {})
    if name not in models:
        raise BundleError(f"{model_dir}/model.json: no model '{name}' (it has: {', '.join(models) or 'none'})")
    classes = meta.get("classes")
    if not (isinstance(classes, list) and len(classes) == NUM_CLASSES and all(isinstance(c, str) for c in classes)):
        raise BundleError(f"{model_dir}/model.json: 'classes' must list the {NUM_CLASSES} class names")
    if backend == "onnxruntime":
        run, device = _onnxruntime(model_dir / models[name]["onnx"], meta)
    elif backend == "torchscript":
        run, device = _torchscript(model_dir / models[name]["torchscript"], meta)
    else:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    return Model(name, classes, device, run)


def _onnxruntime(path: Path, meta: dict):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would go to stderr between our own lines
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        raise BundleError(f"{path}: onnxruntime cannot load it ({e})") from None
    check_embedded_id(path, session.get_modelmeta().custom_metadata_map.get(EXPORT_ID_KEY), meta)
    provider = session.get_providers()[0]  # what it really got: CUDA can fail to start and fall back
    device = f"{'GPU' if provider == 'CUDAExecutionProvider' else 'CPU'} (onnxruntime {provider})"
    return (lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]), device


def _torchscript(path: Path, meta: dict):
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        module, found = load_torchscript(path, device)
    except Exception as e:  # torch reports a bad archive as RuntimeError or worse
        raise BundleError(f"{path}: torch.jit.load cannot load it ({e})") from None
    check_embedded_id(path, found or None, meta)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.tensor(x, device=device)).float().cpu().numpy()  # a copy: x may be read-only

    where = f"GPU cuda:0 {torch.cuda.get_device_name(0)}" if device.type == "cuda" else "CPU"
    return run, f"{where} (torchscript)"


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable classes per row, best first (ties: the lower index): (indices, probabilities)."""
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(probs, idx, axis=1)
