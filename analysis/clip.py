"""CLIP on Fashion-MNIST: zero-shot classification, text-to-image retrieval and a linear probe.

Pure functions over arrays and files; `experiments/clip_zeroshot.py` wires them together and
`experiments/report.py` calls `report_section`. The pieces, in data-flow order:

- weights: `check_model` and `resolve_weights` turn --model/--pretrained into a local checkpoint file
  (or seeded random init) before anything heavy happens; nothing waits on an unreachable network.
- encoders: `ClipEncoder` (one process, GPU when present) and `RayImageEncoder` (one actor per GPU over
  shards of an object-store copy of the uint8 images) share one interface, `encode_text` /
  `encode_images` / `logit_scale`, so every function below also accepts a test double.
- zero-shot: `class_text_embeddings` (prompt-template x class-name-variant ensemble), `zero_shot_predict`,
  `classification_metrics`, `run_zero_shot` (all of it for one encoder and one image set).
- retrieval: `retrieve`, `query_class`; linear probe: `probe_split`, `linear_probe`.
- figures (matplotlib Figure objects, no pyplot state) and `report_section` (an HTML fragment).

open_clip and matplotlib are imported inside functions: `analysis` must stay cheap to import.
"""
from __future__ import annotations

import base64
import difflib
import html
import io
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import urlparse

import numpy as np

from distributed.config import CLASS_NAMES, NUM_CLASSES, ConfigError

# --- prompts ---------------------------------------------------------------------------------------

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

# The seed project's four text-to-image queries.
DEFAULT_QUERIES = ("a photo of a bag", "a photo of a dress", "a photo of a sneaker", "a photo of a t-shirt")

# --- architectures and weights -----------------------------------------------------------------------

CONFIG_DIR = Path(__file__).parent / "clip_configs"  # extra open_clip architectures kept in this repo
TEST_MODEL = "tiny-test-vit"  # 2-layer ViT + 2-layer text tower, random init: the whole pipeline in seconds
AUTO, RANDOM = "auto", "random"
# What --pretrained auto means per architecture; others get their first listed tag (OpenAI's where it exists).
DEFAULT_TAGS = {"ViT-B-32": "laion2b_s34b_b79k"}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
PROBE_TIMEOUT_S = 3.0  # seconds the weights server gets to answer before we call it unreachable


def open_clip_module():
    """open_clip, with this repo's architectures registered (every process, Ray actors too, calls this)."""
    import open_clip
    if TEST_MODEL not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def check_model(name: str) -> None:
    models = open_clip_module().list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"--model {name}: unknown open_clip architecture; {hint}"
                          f"python -c 'import open_clip; print(open_clip.list_models())' lists them")


@dataclass(frozen=True)
class Weights:
    """Where a model's weights come from, resolved to local files before any model is built."""
    model: str
    pretrained: str             # as recorded in metrics.json: a tag, a checkpoint path, or "random"
    checkpoint: str | None      # local file to load; None: seeded random init
    quick_gelu: bool = False    # OpenAI's weights were trained with QuickGELU; the plain configs use GELU
    preprocess: dict = field(default_factory=dict)  # the tag's mean/std/interpolation/resize_mode


