"""Command-line plumbing shared by the experiments/ scripts: flags generated from the config tree,
and the one-line-on-stderr, exit-code-2 handling of bad input."""
from __future__ import annotations

import argparse
import os
import sys
import time
import typing

from distributed.cli_help import GROUPS, flag_help, metavar
from distributed.config import (EXIT_BAD_INPUT, PRESETS, TOP_LEVEL, ConfigError, ExperimentConfig, choose_preset,
                                leaf_fields, override)

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line on stderr with exit code 2 (no usage dump)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_BAD_INPUT)


def _parse_bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{text}'")


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got '{text}'") from None


def _converter(type_text: str):
    """Turn a dataclass field's annotation (a string, from __future__ annotations) into an argparse type."""
    base = type_text.replace(" ", "").replace("|None", "")
    if base.startswith("tuple[int"):
        return _int_tuple
    if base.startswith("tuple"):
        return lambda s: tuple(p for p in s.split(",") if p)
    conv = {"int": int, "float": float, "str": str, "bool": _parse_bool}[base]
    if "None" in type_text:
        return lambda s: None if s.lower() == "none" else conv(s)
    return conv


def add_config_flags(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """--preset, --name, --storage-path, --resume and one flag per leaf field of the config tree, in the groups
    of distributed.cli_help (common options first), each with its help and its values in the quick and full
    presets. Adds -h/--help to the common group when the parser has none. Returns the groups by key."""
    groups = {key: parser.add_argument_group(title) for key, title, _ in GROUPS}
    where = {name: key for key, _, names in GROUPS for name in names}
    if not parser.add_help:
        groups["common"].add_argument("-h", "--help", action="help", help="show this help and exit")
    leaves = leaf_fields()
    missing = set(leaves) - set(where)
    assert not missing, f"config fields without a --help group in distributed/cli_help.py: {sorted(missing)}"
    for key, _, names in GROUPS:
        for name in names:
            if name in leaves:
                _add_leaf_flag(groups[key], name, *leaves[name])
            else:
                _add_top_level_flag(groups[key], name)
    return groups


def _add_top_level_flag(group: argparse._ArgumentGroup, name: str) -> None:
    flag = f"--{name.replace('_', '-')}"
    if name == "resume":
        group.add_argument(flag, action="store_true", help=flag_help(name))
    else:
        group.add_argument(flag, dest=name, metavar=metavar(name, "str"), help=flag_help(name))


def _add_leaf_flag(group: argparse._ArgumentGroup, name: str, section: str, f) -> None:
    group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_converter(str(f.type)),
                       default=argparse.SUPPRESS, metavar=metavar(name, str(f.type)),
                       help=flag_help(name, section))


def preset_from_args(args: argparse.Namespace,
                     join_cluster: typing.Callable[[], None]) -> tuple[str, str | None]:
    """The run's preset and why (choose_preset), from the flags and, only where they decide it, the GPUs:
    those visible to this machine, or with --address what the cluster can scale to (join_cluster() first
    connects to it). A resume reads its stored preset and probes nothing; why is None for a resume whose
    stored config cannot be read (prepare_run refuses it, saying why)."""
    if args.resume and not args.name:
        raise ConfigError("--resume needs --name: the run to continue (a directory under --storage-path)")
    if args.preset is not None and args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset}: unknown preset; choose one of {', '.join(PRESETS)}")
    num_gpus, address = getattr(args, "num_gpus", None), getattr(args, "address", None)
    stored, gpus = None, 0.0
    if args.resume and args.preset is None:
        from distributed.run import stored_preset
        default = ExperimentConfig()
        stored = stored_preset(args.storage_path or default.storage_path, args.name)
        if stored is None:  # a placeholder: prepare_run refuses this resume
            return default.preset, None
    elif args.preset is None and num_gpus is None and address:
        from distributed.cluster import capacity
        join_cluster()
        gpus = capacity()["GPU"]
    elif args.preset is None and num_gpus is None:
        from distributed.cluster import visible_gpus
        gpus = visible_gpus()
    return choose_preset(args.preset, num_gpus, gpus, stored, cluster=bool(address))


def check_visible_gpus(cfg: ExperimentConfig) -> None:
    """A local run (no --address) that asks for more GPUs than this machine shows is refused before Ray starts,
    saying how many there are (distributed.cluster.visible_gpus: what Ray would detect). A cluster's GPUs are
    checked once it is joined (distributed.resources.plan_resources)."""
    from distributed.cluster import visible_gpus
    wanted = cfg.resources.num_gpus
    if cfg.resources.address or not wanted:
        return
    have = visible_gpus()
    if wanted <= have:
        return
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"{have} visible" + ("" if env is None else f" with CUDA_VISIBLE_DEVICES=\"{env}\"")
    if have == 0:
        raise ConfigError(f"--num-gpus {wanted:g}: this machine has no GPU ({seen}); run without --num-gpus "
                          f"to search on the CPU")
    raise ConfigError(f"--num-gpus {wanted:g}: this machine has only {have} GPU{'s' if have > 1 else ''} "
                      f"({seen}); pass --num-gpus {have} or less")


def config_from_args(args: argparse.Namespace, preset: str) -> ExperimentConfig:
    """PRESETS[preset] (see preset_from_args) with the flags' values, named --name or PRESET-YYYYmmdd-HHMMSS."""
    from distributed.run import default_run_name
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset}: unknown preset; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    values = {k: v for k, v in vars(args).items() if k in leaf_fields()}
    storage_path = args.storage_path or cfg.storage_path
    top = {"name": args.name or default_run_name(preset, storage_path), "storage_path": storage_path,
           "resume": args.resume}
    assert set(top) <= set(TOP_LEVEL)
    return override(cfg, **top, **values)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typing.NoReturn:
    sys.stderr.write(message.rstrip().replace("\n", " ") + "\n")
    sys.exit(code)


def elapsed_log() -> typing.Callable[[str], None]:
    """A progress printer for the scripts' long work: each line prefixed with the seconds since it was made."""
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)
    return log
