"""Bad input to experiments/tune.py: exit code 2, one line on stderr naming the bad value, nothing started,
and an existing run directory left byte-for-byte as it was."""
import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

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
    (["--scheduler", "pbt"], "--scheduler pbt: choose 'asha' or 'fifo'"),
    (["--space", "lr,momentum"], "--space momentum: not searchable"),
    (["--bogus-flag", "1"], "unrecognized arguments: --bogus-flag"),
    (["--name", "old"], "already exists: pass --resume"),
    (["--name", "missing", "--resume"], "--resume: "),
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
