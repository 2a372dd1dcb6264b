"""The words of `tune.py --help`: one line per flag, the flag's value in the quick and full presets (what a
run uses, computed from PRESETS), its choices, the groups a newcomer reads top down, and a formatter that
wraps only at spaces (argparse's default breaks long words and hyphenated flags: "bat ch_size").

distributed.cli builds the flags from the config tree and takes their help text from here."""
from __future__ import annotations

import argparse
import textwrap

from distributed.config import PRESETS, SCHEDULERS, SEARCHABLE

SHOWN_PRESETS = ("quick", "full")  # smoke is for tests

# (group key, title, flags): the order --help prints them in; the common group holds what most runs set.
GROUPS = (
    ("common", "common options",
     ("preset", "num_gpus", "name", "resume", "storage_path", "epochs", "num_samples", "address")),
    ("search", "search", ("scheduler", "space", "widths", "batch_sizes", "fc_widths", "search_seed", "grace_period",
                          "reduction_factor", "racing_alpha")),
    ("model", "model and training",
     ("folds", "fold_seed", "width", "depth", "convs_per_block", "fc_width", "dropout", "lr", "weight_decay",
      "batch_size", "label_smoothing", "erase_p", "rotate_deg", "flip_p", "tta_flip", "ema_halflife")),
    ("data", "data", ("data_dir", "download", "limit_train", "subset_seed")),
    ("resources", "resources", ("gpus_per_worker", "cpus_per_worker", "max_concurrent_trials", "torch_threads",
                                "eval_batch_size")),
    ("advanced", "advanced", ("keep_checkpoints", "max_failures", "min_free_mb")),
)

# What each flag does, in words (the config fields' comments in distributed/config.py say the same).
HELP = {
    "preset": "the size of the search: smoke (seconds, for tests), quick (minutes on a CPU) or full (for GPUs); "
              "default: full when the search will train on GPUs (--num-gpus above 0, GPUs visible, or with --address "
              "a cluster that can scale to GPUs), else quick; with --resume, the stored run's",
    "name": "run name: results go to STORAGE_PATH/NAME (default: PRESET-YYYYmmdd-HHMMSS, a new run each time)",
    "storage_path": "the folder that holds the run directories, or a bucket: s3://BUCKET/PREFIX, "
                    "gs://BUCKET/PREFIX (default: results)",
    "resume": "continue the run --name with the settings it was started with",
    "data_dir": "the folder with the four Fashion-MNIST .gz files; auto: $FASHION_MNIST_DIR, then the Debian "
                "package dataset-fashion-mnist, then torchvision's cache",
    "download": "let torchvision download Fashion-MNIST when no files are found",
    "limit_train": "train on a stratified subset of this many of the 60000 training images",
    "subset_seed": "the seed of that subset",
    "width": "channels of the first conv block; each further block doubles them",
    "depth": "conv blocks, each followed by a 2x2 max-pool: 1, 2 or 3",
    "convs_per_block": "conv + batch-norm + ReLU layers in each block",
    "fc_width": "hidden units of the fully-connected head",
    "dropout": "dropout before the last layer, in [0, 1)",
    "epochs": "epochs per trial: the budget ASHA stops trials within, and the length of the learning-rate "
              "schedule",
    "lr": "peak learning rate of the one-cycle schedule (AdamW)",
    "weight_decay": "AdamW's decoupled weight decay",
    "batch_size": "training images per step",
    "label_smoothing": "label smoothing of the loss, in [0, 1)",
    "erase_p": "the chance that random erasing hides a patch of an image (0 turns it off)",
    "rotate_deg": "random rotation of each image, up to this many degrees either way",
    "flip_p": "the chance of a horizontal flip of each image",
    "tta_flip": "score each validation image as the mean of it and its mirror (twice the inference)",
    "ema_halflife": "validate, keep and ensemble a moving average of the weights whose half-life is this many "
                    "epochs (0 turns it off)",
    "eval_batch_size": "images per step when evaluating",
    "torch_threads": "torch threads of each CPU fold worker (the folds already run in parallel)",
    "folds": "cross-validation folds: each trial trains one model per fold",
    "fold_seed": "the seed of the stratified fold split",
    "num_samples": "trials: the hyperparameter settings the search tries",
    "search_seed": "the seed of Optuna's TPE sampler",
    "scheduler": "how trials stop early: asha (ASHA on the fold-mean accuracy), fold-asha (only when a paired "
                 "test over the folds says so) or fifo (every trial runs all its epochs)",
    "grace_period": "epochs every trial gets before ASHA may stop it",
    "reduction_factor": "ASHA keeps the best 1/N of the trials at each rung",
    "racing_alpha": "fold-asha stops a trial below the cutoff only when the test's p-value is at most this",
    "space": "the hyperparameters the search samples, separated by commas; the others keep their values",
    "widths": "the widths a searched width chooses from, separated by commas",
    "batch_sizes": "the batch sizes a searched batch_size chooses from",
    "fc_widths": "the head sizes a searched fc_width chooses from",
    "max_failures": "retries of a failed trial, and of a slot's failed fold workers",
    "keep_checkpoints": "the trials whose fold checkpoints stay once the search ends: all, the best one, or "
                        "the N best",
    "num_gpus": "GPUs the search may use (0 trains on the CPU)",
    "gpus_per_worker": "the share of a GPU each fold worker gets",
    "cpus_per_worker": "CPUs per fold worker",
    "max_concurrent_trials": "the most trials that run at once",
    "address": "join a running Ray cluster: auto, or the head's HOST:PORT",
    "min_free_mb": "the search stops (resumable) when its disk has fewer MB free than this",
}

