"""experiments/tune.py as typed. Bad input: exit code 2, one line on stderr naming the bad value, nothing
started, and an existing run directory left byte-for-byte as it was. Defaults: the preset from the GPUs
(or the stored run on --resume), a new PRESET-YYYYmmdd-HHMMSS run directory each time, both in --help."""
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from distributed.cli import ArgumentParser, add_config_flags, config_from_args, preset_from_args
from distributed.config import PRESETS, ConfigError, override, save
from distributed.run import default_run_name, start_run_dir, stored_preset
from tests.conftest import load_script
from tests.test_data import idx_images, write_set

ROOT = Path(__file__).resolve().parents[1]


def run_tune(*args, cwd=ROOT, timeout=180):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "tune.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def storage(tmp_path):
    """A storage dir holding an existing run 'old' whose files must never change."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text('{"name": "old"}\n')
    (old / "summary.json").write_text('{"n_trials": 3}\n')
    (old / "trials.parquet").write_bytes(b"PAR1 not really")
    return tmp_path


def bad_data_dir(tmp_path, kind):
    d = tmp_path / f"data-{kind}"
    d.mkdir()
    if kind == "empty":
        return d
    write_set(d)
    if kind == "truncated":
        p = d / "train-images-idx3-ubyte.gz"
        p.write_bytes(gzip.compress(idx_images(60_000)[:-100], compresslevel=1))
    elif kind == "magic":
        p = d / "t10k-labels-idx1-ubyte.gz"
        p.write_bytes(gzip.compress(b"\x00\x00\x09\x99" + bytes(10_004), compresslevel=1))
    elif kind == "mismatched":  # train images where the test images belong
        (d / "t10k-images-idx3-ubyte.gz").write_bytes((d / "train-images-idx3-ubyte.gz").read_bytes())
    return d


CASES = [
    (["--preset", "huge"], "--preset huge: unknown preset"),
    (["--folds", "1"], "--folds 1: cross-validation needs at least 2 folds"),
    (["--folds", "700"], "--limit-train 600: must be at least folds x classes = 7000"),
    (["--limit-train", "20"], "--limit-train 20: must be at least folds x classes = 30"),
    (["--epochs", "0"], "--epochs 0: must be a positive integer"),
    (["--num-samples", "-1"], "--num-samples -1: must be a positive integer"),
    (["--epochs", "three"], "argument --epochs: invalid"),
    (["--scheduler", "pbt"], "--scheduler pbt: choose 'asha', 'fold-asha' or 'fifo'"),
    (["--space", "lr,momentum"], "--space momentum: not searchable"),
    (["--bogus-flag", "1"], "unrecognized arguments: --bogus-flag"),
    (["--name", "old"], "already exists: pass --resume"),
    (["--name", "missing", "--resume"], "--resume: "),
    (["--resume"], "--resume needs --name"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_flags(storage, args, message):
    before = snapshot(storage / "old")
    out = run_tune("--preset", "smoke", "--storage-path", str(storage), *args)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert snapshot(storage / "old") == before
    assert sorted(p.name for p in storage.iterdir()) == ["old"]  # nothing created


@pytest.mark.parametrize("kind, message", [
    ("empty", "missing Fashion-MNIST files"),
    ("truncated", "truncated or padded IDX body"),
    ("magic", "bad IDX magic number 0x00000999"),
    ("mismatched", "test has 60000 images but 10000 labels"),
])
def test_bad_data(storage, tmp_path, kind, message):
    before = snapshot(storage / "old")
    d = bad_data_dir(tmp_path, kind)
    out = run_tune("--preset", "smoke", "--storage-path", str(storage), "--data-dir", str(d), "--name", "new")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(d) in lines[0], out.stderr
    assert snapshot(storage / "old") == before
    assert not (storage / "new").exists()


@pytest.mark.ray
def test_more_gpus_than_the_cluster_offers(storage):
    out = run_tune("--preset", "smoke", "--storage-path", str(storage), "--name", "gpu", "--num-gpus", "4")
    assert out.returncode == 2, out.stderr
    lines = [l for l in out.stderr.strip().splitlines() if "error" in l]
    assert len(lines) == 1 and "--num-gpus 4: the Ray cluster offers 0 GPU(s)" in lines[0], out.stderr
    assert not (storage / "gpu").exists()


# The plain command, no --preset: the preset comes from the GPUs (none seen: CUDA_VISIBLE_DEVICES=""), or on
# --resume from the stored run ('old' has no preset in its config.json: quick, as load() reads it, whose
# settings differ from that file's).
PLAIN_CASES = [
    (["--folds", "1"], "--folds 1: cross-validation needs at least 2 folds"),
    (["--name", "old"], "already exists: pass --resume"),
    (["--name", "old", "--resume"], "differ from the stored run"),
    (["--resume"], "--resume needs --name"),
]


@pytest.mark.parametrize("args, message", PLAIN_CASES, ids=[" ".join(c[0]) for c in PLAIN_CASES])
def test_bad_flags_without_preset(storage, args, message):
    before = snapshot(storage / "old")
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "tune.py"), "--storage-path", str(storage),
                          *args], cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert snapshot(storage / "old") == before
    assert sorted(p.name for p in storage.iterdir()) == ["old"]


def test_help_states_both_defaults(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "2000")  # one line per flag: argparse would wrap at the hyphens
    with pytest.raises(SystemExit) as e:
        load_script("tune").main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert ("--preset PRESET one of smoke, quick, full; default: full when the search will train on GPUs "
            "(--num-gpus > 0, or GPUs visible; with --address, GPUs the cluster can scale to), quick on the CPU; "
            "with --resume, the stored run's") in " ".join(text.split())
    assert ("--name NAME run name: results go to STORAGE_PATH/NAME (default: PRESET-YYYYmmdd-HHMMSS, a new run "
            "each time)") in " ".join(text.split())


def parse(*argv):
    parser = ArgumentParser(prog="tune.py")
    add_config_flags(parser)
    return parser.parse_args(list(argv))


def no_join():
    raise AssertionError("joined the cluster, though the flags decide the preset")


def test_plain_preset_follows_the_visible_gpus(monkeypatch):
    import distributed.cluster
    monkeypatch.setattr(distributed.cluster, "visible_gpus", lambda: 4)  # a 4-GPU box
    assert preset_from_args(parse(), no_join) == ("full", "4 GPUs visible; pass --preset quick for a short run")
    assert preset_from_args(parse("--num-gpus", "0"), no_join)[0] == "quick"
    assert preset_from_args(parse("--preset", "smoke"), no_join)[0] == "smoke"
    monkeypatch.setattr(distributed.cluster, "visible_gpus", lambda: 0)  # CPU only
    assert preset_from_args(parse(), no_join) == (
        "quick", "no GPU visible, training on the CPU; pass --preset full for the whole search")
    assert preset_from_args(parse("--num-gpus", "2"), no_join)[0] == "full"  # plan_resources then refuses it


def test_address_without_preset_joins_and_asks_what_the_cluster_can_scale_to(monkeypatch):
    import distributed.cluster
    joined = []
    monkeypatch.setattr(distributed.cluster, "capacity", lambda: {"CPU": 192.0, "GPU": 16.0} if joined else 1 / 0)
    monkeypatch.setattr(distributed.cluster, "visible_gpus", lambda: 1 / 0)  # this machine's GPUs do not count
    assert preset_from_args(parse("--address", "auto"), lambda: joined.append(1)) == (
        "full", "the Ray cluster can scale to 16 GPUs; pass --preset quick for a short run")
    assert joined == [1]
    assert preset_from_args(parse("--address", "auto", "--preset", "quick"), no_join)[0] == "quick"
    assert preset_from_args(parse("--address", "auto", "--num-gpus", "8"), no_join)[0] == "full"


def test_resume_takes_the_stored_preset_and_probes_nothing(tmp_path, monkeypatch):
    import distributed.cluster
    monkeypatch.setattr(distributed.cluster, "visible_gpus", lambda: 1 / 0)
    monkeypatch.setattr(distributed.cluster, "capacity", lambda: 1 / 0)
    (tmp_path / "r1").mkdir()
    save(override(PRESETS["smoke"], name="r1", storage_path=str(tmp_path)), tmp_path / "r1" / "config.json")
    args = parse("--name", "r1", "--resume", "--storage-path", str(tmp_path), "--num-gpus", "4")
    assert preset_from_args(args, no_join) == ("smoke", "the stored run's, which --resume continues")
    assert preset_from_args(parse("--name", "r1", "--resume", "--storage-path", str(tmp_path), "--address", "auto"),
                            no_join)[0] == "smoke"
    explicit = parse("--name", "r1", "--resume", "--storage-path", str(tmp_path), "--preset", "quick")
    assert preset_from_args(explicit, no_join)[0] == "quick"  # an explicit --preset wins (the resume then refuses it)
    assert stored_preset(str(tmp_path), "missing") is None
    # no stored config to read: a placeholder and no reason to print; prepare_run refuses the resume
    assert preset_from_args(parse("--name", "missing", "--resume", "--storage-path", str(tmp_path)),
                            no_join) == ("quick", None)
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "config.json").write_text('{"preset": "smo')  # truncated: prepare_run says so
    assert stored_preset(str(tmp_path), "r2") is None


def test_default_name_is_the_preset_and_the_time_and_never_an_existing_run(tmp_path):
    t = datetime(2026, 12, 1, 10, 15, 0)
    assert default_run_name("quick", str(tmp_path), now=t) == "quick-20261201-101500"
    (tmp_path / "quick-20261201-101500").mkdir()  # a run started earlier in the same second
    assert default_run_name("quick", str(tmp_path), now=t) == "quick-20261201-101500-2"
    (tmp_path / "quick-20261201-101500-2").mkdir()
    assert default_run_name("quick", str(tmp_path), now=t) == "quick-20261201-101500-3"
    assert default_run_name("full", str(tmp_path), now=t) == "full-20261201-101500"
    cfg = config_from_args(parse("--storage-path", str(tmp_path)), "quick")
    assert cfg.preset == "quick" and re.fullmatch(r"quick-\d{8}-\d{6}(-\d+)?", cfg.name)
    assert config_from_args(parse("--storage-path", str(tmp_path), "--name", "mine"), "full").name == "mine"


def test_start_run_dir_never_shares_a_directory(tmp_path):
    """Two runs that picked one name (the same second, in parallel): the second to make it is refused, and
    the first's files are untouched."""
    cfg = override(PRESETS["smoke"], name="r", storage_path=str(tmp_path))
    lock = start_run_dir(tmp_path / "r", cfg)
    (tmp_path / "r" / "summary.json").write_text("{}\n")
    before = snapshot(tmp_path / "r")
    with pytest.raises(ConfigError, match="was made by another run since this one started"):
        start_run_dir(tmp_path / "r", cfg)
    assert snapshot(tmp_path / "r") == before
    lock.release()  # the first run ended
    start_run_dir(tmp_path / "r", override(cfg, resume=True)).release()  # a resume reuses its directory
    assert json.loads((tmp_path / "r" / "config.json").read_text())["resume"] is True


