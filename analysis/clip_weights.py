"""CLIP architectures and weights: `check_model` and `resolve_weights` turn --model/--pretrained into a local
checkpoint file (or seeded random init) before anything heavy happens, so nothing waits on an unreachable
network; `build_model` makes the open_clip model from them.

open_clip is imported inside functions: `analysis` must stay cheap to import.
"""
from __future__ import annotations

import difflib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from distributed.config import ConfigError

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
