"""CLIP encoders: `ClipEncoder` (one process, GPU when present) and `RayImageEncoder` (one actor per GPU over
shards of an object-store copy of the uint8 images) share one interface, `encode_text` / `encode_images` /
`logit_scale` (the `Encoder` protocol), so every function of clip_zeroshot.py also accepts a test double.

torch and ray are imported inside functions: `analysis` must stay cheap to import.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from analysis.clip_weights import Weights, build_model, open_clip_module
from distributed.config import ConfigError


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