def url_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether an HTTP server answers at url's host within `timeout` (any status counts, even 404).

    A bare TCP connect is not enough: proxies and sandboxes accept connections they never serve. The request
    runs in a thread because name resolution has no timeout of its own.
    """
    import urllib.error
    import urllib.request
    parts = urlparse(url)
    result: list[bool] = []

    def head():
        try:
            urllib.request.urlopen(urllib.request.Request(f"{parts.scheme}://{parts.netloc}/", method="HEAD"),
                                   timeout=timeout).close()
            result.append(True)
        except urllib.error.HTTPError:
            result.append(True)
        except (OSError, ValueError):  # URLError, timeouts, TLS failures, malformed URLs
            result.append(False)

    thread = threading.Thread(target=head, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _hf_location(pcfg: dict) -> tuple[str, list[str]]:
    """(repo id, file names in open_clip's order of preference) of a tag hosted on the Hugging Face hub."""
    repo, filename = os.path.split(pcfg["hf_hub"])
    filename = filename or "open_clip_pytorch_model.bin"
    safe = "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin" else \
        re.sub(r"\.(bin|pth)$", ".safetensors", filename)
    return repo, list(dict.fromkeys([safe, filename]))


def _cached_checkpoint(pcfg: dict, cache_dir: str | None) -> tuple[str | None, str]:
    """(path of the tag's weights in the local cache or None, the cache location to name in messages)."""
    if pcfg.get("hf_hub"):
        from huggingface_hub import constants, try_to_load_from_cache
        repo, names = _hf_location(pcfg)
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(hit, str):
                return hit, cache_dir or constants.HF_HUB_CACHE
        return None, cache_dir or constants.HF_HUB_CACHE
    cache = cache_dir or os.path.expanduser("~/.cache/clip")  # open_clip's cache for URL downloads
    path = os.path.join(cache, os.path.basename(pcfg["url"]))
    return (path if os.path.isfile(path) else None), cache


def resolve_weights(model: str, pretrained: str = AUTO, cache_dir: str | None = None,
                    probe_timeout: float = PROBE_TIMEOUT_S) -> Weights:
    """--pretrained (a tag, a checkpoint file, "random", or "auto") -> local files, downloading a tag only
    after its server answered a quick request (url_reachable). Raises ConfigError with one line saying how to supply the weights."""
    oc = open_clip_module()
    tags = oc.list_pretrained_tags_by_model(model)
    if pretrained == AUTO:
        pretrained = DEFAULT_TAGS.get(model) or (tags[0] if tags else RANDOM)
    if pretrained in (RANDOM, "none"):
        return Weights(model, RANDOM, None)
    if os.path.isfile(pretrained):
        return Weights(model, pretrained, pretrained)
    if os.path.isdir(pretrained):
        raise ConfigError(f"--pretrained {pretrained}: is a directory; pass the checkpoint file in it "
                          f"(e.g. open_clip_model.safetensors or open_clip_pytorch_model.bin)")
    if os.sep in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES):
        raise ConfigError(f"--pretrained {pretrained}: no such checkpoint file")
    pcfg = oc.get_pretrained_cfg(model, pretrained)
    if not pcfg:
        known = (f"its tags include {', '.join(tags[:6])}" + (f" and {len(tags) - 6} more" if len(tags) > 6 else "")
                 if tags else "it has no published weights")
        raise ConfigError(f"--pretrained {pretrained}: neither a checkpoint file nor a pretrained tag of {model} "
                          f"({known}); pass a tag, a checkpoint path, or 'random'")
    weights = dict(model=model, pretrained=pretrained, quick_gelu=bool(pcfg.get("quick_gelu", False)),
                   preprocess={k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg})
    cached, cache = _cached_checkpoint(pcfg, cache_dir)
    if cached:
        return Weights(checkpoint=cached, **weights)

    if pcfg.get("hf_hub"):
        from huggingface_hub import constants
        repo, names = _hf_location(pcfg)
        server, source, offline = constants.ENDPOINT, f"{names[-1]} from {constants.ENDPOINT}/{repo}", \
            constants.HF_HUB_OFFLINE
    else:
        server, source, offline = pcfg["url"], pcfg["url"], False
    how = (f"download {source} where there is internet and pass --pretrained PATH_TO_THAT_FILE, "
           f"or pass --cache-dir (or set HF_HOME) to a cache that holds it")
    if offline or not url_reachable(server, timeout=probe_timeout):
        host = urlparse(server).netloc
        why = "HF_HUB_OFFLINE is set" if offline else f"{host} cannot be reached"
        raise ConfigError(f"--pretrained {pretrained}: {model} weights are not in the cache {cache} and {why}; {how}")
    print(f"downloading {model} weights '{pretrained}' into {cache} ...", flush=True)
    try:
        path = oc.download_pretrained(pcfg, cache_dir=cache_dir)
    except Exception as e:  # hub and urllib errors come in many types
        raise ConfigError(f"--pretrained {pretrained}: download failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); {how}") from None
    return Weights(checkpoint=path, **weights)


