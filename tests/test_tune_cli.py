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
    (["--name", "missing", "--resume"], "--resume --name missing: there is no such run in "),
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


# Refused in one exact line, with nothing on stdout (no "preset ..." line before the error), nothing written in
# the storage folder, and for --num-gpus, before Ray starts: Ray makes RAY_TMPDIR/ray/session_* when it does.
# {S}: the storage folder (holding the run 'old').
REFUSALS = [
    (["--num-gpus", "2"],
     'tune.py: error: --num-gpus 2: this machine has no GPU (0 visible with CUDA_VISIBLE_DEVICES=""); run without '
     '--num-gpus to search on the CPU'),
    (["--preset", "quick", "--num-gpus", "0.5", "--name", "g"],
     'tune.py: error: --num-gpus 0.5: this machine has no GPU (0 visible with CUDA_VISIBLE_DEVICES=""); run '
     'without --num-gpus to search on the CPU'),
    (["--storage-path", "/proc/x"],
     "tune.py: error: --storage-path /proc/x: cannot create it: No such file or directory"),
    (["--storage-path", "/proc", "--name", "new"],
     "tune.py: error: --storage-path /proc: cannot make the run directory there: No such file or directory"),
    (["--name", "ghost", "--resume"],
     "tune.py: error: --resume --name ghost: there is no such run in {S}; the runs there are: old"),
    (["--name", "ghost", "--resume", "--preset", "smoke", "--storage-path", "{S}/old"],
     "tune.py: error: --resume --name ghost: there is no such run in {S}/old; it holds no runs"),
    (["--name", "ghost", "--resume", "--storage-path", "{S}/nowhere"],
     "tune.py: error: --resume --name ghost: there is no such run in {S}/nowhere; that folder does not exist"),
]


@pytest.mark.parametrize("args, message", REFUSALS, ids=[" ".join(c[0]) for c in REFUSALS])
def test_refusals_word_for_word(storage, args, message):
    import tempfile
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    before = snapshot(storage)
    argv = [a.replace("{S}", str(storage)) for a in args]
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "tune.py"), "--storage-path", str(storage),
                          *argv], cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "RAY_TMPDIR": str(ray_tmp)})
    assert (out.returncode, out.stdout, out.stderr) == (2, "", message.replace("{S}", str(storage)) + "\n")
    assert snapshot(storage) == before
    assert sorted(p.name for p in storage.rglob("*")) == ["config.json", "old", "summary.json", "trials.parquet"]
    assert list(ray_tmp.iterdir()) == []  # Ray never started
    ray_tmp.rmdir()


@pytest.mark.ray
def test_a_run_refused_once_ray_runs_prints_only_its_error(storage):
    """The resources are checked on the started Ray instance (here: more CPUs per trial than there are). The
    refusal is still the only line: the "preset ..." line comes once every check has passed. Ray's session
    folder shows Ray did start: what test_refusals_word_for_word's check relies on."""
    import tempfile
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "tune.py"), "--preset", "smoke",
                          "--storage-path", str(storage), "--name", "cpu", "--cpus-per-worker", "1000"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "RAY_TMPDIR": str(ray_tmp)})
    assert out.returncode == 2, out.stderr
    errors = [l for l in out.stderr.strip().splitlines() if "error" in l]
    assert len(errors) == 1 and re.fullmatch(r"tune.py: error: --cpus-per-worker 1000: one trial needs 3000 CPUs, "
                                             r"the Ray cluster offers \d+", errors[0]), out.stderr
    assert "preset" not in out.stdout, out.stdout
    assert not (storage / "cpu").exists()
    assert [p.name.startswith("session_") for p in (ray_tmp / "ray").iterdir()].count(True) >= 1
    import shutil
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_resume_of_a_run_the_bucket_lacks_names_the_runs_it_has(s3_server, tmp_path):
    s3_server.make_bucket("runs25")
    fs = s3_server.filesystem()
    for run in ("a", "b"):
        with fs.open_output_stream(f"runs25/team/{run}/config.json") as f:
            f.write(b"{}")
    before = s3_server.objects("runs25")
    for storage_path, message in (
            ("s3://runs25/team", "there is no such run in s3://runs25/team; the runs there are: a, b"),
            ("s3://runs25/other", "there is no such run in s3://runs25/other; that folder does not exist")):
        out = subprocess.run([sys.executable, str(ROOT / "experiments" / "tune.py"), "--preset", "smoke",
                              "--storage-path", storage_path, "--name", "ghost", "--resume"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=180, env={**os.environ, **s3_server.env})
        expected = f"tune.py: error: --resume --name ghost: {message}\n"
        assert (out.returncode, out.stdout, out.stderr) == (2, "", expected)
    assert s3_server.objects("runs25") == before and list(tmp_path.iterdir()) == []


def test_a_local_run_asks_for_no_more_gpus_than_the_machine_shows(monkeypatch):
    import distributed.cluster
    from distributed.cli import check_visible_gpus
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(distributed.cluster, "visible_gpus", lambda: 1)
    with pytest.raises(ConfigError) as e:
        check_visible_gpus(override(PRESETS["full"], num_gpus=2))
    assert str(e.value) == "--num-gpus 2: this machine has only 1 GPU (1 visible); pass --num-gpus 1 or less"
    monkeypatch.setattr(distributed.cluster, "visible_gpus", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    with pytest.raises(ConfigError) as e:
        check_visible_gpus(override(PRESETS["full"], num_gpus=4))
    assert str(e.value) == ('--num-gpus 4: this machine has only 3 GPUs (3 visible with CUDA_VISIBLE_DEVICES="0,1,2"); '
                            'pass --num-gpus 3 or less')
    for ok in (3, 2.5, 0, None):
        check_visible_gpus(override(PRESETS["full"], num_gpus=ok))
    monkeypatch.setattr(distributed.cluster, "visible_gpus", lambda: 1 / 0)  # a cluster's GPUs: not this machine's
    check_visible_gpus(override(PRESETS["full"], num_gpus=16, address="auto", storage_path="/mnt/shared"))


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
    monkeypatch.setenv("COLUMNS", "2000")  # one line per flag
    with pytest.raises(SystemExit) as e:
        load_script("tune").main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert ("--preset {smoke,quick,full} the size of the search: smoke (seconds, for tests), quick (minutes on a "
            "CPU) or full (for GPUs); default: full when the search will train on GPUs (--num-gpus above 0, GPUs "
            "visible, or with --address a cluster that can scale to GPUs), else quick; with --resume, the stored "
            "run's") in " ".join(text.split())
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
    assert preset_from_args(parse("--num-gpus", "2"), no_join)[0] == "full"  # check_visible_gpus then refuses it


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
