"""One frozen config tree for a whole search, its presets, and its validation.

Every knob of a run lives in `ExperimentConfig`: data / model / train / cv / search / resources.
Presets are instances of it; CLI flags override leaf fields by name (`--lr 0.002`, `--folds 3`), and
the effective config is written to `RUN_DIR/config.json`. Unknown keys are an error, never ignored.
No Ray import here: the driver validates everything before Ray starts.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

# The one metric (and its mode) that ASHA, Optuna, summary.json and the report all rank by.
METRIC = "val_acc_mean"
MODE = "max"

NUM_CLASSES = 10
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Per-fold metrics each fold worker reports every epoch (fold-mean/std/per-fold in Tune and the tables).
FOLD_METRICS = ("train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1", "lr", "seconds")

# Hyperparameters the search space can sample (define_space in distributed/search.py; --space picks among
# them); each is a field of ModelConfig or TrainConfig, and any one not searched keeps the config's value.
SEARCHABLE = ("lr", "weight_decay", "dropout", "batch_size", "width", "depth", "fc_width", "label_smoothing",
              "erase_p")


# The CLIs' exit codes (DESIGN section 4), named once. A search stops early through distributed.guard
# (a full disk, a node that cannot see the run: coordinator.stop_search) or distributed.interrupt (Ctrl-C);
# run_search then raises SearchStopped carrying one of these codes.
EXIT_OK = 0
EXIT_FAILURE = 1       # a failure during the run (also: a search that ended with no best trial)
EXIT_BAD_INPUT = 2     # bad input or configuration: one line on stderr, no traceback, nothing written
EXIT_DISK_FULL = EXIT_FAILURE  # SearchStopped's code for a full disk: the run is fine and resumes once there is room
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a process ended by Ctrl-C


class ConfigError(ValueError):
    """Bad input or configuration: the CLIs print it as one line and exit with EXIT_BAD_INPUT (2)."""


class SearchStopped(RuntimeError):
    """The search stopped early, its run directory intact and resumable (say a full disk): one line, `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DataConfig:
    data_dir: str | None = None    # None: $FASHION_MNIST_DIR, then the Debian package, then the torchvision cache
    download: bool = False         # allow torchvision's downloader when no files are found
    limit_train: int | None = None  # stratified subset of the 60k training images (None: all)
    subset_seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    width: int = 32          # channels of the first block; each block doubles it
    depth: int = 2           # conv blocks, each followed by a 2x2 max-pool (28 -> 14 -> 7 -> 3)
    convs_per_block: int = 2  # conv+BN+ReLU layers inside one block
    fc_width: int = 256      # hidden units of the fully-connected head
    dropout: float = 0.4     # before the last linear layer


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15             # the budget: ASHA's max_t, and the length of the LR schedule
    lr: float = 2e-3             # peak learning rate of the one-cycle schedule (AdamW)
    weight_decay: float = 5e-4   # decoupled (AdamW), per step
    batch_size: int = 128
    label_smoothing: float = 0.0
    erase_p: float = 0.0         # probability of random erasing per image (0 disables it)
    rotate_deg: float = 10.0     # uniform random rotation in [-rotate_deg, +rotate_deg]
    flip_p: float = 0.5          # horizontal flip probability
    tta_flip: bool = False       # evaluate on the mean softmax of each image and its mirror (2x inference)
    ema_halflife: float = 0.0    # validate an EMA of the weights whose half-life is this many epochs (0: off)
    eval_batch_size: int = 1024
    torch_threads: int = 1       # intra-op threads per CPU fold worker (the folds already run in parallel)


@dataclass(frozen=True)
class CVConfig:
    folds: int = 5
    fold_seed: int = 0           # the stratified split; stored as a fingerprint and checked on resume


SCHEDULERS = ("asha", "fold-asha", "fifo")


@dataclass(frozen=True)
class SearchConfig:
    num_samples: int = 20        # trials
    search_seed: int = 0         # TPE sampler seed
    scheduler: str = "asha"      # "asha", "fold-asha" (stops only on a paired fold test) or "fifo" (all epochs)
    grace_period: int = 1        # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 3    # ASHA: keep the top 1/reduction_factor at each rung
    racing_alpha: float = 0.1    # fold-asha: stop a trial below the cutoff only if the fold test's p <= this
    space: tuple[str, ...] = SEARCHABLE  # which hyperparameters are sampled; the rest stay fixed
    widths: tuple[int, ...] = (16, 32, 64)         # the values a searched width takes
    batch_sizes: tuple[int, ...] = (64, 128, 256)  # ... a searched batch_size
    fc_widths: tuple[int, ...] = (128, 256, 512)   # ... a searched fc_width
    max_failures: int = 2        # retries of a failed trial (Tune) and of a failed worker group (Train)
    keep_checkpoints: str = "topk:5"  # fold checkpoints kept once every trial has ended: all, best or topk:N


@dataclass(frozen=True)
class ResourcesConfig:
    num_gpus: float | None = None      # GPUs the search may use; None: all visible ones (0 on a CPU box)
    gpus_per_worker: float | None = None  # None: 1/folds, so one trial fills one GPU
    cpus_per_worker: float | None = None  # None: GPU: 1; CPU-only: cpus / folds (fractional)
    max_concurrent_trials: int | None = None  # None: derived from the resources
    address: str | None = None         # None: a local Ray instance; "auto" joins a running cluster
    min_free_mb: int = 100             # the search stops cleanly (resumable) when its disk has less free


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "quick"
    preset: str = "quick"
    storage_path: str = "results"
    resume: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


SECTIONS = ("data", "model", "train", "cv", "search", "resources")
TOP_LEVEL = ("name", "preset", "storage_path", "resume")


def _preset(name, data=None, model=None, train=None, cv=None, search=None, resources=None):
    return ExperimentConfig(
        name=name, preset=name,
        data=DataConfig(**(data or {})), model=ModelConfig(**(model or {})),
        train=TrainConfig(**(train or {})), cv=CVConfig(**(cv or {})),
        search=SearchConfig(**(search or {})), resources=ResourcesConfig(**(resources or {})),
    )


PRESETS: dict[str, ExperimentConfig] = {
    # Seconds per trial: for tests. Tiny data, tiny model, 3 folds.
    "smoke": _preset(
        "smoke",
        data=dict(limit_train=600),
        model=dict(width=8, depth=2, convs_per_block=1, fc_width=32),
        train=dict(epochs=3, batch_size=64, eval_batch_size=512),
        cv=dict(folds=3),
        search=dict(num_samples=4, grace_period=1, reduction_factor=2,
                    space=("lr", "dropout", "weight_decay")),
    ),
    # `make run`: a real 5-fold search that finishes in minutes on a 2-core CPU. With warm slots (no worker
    # start per trial) the time goes to training: 20k images and 6 epochs (was 10k x 5 epochs x 6 trials:
    # ensemble test accuracy 0.883) give 0.903, in about 4.5 min of search on the 2-core VM (BENCHMARKS.md 3).
    "quick": _preset(
        "quick",
        data=dict(limit_train=20000),
        model=dict(width=16, depth=2, convs_per_block=1, fc_width=128),
        # flip TTA: +0.27 points of test accuracy for the quick model (3 seeds), +4% fold compute (BENCHMARKS.md 5)
        train=dict(epochs=6, batch_size=128, tta_flip=True),
        search=dict(num_samples=5, grace_period=1, reduction_factor=3,
                    space=("lr", "weight_decay", "dropout", "label_smoothing")),
    ),
    # For GPUs: all 60k images, 5 folds, the whole search space, tens of trials (BENCHMARKS.md section 9).
    # GPU-sized choices: a step costs ~6 ms of launches whatever its size (DESIGN.md section 6), so batches of 64
    # and width 16 bought nothing on a GPU but time (config D took as long as C with 4x fewer FLOPs).
    "full": _preset(
        "full",
        model=dict(width=64, depth=3, convs_per_block=2, fc_width=256),
        train=dict(epochs=30, batch_size=256, tta_flip=True),  # 2x inference: cheap on a GPU
        search=dict(num_samples=40, grace_period=3, reduction_factor=3, widths=(32, 48, 64),
                    batch_sizes=(128, 256, 512), fc_widths=(128, 256, 512)),
    ),
}


def choose_preset(explicit: str | None, num_gpus: float | None, gpus: float, stored: str | None = None,
                  cluster: bool = False) -> tuple[str, str]:
    """The preset of a run when --preset may be absent, and why (tune.py prints "preset P: WHY").

    explicit: --preset, None when not given; num_gpus: --num-gpus, None when not given (the search then uses
    every GPU there is); gpus: the GPUs there are: visible to this machine, or with cluster=True the most the
    joined Ray cluster can scale to; stored: the preset in config.json of the run --resume continues (None:
    not a resume). An explicit --preset wins; a resume keeps its run's preset; otherwise a search that
    trains on GPUs gets the full preset and one on the CPU the quick one.
    """
    if explicit is not None:
        return explicit, "given by --preset"
    if stored is not None:
        return stored, "the stored run's, which --resume continues"
    if num_gpus is not None and num_gpus > 0:
        return "full", f"--num-gpus {num_gpus:g}; pass --preset quick for a short run"
    if num_gpus is not None:  # --num-gpus 0 turns the GPUs off
        return "quick", "--num-gpus 0 trains on the CPU; pass --preset full for the whole search"
    if gpus > 0:
        count = f"{gpus:g} GPU{'' if gpus == 1 else 's'}"
        seen = f"the Ray cluster can scale to {count}" if cluster else f"{count} visible"
        return "full", f"{seen}; pass --preset quick for a short run"
    seen = "the Ray cluster has no GPUs" if cluster else "no GPU visible"
    return "quick", f"{seen}, training on the CPU; pass --preset full for the whole search"


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for name, value in d["search"].items():
        if isinstance(value, tuple):
            d["search"][name] = list(value)
    return d


def from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """Inverse of to_dict; unknown keys raise ConfigError."""
    unknown = set(d) - set(SECTIONS) - set(TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}")
    base = ExperimentConfig()
    kwargs = {k: d[k] for k in TOP_LEVEL if k in d}
    for section in SECTIONS:
        cls = type(getattr(base, section))
        values = dict(d.get(section, {}))
        bad = set(values) - {f.name for f in fields(cls)}
        if bad:
            raise ConfigError(f"unknown keys {sorted(bad)} in config section '{section}'")
        for f in fields(cls):  # JSON lists back into the tuples the config holds
            if f.name in values and str(f.type).startswith("tuple"):
                values[f.name] = tuple(values[f.name])
        kwargs[section] = cls(**values)
    return ExperimentConfig(**kwargs)


def leaf_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every overridable leaf: flag name -> (section, field). Leaf names are unique across sections."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    base = ExperimentConfig()
    for section in SECTIONS:
        for f in fields(getattr(base, section)):
            assert f.name not in out, f"duplicate leaf name {f.name}"
            out[f.name] = (section, f)
    return out


def override(cfg: ExperimentConfig, **values: Any) -> ExperimentConfig:
    """Replace leaf fields by name: override(cfg, lr=1e-3, folds=3, name="x")."""
    leaves = leaf_fields()
    top = {k: v for k, v in values.items() if k in TOP_LEVEL}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key in TOP_LEVEL:
            continue
        if key not in leaves:
            raise ConfigError(f"unknown config field '{key}'")
        section, _ = leaves[key]
        sections.setdefault(section, {})[key] = value
    cfg = replace(cfg, **top)
    for section, vals in sections.items():
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **vals)})
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """Checks that need no data and no Ray. Raises ConfigError naming the bad value."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown preset '{cfg.preset}': choose one of {', '.join(PRESETS)}")
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"bad run name '{cfg.name}': use letters, digits, '-' or '_'")
    if cfg.cv.folds < 2:
        raise ConfigError(f"--folds {cfg.cv.folds}: cross-validation needs at least 2 folds")
    t = cfg.train
    for flag, value in (("epochs", t.epochs), ("batch-size", t.batch_size),
                        ("num-samples", cfg.search.num_samples), ("eval-batch-size", t.eval_batch_size),
                        ("torch-threads", t.torch_threads)):
        if value < 1:
            raise ConfigError(f"--{flag} {value}: must be a positive integer")
    if not t.lr > 0:
        raise ConfigError(f"--lr {t.lr}: must be > 0")
    if t.weight_decay < 0:
        raise ConfigError(f"--weight-decay {t.weight_decay}: must be >= 0")
    if not 0 <= t.ema_halflife <= t.epochs:
        raise ConfigError(f"--ema-halflife {t.ema_halflife}: must be between 0 (off) and --epochs ({t.epochs})")
    for flag, value in (("dropout", cfg.model.dropout), ("label-smoothing", t.label_smoothing),
                        ("erase-p", t.erase_p), ("flip-p", t.flip_p)):
        if not 0 <= value < 1 and not (flag in ("erase-p", "flip-p") and value == 1):
            raise ConfigError(f"--{flag} {value}: must be in [0, 1)")
    m = cfg.model
    if not 1 <= m.depth <= 3:
        raise ConfigError(f"--depth {m.depth}: must be 1, 2 or 3 (28x28 images allow three 2x2 pools)")
    for flag, value in (("width", m.width), ("convs-per-block", m.convs_per_block), ("fc-width", m.fc_width)):
        if value < 1:
            raise ConfigError(f"--{flag} {value}: must be a positive integer")
    s = cfg.search
    if s.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler {s.scheduler}: choose 'asha', 'fold-asha' or 'fifo'")
    if not 0 < s.racing_alpha <= 1:
        raise ConfigError(f"--racing-alpha {s.racing_alpha}: must be in (0, 1]")
    if s.grace_period < 1 or s.grace_period > t.epochs:
        raise ConfigError(f"--grace-period {s.grace_period}: must be between 1 and --epochs ({t.epochs})")
    if s.reduction_factor < 2:
        raise ConfigError(f"--reduction-factor {s.reduction_factor}: must be at least 2")
    bad = [p for p in s.space if p not in SEARCHABLE]
    if bad:
        raise ConfigError(f"--space {','.join(bad)}: not searchable; choose from {', '.join(SEARCHABLE)}")
    for flag, choices, least in (("widths", s.widths, 1), ("batch-sizes", s.batch_sizes, 2),
                                 ("fc-widths", s.fc_widths, 1)):
        if not choices or min(choices) < least or len(set(choices)) != len(choices):
            raise ConfigError(f"--{flag} {','.join(map(str, choices))}: give one or more different integers, "
                              f"each at least {least}")
    if s.max_failures < 0:
        raise ConfigError(f"--max-failures {s.max_failures}: must be >= 0")
    keep_checkpoints_count(s.keep_checkpoints)
    lim = cfg.data.limit_train
    if lim is not None and lim < cfg.cv.folds * NUM_CLASSES:
        raise ConfigError(
            f"--limit-train {lim}: must be at least folds x classes = {cfg.cv.folds * NUM_CLASSES}")
    r = cfg.resources
    if r.num_gpus is not None and r.num_gpus < 0:
        raise ConfigError(f"--num-gpus {r.num_gpus}: must be >= 0")
    if r.gpus_per_worker is not None and not 0 < r.gpus_per_worker <= 1:
        raise ConfigError(f"--gpus-per-worker {r.gpus_per_worker}: must be in (0, 1]")
    if r.cpus_per_worker is not None and not r.cpus_per_worker > 0:
        raise ConfigError(f"--cpus-per-worker {r.cpus_per_worker}: must be > 0")
    if r.max_concurrent_trials is not None and r.max_concurrent_trials < 1:
        raise ConfigError(f"--max-concurrent-trials {r.max_concurrent_trials}: must be >= 1")
    if r.min_free_mb < 0:
        raise ConfigError(f"--min-free-mb {r.min_free_mb}: must be >= 0")
    if r.address and "://" not in cfg.storage_path and not os.path.isabs(cfg.storage_path):
        # `ray job submit --working-dir .` runs the driver in a temporary copy of the checkout on the head:
        # a relative path (the default `results`) would put the run there, out of every worker node's sight
        raise ConfigError(f"--address {r.address} with --storage-path {cfg.storage_path}: a search on a cluster "
                          f"needs a directory every node mounts, as an absolute path (cluster.yaml mounts EFS "
                          f"at /mnt/shared: --storage-path /mnt/shared/results), or a bucket (s3://BUCKET/PREFIX)")


def keep_checkpoints_count(policy: str) -> int | None:
    """How many ranked trials --keep-checkpoints keeps (distributed.retention): None for all, 1 for best, N for
    topk:N. Raises ConfigError naming the value."""
    if policy == "all":
        return None
    if policy == "best":
        return 1
    kind, _, n = policy.partition(":")
    if kind == "topk" and n.isdigit() and int(n) >= 1:
        return int(n)
    raise ConfigError(f"--keep-checkpoints {policy}: choose all, best or topk:N with N a positive integer "
                      f"(e.g. topk:5)")


def apply_hparams(cfg: ExperimentConfig, hparams: dict) -> tuple[ModelConfig, TrainConfig]:
    """The model and train configs of one trial: the experiment's, with the sampled values replacing fields."""
    model_keys = {k: v for k, v in hparams.items() if hasattr(cfg.model, k)}
    train_keys = {k: v for k, v in hparams.items() if hasattr(cfg.train, k)}
    unknown = set(hparams) - set(model_keys) - set(train_keys)
    if unknown:
        raise ConfigError(f"hyperparameters {', '.join(sorted(unknown))}: not fields of ModelConfig or "
                          f"TrainConfig (the searchable ones are {', '.join(SEARCHABLE)})")
    return replace(cfg.model, **model_keys), replace(cfg.train, **train_keys)


def save(cfg: ExperimentConfig, path) -> None:
    from distributed.files import write_json_atomic
    write_json_atomic(path, to_dict(cfg))


def load(path) -> ExperimentConfig:
    with open(path) as f:
        return from_dict(json.load(f))