def build_model(weights: Weights, state_dict: dict | None = None):
    """The open_clip model in eval mode on the CPU. Random init is seeded, so "random" runs repeat exactly.
    With `state_dict` (Ray actors: the driver's weights) the checkpoint file is not read: it may not exist on
    the actor's node."""
    import torch
    oc = open_clip_module()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = oc.create_model(weights.model, pretrained=weights.checkpoint if state_dict is None else None,
                                    force_quick_gelu=weights.quick_gelu, force_preprocess_cfg=weights.preprocess or None)
    except Exception as e:  # torch.load / load_state_dict raise many types for a corrupt or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        first = first if len(first) <= 160 else first[:160] + "..."
        raise ConfigError(f"--pretrained {weights.pretrained}: cannot load it into {weights.model} "
                          f"({type(e).__name__}: {first}); pass a checkpoint of this architecture") from None
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.eval()


# --- encoders ----------------------------------------------------------------------------------------

class Encoder(Protocol):
    logit_scale: float

    def encode_text(self, texts: list[str]) -> np.ndarray: ...          # (n, D), rows L2-normalised

    def encode_images(self, images: np.ndarray, progress=None) -> np.ndarray: ...  # uint8 (N,28,28) -> (N, D)


def preprocess(images, cfg: dict):
    """uint8 (B, 28, 28) tensor on any device -> the model's input (B, 3, S, S), normalised.

    Batched equivalent of open_clip's eval transform (PIL 'L'->'RGB', Resize(S, antialias), CenterCrop(S),
    ToTensor, Normalize); for square inputs every resize_mode reduces to one resize. PIL resizes in two
    separable passes and rounds to uint8 after each, so this does too: the result matches PIL within one
    grey level (tests/test_clip.py checks it).
    """
    import torch
    import torch.nn.functional as F
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    if not isinstance(cfg["size"], int) and len(set(cfg["size"])) != 1:
        raise ConfigError(f"non-square model input {cfg['size']} is not supported")
    if cfg["interpolation"] not in ("bicubic", "bilinear"):
        raise ConfigError(f"interpolation '{cfg['interpolation']}' is not supported (bicubic, bilinear)")

    def quantise(x):
        return x.mul(255).round_().clamp_(0, 255).div_(255)

    x = images.float().div(255).unsqueeze(1)
    for shape in ((x.shape[-2], size), (size, size)):  # width pass, then height pass, like PIL
        x = quantise(F.interpolate(x, size=shape, mode=cfg["interpolation"], align_corners=False, antialias=True))
    mean = torch.tensor(cfg["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


class ClipEncoder:
    """An open_clip model and its tokenizer in this process, on `device`."""

    def __init__(self, model, tokenizer, device="cpu", batch_size: int = 256, weights: Weights | None = None):
        import torch
        self.weights = weights  # what RayImageEncoder's actors rebuild the architecture from
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.preprocess_cfg = dict(model.visual.preprocess_cfg)
        self.logit_scale = float(model.logit_scale.detach().exp())

    def _autocast(self):
        import torch  # fp16 matmuls on the GPU, as open_clip's own evaluation does; exact fp32 on the CPU
        return torch.autocast(self.device.type, enabled=self.device.type == "cuda")

    def encode_text(self, texts) -> np.ndarray:
        import torch
        tokens = self.tokenizer(list(texts))
        out = []
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(tokens), self.batch_size):
                out.append(self.model.encode_text(tokens[i:i + self.batch_size].to(self.device),
                                                  normalize=True).float().cpu())
        return torch.cat(out).numpy()

    def encode_images(self, images: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        import torch
        # The whole uint8 set is small (60k images = 47 MB): one copy to the device, then preprocess per batch.
        x = torch.tensor(np.asarray(images, dtype=np.uint8), device=self.device)
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                batch = preprocess(x[i:i + self.batch_size], self.preprocess_cfg)  # fp32: keeps it PIL-exact
                with self._autocast():
                    out.append(self.model.encode_image(batch, normalize=True).float().cpu())
                if progress:
                    progress(min(i + self.batch_size, len(x)), len(x))
        return torch.cat(out).numpy()


def local_device(num_gpus: int) -> str:
    """Where this process's own work goes (the text encoder; all of it with one GPU): CUDA only when GPUs are
    asked for and CUDA is usable here. A cluster's CPU head asked for N > 1 GPUs has none: those are the actors'."""
    import torch
    return "cuda" if num_gpus >= 1 and torch.cuda.is_available() else "cpu"


def load_encoder(weights: Weights, device="cpu", batch_size: int = 256) -> ClipEncoder:
    model = build_model(weights)
    try:
        tokenizer = open_clip_module().get_tokenizer(weights.model)
    except Exception as e:  # e.g. a Hugging Face tokenizer that is neither cached nor reachable
        raise ConfigError(f"--model {weights.model}: cannot load its tokenizer ({type(e).__name__}: {e})") from None
    return ClipEncoder(model, tokenizer, device, batch_size, weights)


class _ShardEncoder:
    """Ray actor: builds the model from the driver's state dict (random init would differ per actor),
    then embeds slices of the object-store image array it is handed."""

    def __init__(self, weights: Weights, state_dict: dict, batch_size: int):
        import ray
        import torch
        # A GPU Ray assigned but CUDA cannot see (a test instance that declares fake GPUs) embeds on the CPU;
        # device() says so, and the CLI prints it.
        on_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        if not on_gpu:
            torch.set_num_threads(1)  # CPU actors share the node's cores with each other
        self.encoder = ClipEncoder(build_model(weights, state_dict), None, "cuda" if on_gpu else "cpu", batch_size)

    def encode(self, images: np.ndarray, start: int, stop: int) -> np.ndarray:
        return self.encoder.encode_images(images[start:stop])

    def device(self) -> str:
        import torch
        d = self.encoder.device
        return torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu"


class RayImageEncoder:
    """`ClipEncoder`'s interface with image embedding spread over Ray actors, one per GPU: the uint8 images go
    into the object store once and each actor embeds one contiguous shard. Text stays on the local encoder.
    `gpus_per_actor=0` runs the same code on CPU actors (tests). Use as a context manager: exit kills the actors."""

    def __init__(self, local: ClipEncoder, num_actors: int, gpus_per_actor: float = 1.0):
        import ray
        self.local, self.logit_scale = local, local.logit_scale
        state = ray.put({k: v.detach().cpu() for k, v in local.model.state_dict().items()})
        actor = ray.remote(_ShardEncoder).options(num_gpus=gpus_per_actor, num_cpus=1)
        self.actors = [actor.remote(local.weights, state, local.batch_size) for _ in range(num_actors)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        import ray
        for a in self.actors:
            ray.kill(a)

    def encode_text(self, texts) -> np.ndarray:
        return self.local.encode_text(texts)

    def devices(self) -> list[str]:
        """Each actor's device ("NVIDIA A10G", or "cpu"); waits until the actors have started."""
        import ray
        return ray.get([a.device.remote() for a in self.actors])

    def encode_images(self, images: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        import ray
        ref = ray.put(np.ascontiguousarray(images, dtype=np.uint8))
        bounds = np.linspace(0, len(images), len(self.actors) + 1).astype(int)
        futures = [a.encode.remote(ref, int(lo), int(hi)) for a, lo, hi in zip(self.actors, bounds[:-1], bounds[1:])]
        size = {f: int(hi - lo) for f, lo, hi in zip(futures, bounds[:-1], bounds[1:])}
        pending, done = list(futures), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done += size[ready[0]]
            if progress:
                progress(done, len(images))
        return np.concatenate(ray.get(futures))


# --- zero-shot classification ------------------------------------------------------------------------

def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_prompts(class_variants: dict[str, tuple[str, ...]], templates=TEMPLATES) -> list[list[str]]:
    return [[t.format(v) for v in variants for t in templates] for variants in class_variants.values()]


def class_text_embeddings(encoder: Encoder, class_variants: dict[str, tuple[str, ...]] = CLASS_VARIANTS,
                          templates=TEMPLATES) -> np.ndarray:
    """(C, D): per class, the normalised mean of its normalised prompt embeddings (templates x variants)."""
    prompts = class_prompts(class_variants, templates)
    flat = _normalise(encoder.encode_text([p for ps in prompts for p in ps]))
    bounds = np.cumsum([0] + [len(ps) for ps in prompts])
    return _normalise(np.stack([flat[lo:hi].mean(0) for lo, hi in zip(bounds[:-1], bounds[1:])]))


def zero_shot_predict(image_emb: np.ndarray, class_emb: np.ndarray, logit_scale: float = 100.0):
    """(predictions (N,), probabilities (N, C)): cosine similarity scaled by the model's temperature, softmax."""
    logits = logit_scale * (_normalise(image_emb) @ _normalise(class_emb).T)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return logits.argmax(axis=1), probs.astype(np.float32)


def most_confused(cm: np.ndarray, class_names=CLASS_NAMES, top: int = 5) -> list[dict]:
    """The largest off-diagonal cells: [{true, pred, count}], ties in (true, pred) order."""
    cells = [(-int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    return [{"true": class_names[i], "pred": class_names[j], "count": -c} for c, i, j in sorted(cells)[:top]]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names=CLASS_NAMES) -> dict:
    """acc, macro_f1, per_class {name: precision, recall, f1, support}, confusion (rows: true), most_confused."""
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
        "most_confused": most_confused(cm, class_names),
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
    image_emb = _normalise(encoder.encode_images(images, progress))
    rate = len(images) / max(time.perf_counter() - start, 1e-9)
    class_emb = class_text_embeddings(encoder, class_variants, templates)
    pred, probs = zero_shot_predict(image_emb, class_emb, encoder.logit_scale)
    return ZeroShot(image_emb, class_emb, pred, probs,
                    classification_metrics(labels, pred, tuple(class_variants)), rate)


# --- text-to-image retrieval -------------------------------------------------------------------------

def retrieve(query_emb: np.ndarray, image_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine scores) of the k images most similar to one query embedding, best first."""
    scores = _normalise(image_emb) @ _normalise(np.asarray(query_emb).reshape(-1))
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


# --- linear probe ------------------------------------------------------------------------------------

def probe_split(train_y: np.ndarray, run_dir: Path | None = None, limit: int = 6000, folds: int = 5,
                seed: int = 0) -> dict:
    """The training positions and folds of the linear probe: the CNN run's own (RUN_DIR/config.json, checked
    against its summary.json fingerprint) when run_dir is given, else a stratified subset of `limit`."""
    from distributed.config import load
    from distributed.data import stratified_subset
    from distributed.folds import make_folds, split_fingerprint
    if run_dir is not None:
        cfg = load(Path(run_dir) / "config.json")
        limit, subset_seed, folds, seed = cfg.data.limit_train, cfg.data.subset_seed, cfg.cv.folds, cfg.cv.fold_seed
        source = f"{run_dir} ({folds} folds, fold seed {seed})"
    else:
        subset_seed, source = 0, f"stratified {folds}-fold, seed {seed}"
    positions = stratified_subset(train_y, limit, subset_seed)
    held_out = make_folds(train_y[positions], folds, seed)
    fp = split_fingerprint(held_out, positions)
    summary = Path(run_dir) / "summary.json" if run_dir is not None else None
    if summary is not None and summary.exists():
        stored = json.loads(summary.read_text()).get("split_fingerprint")
        if stored and stored != fp:
            raise ConfigError(f"--run-dir {run_dir}: its split fingerprint {stored} differs from {fp} recomputed "
                              f"from config.json: the data or the folds changed")
    return {"positions": positions, "folds": held_out, "source": source, "split_fingerprint": fp}


def linear_probe(features: np.ndarray, labels: np.ndarray, folds: list[np.ndarray],
                 test_features: np.ndarray | None = None, test_labels: np.ndarray | None = None,
                 C: float = 1.0) -> dict:
    """Logistic regression on frozen embeddings, cross-validated on `folds` (held-out positions into
    `features`); with test data, also refit on all of `features` and score the test set.

    C is fixed, not tuned: tuning it would need nested CV inside each fold, so the probe is a lower bound
    on what the features support.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(x, y):
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000)).fit(x, y)

    labels = np.asarray(labels)
    accs, f1s = [], []
    for held_out in folds:
        train = np.setdiff1d(np.arange(len(labels)), held_out)
        pred = fit(features[train], labels[train]).predict(features[held_out])
        accs.append(float(accuracy_score(labels[held_out], pred)))
        f1s.append(float(f1_score(labels[held_out], pred, average="macro", labels=np.arange(NUM_CLASSES),
                                  zero_division=0)))
    out = {"acc": float(np.mean(accs)), "acc_std": float(np.std(accs)), "macro_f1": float(np.mean(f1s)),
           "acc_per_fold": accs, "macro_f1_per_fold": f1s, "n_train": int(len(labels)), "folds": len(folds), "C": C}
    if test_features is not None:
        pred = fit(features, labels).predict(test_features)
        m = classification_metrics(test_labels, pred)
        out.update(test_acc=m["acc"], test_macro_f1=m["macro_f1"],
                   test_per_class_f1={n: v["f1"] for n, v in m["per_class"].items()})
    return out


# --- figures -----------------------------------------------------------------------------------------

def figure_png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def confusion_figure(cm, class_names=CLASS_NAMES, title: str = "CLIP zero-shot"):
    """Counts in the cells, colour by row share (recall), so rare rows are as readable as common ones."""
    from matplotlib.figure import Figure
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cm)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(cm)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: accuracy {np.trace(cm) / max(cm.sum(), 1):.3f} (n={cm.sum()})")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    return fig


def retrieval_figure(images: np.ndarray, labels: np.ndarray, scores: np.ndarray, query: str,
                     class_names=CLASS_NAMES, target: int | None = None, ncols: int = 8):
    """The top-k images of one query, best first, each titled with its true class and similarity;
    green/red titles when the query names a class."""
    from matplotlib.figure import Figure
    nrows = max(1, -(-len(images) // ncols))
    fig = Figure(figsize=(1.3 * ncols, 1.55 * nrows + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, y, s in zip(axes.flat, images, labels, scores):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        colour = "black" if target is None else ("green" if y == target else "red")
        ax.set_title(f"{class_names[y]}\n{s:.3f}", fontsize=7, color=colour)
    hits = "" if target is None else f"  (precision@{len(labels)} {np.mean(np.asarray(labels) == target):.2f})"
    fig.suptitle(f'"{query}"{hits}', fontsize=10)
    return fig


def per_class_f1_figure(series: dict[str, dict[str, float]], class_names=CLASS_NAMES):
    """Grouped bars: one group per class, one bar per model (e.g. CNN, CLIP zero-shot, CLIP linear probe)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.8))
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(class_names))
    for k, (name, f1) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [f1.get(c, np.nan) for c in class_names], width, label=name)
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("per-class F1")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    return fig


# --- report ------------------------------------------------------------------------------------------

def _figure(png: bytes, alt: str, caption: str) -> str:
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


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
    e = html.escape
    cnn = dict(_cnn_overall(cnn_per_class) if cnn_per_class else {}, **(cnn_summary or {}))
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731

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
    table = "".join(f'<tr><td class="l">{e(str(a))}</td><td>{e(str(b))}</td><td>{e(str(c))}</td><td>{fmt(d)}</td>'
                    f"<td>{fmt(f)}</td></tr>" for a, b, c, d, f in rows)
    subset = f"{m['n_images']} {m['split']} images" + (" (a class-stratified subset)" if m.get("limit") else "")

    parts = [f'<div class="clip"><h3>CLIP: {e(m["model"])}, weights {e(m["pretrained"])}</h3>']
    if m["pretrained"] == RANDOM:
        parts.append("<p><b>Random weights</b>: these numbers test the pipeline, they say nothing about CLIP.</p>")
    parts.append('<table><thead><tr><th class="l">model</th><th>split</th><th>images</th><th>accuracy</th>'
                 f"<th>macro-F1</th></tr></thead><tbody>{table}</tbody></table>")
    if lp:
        parts.append(f"<p>Linear probe: logistic regression (C={lp['C']}) on frozen image embeddings, folds "
                     f"from {e(lp['source'])}; accuracy per fold "
                     f"{', '.join(f'{a:.3f}' for a in lp['acc_per_fold'])}. The gap between probe and zero-shot "
                     f"is what the text head loses; the gap between probe and CNN is the features.</p>")
    parts.append(_figure((clip_dir / files["confusion_matrix"]).read_bytes(), "CLIP zero-shot confusion matrix",
                         f"Zero-shot confusion matrix on {subset}: rows are the true classes, cells count images, "
                         f"colour is the share of the true class (recall)."))
    series = {}
    if cnn_per_class:
        series["CNN"] = {n: r["f1"] for n, r in cnn_per_class.items()}
    series["CLIP zero-shot"] = {n: r["f1"] for n, r in m["per_class"].items()}
    if lp and "test_per_class_f1" in lp:
        series["CLIP linear probe"] = lp["test_per_class_f1"]
    parts.append(_figure(figure_png(per_class_f1_figure(series)), "per-class F1",
                         f"Per-class F1: {', '.join(series)}. CLIP is scored on {subset}"
                         + (", the CNN on the run's evaluation of the same split." if cnn_per_class else ".")))
    confused = "".join(f"<li>{e(c['true'])} taken for {e(c['pred'])}: {c['count']}</li>" for c in m["most_confused"])
    parts.append(f"<h4>Most confused</h4><ul>{confused}</ul><h4>Text-to-image retrieval</h4>")
    for r in m["retrieval"]:
        hits = "" if r["class"] is None else \
            f"; precision@{r['top_k']} {r['precision_at_k']:.2f} (green: {r['class']}, red: other classes)"
        parts.append(_figure((clip_dir / r["file"]).read_bytes(), f"top {r['top_k']} for {r['query']}",
                             f"The {r['top_k']} of the {subset} closest to \"{r['query']}\", best first, with their "
                             f"true class and cosine similarity{hits}."))
    n_prompts = sum(len(v) for v in m["prompts"]["class_variants"].values()) * len(m["prompts"]["templates"])
    parts.append(f"<p>Class embeddings: {n_prompts} prompts ({len(m['prompts']['templates'])} templates x name "
                 f"variants per class), averaged per class. Image throughput {m['throughput_img_s']:.0f} images/s "
                 f"on {e(m['device'])}.</p></div>")
    return {"html": "\n".join(parts),
            "metrics": {k: m[k] for k in ("model", "pretrained", "acc", "macro_f1", "split", "n_images")}}