# Smoke-sized through flags, so the plain command keeps its default preset (quick on this CPU) and name
SMOKE_SIZED = ["--limit-train", "600", "--folds", "3", "--width", "8", "--fc-width", "32", "--batch-size", "64",
               "--eval-batch-size", "512", "--tta-flip", "false", "--epochs", "1", "--num-samples", "1",
               "--scheduler", "fifo"]


@pytest.mark.slow  # 114 s on the fresh-clone run of 2026-12-03 (make test 32 min): `make test-all` runs it
@pytest.mark.ray
def test_two_plain_runs_in_a_row_make_two_run_directories(ray_local, tmp_path, monkeypatch, capsys):
    """`python experiments/tune.py` twice (in this process, on the suite's Ray instance: two Ray start-ups
    fewer): two new run directories, and the second run leaves the first's files as they were."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the plain command on a CPU-only machine
    outs, names = [], []
    for _ in range(2):
        before = {p.name: snapshot(p) for p in tmp_path.iterdir()}
        assert load_script("tune").main(["--storage-path", str(tmp_path), *SMOKE_SIZED]) == 0
        assert {p.name: snapshot(p) for p in tmp_path.iterdir() if p.name in before} == before  # untouched
        new, = {p.name for p in tmp_path.iterdir()} - set(before)
        outs.append(capsys.readouterr().out)
        names.append(new)
    assert names[0] != names[1]
    for name, stdout in zip(names, outs):
        assert re.fullmatch(r"quick-\d{8}-\d{6}(-\d+)?", name)
        lines = stdout.strip().splitlines()
        assert lines[0] == "preset quick: no GPU visible, training on the CPU; pass --preset full for the whole search"
        assert lines[1].startswith(f"run directory: {tmp_path / name}  (600 training images, 3 folds")
        assert lines[-1].startswith(f"results: {tmp_path / name}/")
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert (cfg["name"], cfg["preset"], cfg["cv"]["folds"], cfg["data"]["limit_train"]) == (name, "quick", 3, 600)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert (summary["name"], summary["preset"], summary["n_trials_completed"]) == (name, "quick", 1)