# What a None value means, per flag (the presets leave these to be worked out when the run starts).
NONE = {
    "data_dir": "auto", "limit_train": "all 60000", "num_gpus": "every visible GPU", "gpus_per_worker": "1/folds",
    "cpus_per_worker": "worked out from the machine", "max_concurrent_trials": "as many as the resources hold",
    "address": "a new local Ray instance",
}

# argparse's way to show choices, {a,b,c}, for the flags that have them
METAVARS = {"num_gpus": "N", "data_dir": "DIR", "address": "ADDRESS", "space": "NAMES", "name": "NAME",
            "widths": "N,N", "batch_sizes": "N,N", "fc_widths": "N,N",
            "storage_path": "PATH", "preset": "{" + ",".join(PRESETS) + "}",
            "scheduler": "{" + ",".join(SCHEDULERS) + "}", "keep_checkpoints": "{all,best,topk:N}"}
TYPE_METAVARS = {"int": "N", "float": "X", "bool": "{on,off}", "str": "TEXT"}

EXAMPLES = """\
examples:
  python experiments/tune.py                    # quick on a CPU, full on GPUs
  python experiments/tune.py --num-gpus 4       # the full preset on 4 GPUs
  python experiments/tune.py --name NAME --resume   # continue the run NAME
  # on a Ray cluster (ray up cluster.yaml), the full preset if it has GPUs:
  python experiments/tune.py --address auto --storage-path /mnt/shared/results"""


def show(name: str, value) -> str:
    """A value as --help prints it: on/off, "a, b" for a tuple, what None means for this flag."""
    if value is None:
        return NONE[name]
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return "all" if value == SEARCHABLE else ", ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def preset_values(section: str, name: str) -> str:
    """'quick 6, full 30', or 'quick and full: on' where the two presets agree (a list: 'quick: a, b; full: all')."""
    values = [getattr(getattr(PRESETS[p], section), name) for p in SHOWN_PRESETS]
    if values[0] == values[1]:
        return f"{' and '.join(SHOWN_PRESETS)}: {show(name, values[0])}"
    if isinstance(values[0], tuple):
        return "; ".join(f"{p}: {show(name, v)}" for p, v in zip(SHOWN_PRESETS, values))
    return ", ".join(f"{p} {show(name, v)}" for p, v in zip(SHOWN_PRESETS, values))


def flag_help(name: str, section: str | None = None) -> str:
    """The whole help of one flag: what it does, the names --space takes (the other flags with choices show
    them as their metavar, {a,b,c}), and for a config field its values in the presets."""
    text = HELP[name]
    if name == "space":
        text += f"; any of: {', '.join(SEARCHABLE)}"
    if section is not None:
        text += f" [{preset_values(section, name)}]"
    return text


def metavar(name: str, type_text: str) -> str:
    base = type_text.replace(" ", "").replace("|None", "")
    return METAVARS.get(name, TYPE_METAVARS.get(base, "NAMES"))


class HelpFormatter(argparse.HelpFormatter):
    """Wraps help and prose at spaces only (never inside a word, nor at a flag's hyphens); a paragraph whose
    lines are indented (the examples) is printed as written."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        out = []
        for paragraph in text.split("\n\n"):
            if "\n " in paragraph:
                out.append(textwrap.indent(paragraph, indent))
            else:
                out.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                         subsequent_indent=indent, break_long_words=False, break_on_hyphens=False))
        return "\n\n".join(out)
